"""The command line helps: defaults and help on every option, an example per command, --version,
suggestions for mistyped commands and options, and the checks that need no model made before it loads."""

from __future__ import annotations

import argparse
import json

import pytest

import attnlens
from attnlens import cli


def _commands(parser, path=""):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _commands(child, f"{path} {name}".strip())


@pytest.fixture(scope="module")
def parser():
    parser = cli.build_parser()
    parser.parse_known_args(["generate", "x"])  # the options read from the method registries join now
    return parser


def test_every_option_has_help_and_every_command_an_example(parser):
    missing, no_example = [], []
    for path, command in _commands(parser):
        missing += [f"{path} {a.option_strings or a.dest}" for a in command._actions if not (a.help or "").strip()]
        example = command.epilog or ""
        if not example.startswith("example:") or f"attnlens {path}".strip() not in example:
            no_example.append(path or "(top)")
    assert missing == [] and no_example == []


def test_help_shows_defaults_and_the_example(parser, capsys):
    for argv, shown in ((["generate", "--help"], ["--max-new-tokens MAX_NEW_TOKENS", "(default: 64)",
                                                   "(default: all)", "example:"]),
                        (["experiment", "json", "--help"], ["(default: 0.7)", "(default: 16)", "example:"]),
                        (["demo", "--help"], ["(default: 60)", "the tagged prompt to show"])):
        with pytest.raises(SystemExit) as exit_:
            cli.main(argv)
        assert exit_.value.code == 0
        text = " ".join(capsys.readouterr().out.split())
        for piece in shown:
            assert " ".join(piece.split()) in text, (argv, piece)
        assert "(default: None)" not in text and "(default: False)" not in text


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"attnlens {attnlens.__version__}"


@pytest.mark.parametrize("argv, said", [
    (["generat", "x"], "did you mean generate?"),
    (["experiment", "jsn", "--out", "x"], "did you mean json?"),
    (["generate", "x", "--max-tokns", "3"], "unrecognized arguments: --max-tokns (did you mean --max-new-tokens?)"),
    (["heads", "rank", "--layer", "1", "--head", "1", "--texts", "t", "--nmu", "3"], "(did you mean --num?)"),
])
def test_mistyped_commands_and_options_get_a_suggestion(argv, said, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_load", lambda args: pytest.fail("the model must not load"))
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and said in err
    if argv[0] in ("generate", "heads"):  # the usage shown is the command's own, not the top level's
        assert f"usage: attnlens {argv[0]}" in err


@pytest.mark.parametrize("argv, said", [
    (["generate", "<!-> x"], "the prompt: unbalanced tag '<!->'"),
    (["generate", "<!-> x <-!>", "--system", "a <-!>"], "--system: closing tag '<-!>' without an opening tag"),
    (["generate", "<!-> x <-!>", "--layers", "40"], "layer 40 out of range: the embedded model has 30 layers"),
    (["influence", "no tag"], "the prompt has no influence tag"),
    (["influence", "<?-> x <-?>", "--layers", "31"], "layer 31 out of range"),
    (["heads", "rank", "--layer", "40", "--head", "1", "--texts", "t"], "--layer 40 is out of range"),
    (["heads", "rank", "--layer", "-31", "--head", "1", "--texts", "t"], "--layer -31 is out of range"),
    (["heads", "rank", "--layer", "2", "--head", "9", "--texts", "t"], "--head 9 is out of range: the embedded "
                                                                       "model has 9 heads per layer (0..8)"),
    (["heads", "describe-all", "--heads", "1,12", "--texts", "t", "--openai-model", "m"], "head 12 is out of range"),
    (["heads", "rank", "--layer", "2", "--head", "1", "--texts", "/no/such/file"], "--texts '/no/such/file'"),
    (["experiment", "json", "--out", "o", "--layers", "99"], "layer 99 out of range"),
    (["experiment", "json", "--out", "o", "--pasta-heads", "/no/heads.json"], "--pasta-heads '/no/heads.json': no "
                                                                             "such file"),
])
def test_checks_that_need_no_model_come_first(argv, said, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_load", lambda args: pytest.fail("the model must not load"))
    import attnlens.runtime.models as models

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("the model must not load"))
    assert cli.main(argv) == 2
    assert said in capsys.readouterr().err


def test_shape_is_read_from_a_models_config(tmp_path):
    from attnlens.cli._common import known_shape

    assert known_shape(None) == (30, 9)  # the embedded model's cached config.json
    (tmp_path / "config.json").write_text(json.dumps({"num_hidden_layers": 4, "num_attention_heads": 2}))
    assert known_shape(str(tmp_path)) == (4, 2)
    assert known_shape(str(tmp_path / "missing")) is None  # not at hand: the library checks after loading
