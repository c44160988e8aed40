"""Every user error on the command line is one line on stderr and exit status 2; --help imports no torch."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from attnlens import cli
from attnlens.steering import load_head_config
from attnlens.core.errors import HeadConfigError

ROOT = Path(__file__).resolve().parent.parent
TEXTS = ["The cat sat on the mat because it was tired.", "Paris is the capital of France."]


@pytest.fixture
def texts_file(tmp_path):
    path = tmp_path / "texts.txt"
    path.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    return path


def _one_line_error(capsys, *words):
    err = capsys.readouterr().err
    assert err.startswith("attnlens: error: ") and err.count("\n") == 1, err
    for word in words:
        assert word in err, err
    return err


def test_help_imports_nothing_heavy():
    code = ("import sys\nfrom attnlens.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'transformers', 'transformer_lens', 'circuitsvis', 'plotly') if m in sys.modules]\n"
            "print('HEAVY', heavy, file=sys.stderr)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert "HEAVY []" in result.stderr, result.stderr
    assert "usage: attnlens" in result.stdout


def test_non_utf8_texts(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_load", lambda args: pytest.fail("the model must not load"))
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("café au lait\n".encode("latin-1"))
    assert cli.main(["heads", "rank", "--layer", "0", "--head", "0", "--texts", str(bad)]) == 2
    _one_line_error(capsys, str(bad), "not UTF-8")


@pytest.mark.parametrize("argv_tail, flag", [
    (["heads", "rank", "--layer", "0", "--head", "0", "--html", "{missing}/x.html"], "--html"),
    (["heads", "rank", "--layer", "0", "--head", "0", "--html", "{dir}"], "--html"),
    (["pasta", "profile", "--data", "{texts}", "--out", "{missing}/heads.json"], "--out"),
    (["pasta", "profile", "--data", "{texts}", "--out", "{tmp}/h.json", "--scores", "{missing}/s.json"], "--scores"),
    (["influence", "<?->x<-?> y", "--plot", "{missing}/p.html"], "--plot"),
])
def test_unwritable_outputs_fail_before_any_model(argv_tail, flag, tmp_path, texts_file, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_load", lambda args: pytest.fail("the model must not load"))
    fill = {"missing": str(tmp_path / "no" / "such"), "dir": str(tmp_path), "texts": str(texts_file),
            "tmp": str(tmp_path)}
    argv = [a.format(**fill) if "{" in a and "<" not in a else a for a in argv_tail]
    if argv[0] == "heads":
        argv += ["--texts", str(texts_file)]
    assert cli.main(argv) == 2
    _one_line_error(capsys, flag)


@pytest.mark.parametrize("value", ["-1", "0", "nan", "inf", "soon"])
@pytest.mark.parametrize("option", ["--timeout", "--deadline"])
def test_bad_timeouts_are_usage_errors(option, value, texts_file, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["heads", "describe", "--layer", "0", "--head", "0", "--texts", str(texts_file),
                  "--openai-model", "m", option, value])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert option in err and value in err and "Traceback" not in err


class _ClosedPipe(io.StringIO):
    def write(self, text):
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self):
        raise BrokenPipeError(32, "Broken pipe")


def test_broken_pipe_is_one_line(tiny, texts_file, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_load", lambda args: tiny)
    capsys.readouterr()
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    code = cli.main(["heads", "rank", "--layer", "0", "--head", "0", "--texts", str(texts_file),
                     "--min-length", "2", "--max-length", "8", "--json"])
    assert code == 2
    _one_line_error(capsys, "broken pipe")


def test_non_utf8_head_config(tmp_path, tiny, monkeypatch, capsys):
    bad = tmp_path / "heads.json"
    bad.write_bytes(b'{"0": [1]} \xff')
    with pytest.raises(HeadConfigError, match="heads.json") as info:
        load_head_config(bad)
    assert "utf-8" in str(info.value).lower()
    with pytest.raises(HeadConfigError, match="must be a str or path, got int 3"):
        load_head_config(3)
    monkeypatch.setattr(cli, "_load", lambda args: tiny)
    assert cli.main(["generate", "hello world", "--pasta-heads", str(bad), "--emphasize", "hello",
                     "--max-new-tokens", "2"]) == 2
    _one_line_error(capsys, "heads.json")


def test_static_choices_match_the_library():
    from attnlens.api.scorers import SCORERS
    from attnlens.cli.pasta import SCORER_NAMES
    from attnlens.experiments import STUDIES, STUDY_NAMES

    assert sorted(SCORER_NAMES) == sorted(SCORERS)
    assert list(STUDY_NAMES) == list(STUDIES)
