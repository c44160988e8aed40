"""Options of the commands that load a model: ``--dtype`` (the weights' dtype) and ``--study-set`` (a study's own settings)."""

from __future__ import annotations

import pytest
import torch

from attnlens import cli
from attnlens.runtime import models


@pytest.mark.parametrize("argv", [
    ["generate", "<!-> a <-!> b"],
    ["batch", "--input", "in.jsonl", "--out", "out.jsonl"],
    ["tune", "counterfact", "--method", "guide", "--out", "runs"],
    ["compare", "counterfact", "--out", "runs"],
    ["serve"],
])
def test_dtype_reaches_the_model_loader(argv, monkeypatch):
    seen = []
    monkeypatch.setattr(models, "load_model", lambda name, device=None, dtype=None: seen.append(dtype) or 1 / 0)
    parser = cli.build_parser()
    for dtype, expected in ((None, torch.float32), ("bfloat16", torch.bfloat16), ("float16", torch.float16)):
        args = parser.parse_args(argv + ([] if dtype is None else ["--dtype", dtype]))
        with pytest.raises(ZeroDivisionError):
            cli._load(args)
        assert seen[-1] is expected, (argv, dtype)


def test_an_unknown_dtype_is_refused_naming_the_choices(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["compare", "counterfact", "--out", "runs", "--dtype", "float8"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--dtype" in err and "bfloat16" in err


def test_study_settings_reach_the_study_config(monkeypatch, tiny, tmp_path):
    """``--study-set``: needle compared at the context lengths and depths asked for (its items are cells)."""
    from attnlens.experiments import compare

    seen = {}

    def fake_compare(study, config, methods, **kwargs):
        seen["config"] = config
        raise SystemExit(0)

    monkeypatch.setattr(cli, "_load", lambda args: tiny)
    monkeypatch.setattr(compare, "compare_methods", fake_compare)
    with pytest.raises(SystemExit):
        cli.main(["compare", "needle", "--out", str(tmp_path), "--methods", "guide",
                  "--study-set", "context_lengths=256,512", "--study-set", "depths=0,100"])
    assert tuple(seen["config"].context_lengths) == (256, 512) and tuple(seen["config"].depths) == (0.0, 100.0)


@pytest.mark.parametrize("item, said", [
    ("contxt=256", "needle has no setting 'contxt'"),
    ("limit=3", "has no setting 'limit'"),  # a common setting has its own option
    ("depths=a,b", "expected a number"),
    ("depths", "write FIELD=VALUE"),
])
def test_a_bad_study_setting_is_refused_naming_it(item, said, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_load", lambda args: pytest.fail("the model must not load"))
    assert cli.main(["compare", "needle", "--out", "runs", "--study-set", item]) == 2
    assert said in capsys.readouterr().err
