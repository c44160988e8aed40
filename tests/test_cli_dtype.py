"""``--dtype``: the commands that load a model for generation load it in the dtype asked for."""

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
