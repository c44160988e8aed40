"""Strength searches refuse bad input and never resume scores made for something else."""

from __future__ import annotations

import json

import pytest

from attnlens.core.errors import AttnlensError
from attnlens.experiments import SummarizeConfig
from attnlens.experiments.compare import compare_methods
from attnlens.experiments.tune import tune_strength
from attnlens.experiments.tuning import tune_study


def _fixed_outputs(model, prompts, steer, *, max_new_tokens, chat, cache=None):
    return ["paris" for _ in prompts]


def _right(example, output):
    return float(output.strip() == example["answer"])


def test_a_search_resumed_with_edited_answers_scores_them_again(tiny, tmp_path, monkeypatch):
    from attnlens.experiments import tune

    monkeypatch.setattr(tune, "_outputs", _fixed_outputs)
    out = tmp_path / "tune.json"
    prompts = [f"<!-> item {i} <-!> go" for i in range(4)]
    first = tune_strength(tiny, [{"prompt": p, "answer": "rome"} for p in prompts], "guide", _right, grid=[1.0],
                          max_new_tokens=2, out=out)
    assert first.heldout["mean"] == 0.0 and first.unsteered_score == 0.0
    # the same prompts, the answers edited: the saved scores were made for the old answers
    edited = tune_strength(tiny, [{"prompt": p, "answer": "paris"} for p in prompts], "guide", _right, grid=[1.0],
                           max_new_tokens=2, out=out)
    assert edited.heldout["mean"] == 1.0 and edited.unsteered_score == 1.0 and edited.trials[0].score == 1.0


def test_a_search_saved_for_one_model_is_not_resumed_for_other_weights(tiny, tokenizer, tmp_path, monkeypatch,
                                                                     caplog):
    """Same tokenizer, same config, other weights (another seed; a bfloat16 copy is the same case): the saved
    scores were made by the other model and are scored again."""
    from conftest import make_tiny_bridge
    from attnlens.experiments import tune
    from attnlens.experiments.schedule import model_digest

    other = make_tiny_bridge(tokenizer, seed=1)

    def outputs(model, prompts, steer, *, max_new_tokens, chat, cache=None):
        return ["paris" if model is tiny else "rome" for _ in prompts]

    monkeypatch.setattr(tune, "_outputs", outputs)
    out = tmp_path / "tune.json"
    examples = [{"prompt": f"<!-> item {i} <-!> go", "answer": "rome"} for i in range(4)]
    first = tune_strength(tiny, examples, "guide", _right, grid=[1.0], max_new_tokens=2, out=out)
    assert first.heldout["mean"] == 0.0
    with caplog.at_level("WARNING"):
        second = tune_strength(other, examples, "guide", _right, grid=[1.0], max_new_tokens=2, out=out)
    assert second.heldout["mean"] == 1.0 and second.unsteered_score == 1.0
    assert "model" in caplog.text  # says why the saved search is not used
    assert json.loads(out.read_text())["identity"]["model"] == model_digest(other) != model_digest(tiny)
    again = tune_strength(other, examples, "guide", _right, grid=[1.0], max_new_tokens=2, out=out)
    assert again.heldout == second.heldout


def test_a_search_resumed_with_another_metric_scores_that_metric(tiny, tmp_path, caplog):
    config = SummarizeConfig(out=str(tmp_path / "runs"), limit=2, max_new_tokens=2, plots=False, influence=False)
    out = tmp_path / "tune-guide.json"
    tune_study("summarize", config, "guide", model=tiny, grid=[1.0], metric="french", max_repetition=1.0, out=out)
    with caplog.at_level("WARNING"):
        resumed = tune_study("summarize", config, "guide", model=tiny, grid=[1.0], metric="similarity",
                             max_repetition=1.0, out=out)
    assert "metric" in caplog.text  # says why the saved search is not used
    fresh = tune_study("summarize", config, "guide", model=tiny, grid=[1.0], metric="similarity",
                       max_repetition=1.0, out=tmp_path / "fresh.json")
    assert resumed.trials == fresh.trials and resumed.heldout == fresh.heldout
    assert resumed.unsteered_score == fresh.unsteered_score
    saved = json.loads(out.read_text())
    assert saved["identity"]["metric"] == "similarity"


@pytest.mark.parametrize("setting, named", [("nosuch.x=1", "nosuch"), ("guide.nosuch=1", "nosuch")])
def test_tune_refuses_a_setting_of_no_method_or_no_parameter(tiny, tmp_path, capsys, monkeypatch, setting, named):
    from attnlens import cli
    from attnlens.cli import tune as tune_cli

    loaded = []
    monkeypatch.setattr(tune_cli, "load_model_for", lambda args: loaded.append(1) or tiny)
    argv = ["tune", "summarize", "--method", "guide", "--grid", "1", "--limit", "2", "--max-new-tokens", "1",
            "--max-repetition", "1", "--set", setting, "--out", str(tmp_path / "t")]
    assert cli.main(argv) != 0
    err = capsys.readouterr().err
    assert named in err and ("guide" in err if setting.startswith("guide") else True)
    assert loaded == []  # refused before the model loads
    with pytest.raises(AttnlensError, match=named):
        tune_study("summarize", SummarizeConfig(out=str(tmp_path), limit=2, max_new_tokens=1,
                                                steering={setting.split(".")[0]: {"x" if "x=" in setting
                                                                                  else "nosuch": 1}}),
                   "guide", model=tiny, grid=[1.0])


@pytest.mark.parametrize("value", ["-1", "1.5"])
def test_max_repetition_outside_zero_one_is_refused(tiny, tmp_path, capsys, monkeypatch, value):
    from attnlens import cli
    from attnlens.cli import tune as tune_cli

    monkeypatch.setattr(tune_cli, "load_model_for", lambda args: tiny)
    for command in (["tune", "summarize", "--method", "guide"], ["compare", "summarize", "--methods", "guide"]):
        argv = [*command, "--grid" if command[0] == "tune" else "--limit", "1" if command[0] == "tune" else "2",
                "--max-repetition", value, "--out", str(tmp_path / "t")]
        with pytest.raises(SystemExit) as stop:
            cli.main(argv)
        assert stop.value.code != 0
        assert "--max-repetition" in capsys.readouterr().err
    examples = [{"prompt": f"<!-> item {i} <-!> go"} for i in range(4)]
    with pytest.raises(AttnlensError, match="max_repetition"):
        tune_strength(tiny, examples, "guide", lambda e, o: 0.0, grid=[1.0], max_repetition=float(value))
    config = SummarizeConfig(out=str(tmp_path), limit=2, max_new_tokens=1, plots=False, influence=False)
    with pytest.raises(AttnlensError, match="max_repetition"):
        compare_methods("summarize", config, ["guide"], model=tiny, max_repetition=float(value))
