"""Methods side by side on a study: tuned and default strengths on one held-out split, paired with ``none``."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from attnlens import steering
from attnlens.api import chain
from attnlens.core.errors import ExperimentError
from attnlens.experiments import CounterFactConfig, ExperimentConfig, SummarizeConfig, get_study
from attnlens.experiments.compare import compare_methods, load_comparison
from attnlens.experiments.profiles import profile
from attnlens.experiments.study import Item, Score, Segments, Study
from attnlens.experiments.tuning import text_metric


def _config(tmp_path, **more):
    return SummarizeConfig(out=str(tmp_path / "runs"), limit=4, max_new_tokens=2, plots=False, influence=False,
                           steering={"pasta": {"head_config": {0: [0, 1]}}}, **more)


@pytest.fixture
def generations(monkeypatch):
    """Every generation: a call to chain.generate, or a group of the stream run as a continuous batch
    (rows, steered)."""
    from attnlens.experiments import schedule

    calls = []
    real = chain.generate
    real_continuous = schedule._continuous

    def counting(model, prompts, plans=(), **kwargs):
        calls.append((len(prompts), bool(plans)))
        return real(model, prompts, plans, **kwargs)

    def continuous(model, members, out, **kwargs):
        done = real_continuous(model, members, out, **kwargs)
        if done:
            calls.append((len(members), any(plans for _, _, plans in members)))
        return done

    monkeypatch.setattr(chain, "generate", counting)
    monkeypatch.setattr(schedule, "_continuous", continuous)
    return calls


def test_methods_are_compared_tuned_and_at_their_defaults_on_one_heldout_split(tiny, tmp_path, generations):
    grids = {"instaboost": [2.0, 8.0], "spa": [1.25, 2.0], "pasta": [0.1, 0.01]}
    result = compare_methods("summarize", _config(tmp_path), ["instaboost", "spa", "pasta"], model=tiny,
                             grids=grids, max_repetition=1.0, out=tmp_path / "cmp")
    assert result.study == "summarize" and result.metric == "french"
    assert result.n_dev == 2 and result.n_heldout == 2
    assert [(r.method, r.setting) for r in result.rows] == [
        ("instaboost", "tuned"), ("instaboost", "default"), ("spa", "tuned"), ("spa", "default"),
        ("pasta", "tuned"), ("pasta", "default")]
    for r in result.rows:
        method = profile(r.method)
        assert r.parameter == method.strength and r.n == 2
        if r.setting == "default":
            assert r.strength == method.reference_strength()
        else:
            assert r.strength in grids[r.method]
        assert r.at_strongest == (r.setting == "tuned" and r.strength == grids[r.method][-1])
        line = result.markdown().splitlines()[3 + result.rows.index(r)]
        assert ("strongest tried" in line) == r.at_strongest and ("tied on development" in line) == (r.tied > 1)
        assert ("below none on development" in line) == r.below_unsteered
        # the difference is paired on the same items: its mean is the difference of the means
        assert r.difference == pytest.approx(r.mean - result.unsteered["mean"])
        assert r.low <= r.mean <= r.high and r.difference_low <= r.difference <= r.difference_high
    assert set(result.sources) == {"instaboost", "spa", "pasta"}
    # the untagged prompts of the three methods are the same tokens: the unsteered model ran once on the
    # development rows (the guard's reference) and once on the held-out rows, for all three
    assert [rows for rows, steered in generations if not steered] == [2, 2]

    # written, and read back
    saved = load_comparison(tmp_path / "cmp")
    assert saved.rows == result.rows and saved.unsteered == result.unsteered
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert md.count("\n") == 2 + 1 + 6 and "| none |" in md and "| spa (default) | omega=1.4 |" in md
    with (tmp_path / "cmp" / "compare.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["method"] for r in rows] == ["none", "instaboost", "instaboost", "spa", "spa", "pasta", "pasta"]
    assert "french" in result.view().to_html() and "n = 2 held-out items" in result.view().to_html()

    # every search was saved: a second call generates nothing
    generations.clear()
    again = compare_methods("summarize", _config(tmp_path), ["instaboost", "spa", "pasta"], model=tiny,
                            grids=grids, max_repetition=1.0, out=tmp_path / "cmp")
    assert generations == [] and again.rows == result.rows


def test_a_comparison_refuses_what_it_cannot_run_before_running(tiny, tmp_path, generations):
    class NoStrength(steering.SteeringMethod):
        name = "no_strength"
        spans = "guide"

        def steering(self, model, prompts, settings):
            return None

    steering.register(NoStrength())
    config = SummarizeConfig(out=str(tmp_path), limit=4, max_new_tokens=2)
    cases = [(["pasta"], {}, "pasta_heads"), (["spa", "spa"], {}, "named twice"),
             (["no_strength"], {}, "no strength"), (["spa"], {"guide": [1.0]}, "not compared"), ("spa", {}, "a list")]
    for methods, grids, message in cases:
        with pytest.raises(ExperimentError, match=message):
            compare_methods("summarize", config, methods, model=tiny, grids=grids)
    with pytest.raises(ExperimentError, match="no metric 'nope'"):
        compare_methods("summarize", config, ["spa"], model=tiny, metric="nope")
    from attnlens.experiments.store import run_lock

    with run_lock(tmp_path):  # another comparison writing to the same folder
        with pytest.raises(ExperimentError, match="another run is writing"):
            compare_methods("summarize", config, ["spa"], model=tiny, out=tmp_path)
    assert generations == []


def test_a_search_scores_generated_text_only():
    study, config = get_study("counterfact"), CounterFactConfig(out="unused")
    assert text_metric(study, config, None) == "generation"
    with pytest.raises(ExperimentError, match="probabilities"):
        text_metric(study, config, "efficacy")
    assert text_metric(get_study("json"), config, "exact_format") == "exact_format"


def test_the_cli_compares_methods(tiny, tmp_path, capsys, monkeypatch):
    from attnlens import cli
    from attnlens.cli import tune as tune_cli

    monkeypatch.setattr(tune_cli, "load_model_for", lambda args: tiny)
    out = tmp_path / "c"
    argv = ["compare", "summarize", "--methods", "instaboost", "spa", "--grid", "instaboost=2,8", "--grid", "spa=1.5",
            "--limit", "4", "--max-new-tokens", "2", "--max-repetition", "1", "--out", str(out)]
    assert cli.main(argv + ["--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [(r["method"], r["setting"]) for r in result["rows"]] == [
        ("instaboost", "tuned"), ("instaboost", "default"), ("spa", "tuned"), ("spa", "default")]
    assert result["rows"][2]["strength"] == 1.5 and result["rows"][3]["strength"] == 1.4
    assert cli.main(argv) == 0  # read back from the saved searches, printed as the table
    printed = capsys.readouterr().out
    assert "| instaboost (tuned) | alpha=" in printed and "default of spa:" in printed
    assert (out / "compare.md").is_file()
    assert cli.main(argv[:-2] + ["--grid", "spa", "--out", str(tmp_path / "d")]) == 2
    assert "METHOD=V1,V2" in capsys.readouterr().err
    assert cli.main(["compare", "summarize", "--methods", "pasta", "--pasta-heads", str(tmp_path / "none.json"),
                     "--out", str(tmp_path / "e")]) == 2
    assert "is not a file" in capsys.readouterr().err
    assert cli.main(["compare", "counterfact", "--metric", "efficacy", "--methods", "spa", "--limit", "2",
                     "--out", str(tmp_path / "f")]) == 2
    assert "probabilities" in capsys.readouterr().err


# ----------------------------------------------------------------------------- a controlled method


class _Dial(steering.SteeringMethod):
    """A controlled method: its strength ``level`` (a digit) is what the model writes, every token.

    A logits edit puts all the probability on the digit's token, so the output is known without the model's
    weights mattering: level 5 writes "55", level 9 "99"."""

    name = "dial"
    spans = "guide"
    edits = "logits"
    focus_tag = ("<!!->", "<-!!>")
    default_condition = False
    params = (steering.Param("level", int, 1, "the digit written"),)
    strength = "level"
    strength_grid = (2, 5, 9)
    paper_strength = 2

    def steering(self, model, prompts, settings):
        from attnlens.steering.edits import RunEdit

        token = model.tokenizer.encode(str(settings["level"]), add_special_tokens=False)
        assert len(token) == 1

        def force(logits, context):
            out = torch.full_like(logits, -1e4)
            out[..., token[0]] = 1e4
            return out

        return RunEdit.for_prompts(model, "logits", force, [self.prompt_spans(p) for p in prompts], name=self.name)


#: each item's weight: the score of an output is weight x closeness of its first digit to 5 (no digit: 0.1)
WEIGHTS = (1.0, 0.5, 0.8, 0.3, 0.9, 0.6)


def _closeness(output: str) -> float:
    first = output.strip()[:1]
    return 1.0 - abs(int(first) - 5) / 10 if first.isdigit() else 0.1


class _DialStudy(Study):
    """Items whose score depends on the digit the output starts with (best: 5), weighted per item."""

    name = "dial-study"
    primary = "closeness"
    metrics = ("closeness",)

    def load_data(self, config):
        return [{"id": f"d{i}", "weight": w} for i, w in enumerate(WEIGHTS)]

    def items(self, data, config, tokenizer):
        return [Item(r["id"], r) for r in data][: config.limit]

    def segments(self, item, config):
        return Segments(before="Write a digit. ", focus="The digit matters.", after=" Go.")

    def score(self, items, outputs, config):
        return [Score({"closeness": item.data["weight"] * _closeness(text)}) for item, text in zip(items, outputs)]


@pytest.fixture
def dial():
    steering.register(_Dial())
    yield
    steering.unregister("dial")


def test_a_comparison_on_a_method_whose_score_depends_on_its_strength(tiny, tmp_path, dial):
    import random

    study = _DialStudy()
    config = ExperimentConfig(out=str(tmp_path / "runs"), limit=len(WEIGHTS), max_new_tokens=2, plots=False,
                              influence=False, seed=0)
    result = compare_methods(study, config, ["dial"], model=tiny, max_repetition=1.0, out=tmp_path / "cmp")
    tuned, default = result.rows
    # the split the search makes (a seeded shuffle, half held out), by hand
    order = list(range(len(WEIGHTS)))
    random.Random(0).shuffle(order)
    dev, test = sorted(order[:3]), sorted(order[3:])
    assert result.n_dev == 3 and result.n_heldout == 3
    held = [WEIGHTS[i] for i in test]

    # on the development items the levels score 0.7, 1.0 and 0.6 times the weights: no ties, 5 is the best
    saved = json.loads((tmp_path / "cmp" / "tune-dial.json").read_text())
    trials = {t["strength"]: t["score"] for t in saved["result"]["trials"]}
    dev_mean = sum(WEIGHTS[i] for i in dev) / 3
    assert trials == pytest.approx({2: 0.7 * dev_mean, 5: 1.0 * dev_mean, 9: 0.6 * dev_mean})
    assert tuned.setting == "tuned" and tuned.strength == 5 and tuned.tied == 1 and not tuned.at_strongest
    assert default.setting == "default" and default.strength == 2

    # held out: the unsteered outputs start with no digit (0.1 each), the tuned one writes 5s, the default 2s
    assert result.unsteered["mean"] == pytest.approx(sum(0.1 * w for w in held) / 3)
    assert tuned.mean == pytest.approx(sum(held) / 3) and tuned.mean > 0
    assert default.mean == pytest.approx(sum(0.7 * w for w in held) / 3)
    # paired differences, item by item, by hand
    assert tuned.difference == pytest.approx(sum((1.0 - 0.1) * w for w in held) / 3)
    assert default.difference == pytest.approx(sum((0.7 - 0.1) * w for w in held) / 3)
    assert tuned.mean > default.mean > result.unsteered["mean"]
    # the held-out scores saved per item are the weights times the closeness of what was written
    assert saved["heldout_scores"]["5"] == pytest.approx(held)
    assert saved["heldout_scores"]["2"] == pytest.approx([0.7 * w for w in held])
    assert saved["heldout_scores"]["none"] == pytest.approx([0.1 * w for w in held])
    # the interval of a difference that is positive on every item stays above 0
    assert 0 < tuned.difference_low <= tuned.difference <= tuned.difference_high
