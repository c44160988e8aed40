"""The strength search: a controlled method whose strength sets both the score and whether the text loops."""

from __future__ import annotations

import json

import pytest
import attnlens as al
from attnlens import steering
from attnlens.api import chain
from attnlens.core.errors import AttnlensError
from attnlens.experiments.tune import repetition_rate, tune_strength

WORDS = {1: " apple banana cherry dates elder figs", 2: " river stone cloud field grass house",
         3: " north south east west upper lower", 4: " stop stop stop stop stop stop"}


class Push(steering.SteeringMethod):
    """Forces the text of WORDS[level], one word per step: levels 1-3 read well, level 4 loops."""

    name = "push_words"
    params = (steering.Param("level", int, 1, "which words"),)
    spans = "guide"
    edits = "logits"
    strength = "level"
    strength_grid = (1, 2, 3, 4)
    calls: list[int] = []

    def steering(self, model, prompts, settings):
        ids = [model.tokenizer.encode(w, add_special_tokens=False)[0]
               for w in (" " + x for x in WORDS[settings["level"]].split())]
        step = [0]
        Push.calls.append(settings["level"])

        def force(logits, ctx):
            out = logits.clone()
            out[:, -1, ids[step[0] % len(ids)]] += 1e4
            step[0] += 1
            return out

        return steering.RunEdit.for_prompts(model, "logits", force, [self.prompt_spans(p) for p in prompts],
                                            name=self.name)


class NoStrength(steering.SteeringMethod):
    """A method with nothing to search."""

    name = "no_strength"
    spans = "guide"

    def steering(self, model, prompts, settings):
        return None


@pytest.fixture
def push():
    method = Push()
    steering.register(method)
    Push.calls.clear()
    yield method
    steering.unregister(method.name)


def _score(example, output):
    first = output.split()[0] if output.split() else ""
    return float(next((k for k, w in WORDS.items() if w.split()[0] == first), 0))


def test_repetition_rate():
    assert repetition_rate("a b c d e") == 0.0
    assert repetition_rate("stop stop stop stop stop stop") == pytest.approx(0.75)


def test_the_search_picks_the_best_strength_that_does_not_loop_and_resumes(tiny, push, tmp_path, monkeypatch):
    from attnlens.experiments import tune

    def outputs(model, prompts, steer, *, max_new_tokens, chat, cache=None):  # the forced words, without a model
        if not steer:
            return ["plain text here" for _ in prompts]
        (name, settings), = steer.items()
        steering.get(name).steering(model, [], settings)  # counts the call
        return [WORDS[settings["level"]].strip() for _ in prompts]

    # the controlled method really generates its words on the tiny model
    prompt = al.prepare(tiny.tokenizer, "<!-> item <-!> go")
    plans = chain.plans_for(tiny, [prompt], steer={"push_words": {"level": 2}})
    tokens = chain.generate(tiny, [prompt], plans, max_new_tokens=6, progress=False)[0]
    assert tiny.tokenizer.decode(tokens).strip() == WORDS[2].strip()
    Push.calls.clear()
    monkeypatch.setattr(tune, "_outputs", outputs)
    examples = [{"prompt": f"<!-> item {i} <-!> go"} for i in range(4)]
    out = tmp_path / "tune.json"
    result = tune_strength(tiny, examples, "push_words", _score, max_new_tokens=6, out=out)
    assert [t.valid for t in result.trials] == [True, True, True, False]  # level 4 loops: never chosen
    assert [t.score for t in result.trials] == [1.0, 2.0, 3.0, 4.0]
    assert result.chosen == 3 and not result.at_strongest  # 4 was tried (and refused)
    assert result.unsteered_score == 0.0 and not result.below_unsteered and result.tied == 1
    assert result.heldout["mean"] == 3.0 and result.heldout["n"] == 2
    assert result.heldout["low"] <= 3.0 <= result.heldout["high"]
    assert result.unsteered["mean"] == 0.0 and result.difference["mean"] == 3.0
    assert sorted(result.dev + result.test) == [0, 1, 2, 3]
    saved = json.loads(out.read_text())
    assert saved["result"]["chosen"] == 3 and set(saved["trials"]) == {"none", "1", "2", "3", "4"}
    assert saved["heldout_scores"]["3"] == [3.0, 3.0] and saved["heldout_scores"]["none"] == [0.0, 0.0]
    # resumed: the development trials and the held-out scores are read back, nothing runs again
    Push.calls.clear()
    again = tune_strength(tiny, examples, "push_words", _score, max_new_tokens=6, out=out)
    assert again.chosen == 3 and Push.calls == [] and again.heldout == result.heldout
    # a strength to compare is scored on the same held-out examples, paired with the unsteered ones
    compared = tune_strength(tiny, examples, "push_words", _score, max_new_tokens=6, out=out, compare=[1])
    assert Push.calls == [1]
    (other,) = compared.compared
    assert other["strength"] == 1 and other["heldout"]["mean"] == 1.0 and other["difference"]["mean"] == 1.0
    assert other["heldout"]["n"] == len(compared.test) == 2
    with pytest.raises(AttnlensError, match="breaks the text"):
        tune_strength(tiny, examples, "push_words", _score, grid=[4], max_new_tokens=6)
    steering.register(NoStrength())
    with pytest.raises(AttnlensError, match="has no strength"):
        tune_strength(tiny, examples, "no_strength", _score)
    with pytest.raises(AttnlensError, match="at least two"):
        tune_strength(tiny, examples[:1], "push_words", _score)


def test_every_method_has_a_strength_to_search_and_a_default_to_compare():
    from attnlens.experiments.profiles import profile

    for name in ("guide", "instaboost", "spotlight", "spa", "pasta"):
        method, policy = steering.get(name), profile(name)
        assert policy.strength in {p.name for p in method.params}
        base = {"head_config": {0: [0]}} if name == "pasta" else {}
        for value in (*policy.grid(), policy.reference_strength()):
            assert method.settings({**base, policy.strength: value})[policy.strength] == value
        assert policy.paper_source
    assert profile("instaboost").reference_strength() == steering.get("instaboost").param("alpha").default
    assert profile("pasta").reference_strength() == 0.01 and profile("spa").reference_strength() == 1.4
    # from the command line a strength is text
    assert steering.get("guide").settings({"delta_mid": "2"})["delta_mid"] == 2.0
    with pytest.raises(AttnlensError, match="delta_mid must be a number"):
        steering.get("guide").settings({"delta_mid": "two"})


def test_the_cli_tunes_a_method_on_a_study(tiny, tmp_path, capsys, monkeypatch):
    from attnlens import cli
    from attnlens.cli import tune as tune_cli

    monkeypatch.setattr(tune_cli, "load_model_for", lambda args: tiny)
    argv = ["tune", "summarize", "--method", "instaboost", "--grid", "2", "8", "--limit", "2", "--max-new-tokens",
            "2", "--max-repetition", "1", "--out", str(tmp_path / "t"), "--json"]
    assert cli.main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["method"] == "instaboost" and result["parameter"] == "alpha"
    assert [t["strength"] for t in result["trials"]] == [2.0, 8.0]
    assert result["chosen"] in (2.0, 8.0) and result["heldout"]["n"] == 1
    assert (tmp_path / "t" / "tune-instaboost.json").is_file()
    assert cli.main(argv[:-1]) == 0  # read back, printed; the strongest strength tried gets a note
    printed = capsys.readouterr().out
    assert ("is the strongest strength tried" in printed) == (result["chosen"] == 8.0)
    steering.register(NoStrength())
    assert cli.main(["tune", "summarize", "--method", "no_strength", "--out", str(tmp_path / "p")]) != 0
    assert "has no strength" in capsys.readouterr().err


def test_the_guard_is_relative_to_the_unsteered_model_and_a_comparison_reports_no_valid_strength(
        tiny, push, tmp_path, monkeypatch):
    from attnlens.experiments import SummarizeConfig, tune
    from attnlens.experiments.compare import compare_methods
    from attnlens.experiments.tune import NoValidStrength

    real = tune._outputs
    examples = [{"prompt": f"<!-> item {i} <-!> go"} for i in range(4)]

    def unsteered(text):
        def outputs(model, prompts, steer, *, max_new_tokens, chat, cache=None):
            if not steer:
                return [text for _ in prompts]
            return real(model, prompts, steer, max_new_tokens=max_new_tokens, chat=chat, cache=cache)
        return outputs

    looping = unsteered(WORDS[4].strip())  # the model loops on its own

    monkeypatch.setattr(tune, "_outputs", looping)
    result = tune_strength(tiny, examples, "push_words", _score, grid=[1, 4], max_new_tokens=6)
    # level 4 repeats as much as the unsteered model: it does not break the text, it is allowed
    assert result.unsteered_repetition == pytest.approx(0.75) and result.bound == pytest.approx(0.75)
    assert [t.valid for t in result.trials] == [True, True] and result.chosen == 4 and result.at_strongest
    monkeypatch.setattr(tune, "_outputs", unsteered("plain text here"))

    # a model that does not loop: level 4 breaks the text; without require_valid nothing is chosen, the
    # compared strengths are still scored
    with pytest.raises(NoValidStrength, match="breaks the text"):
        tune_strength(tiny, examples, "push_words", _score, grid=[4], max_new_tokens=6)
    none = tune_strength(tiny, examples, "push_words", _score, grid=[4], max_new_tokens=6, compare=[2],
                         require_valid=False)
    assert none.chosen is None and none.heldout == {} and none.compared[0]["heldout"]["mean"] == 2.0

    config = SummarizeConfig(out=str(tmp_path), limit=4, max_new_tokens=6, plots=False, influence=False)
    table = compare_methods("summarize", config, ["push_words"], model=tiny, grids={"push_words": [4]},
                            out=tmp_path / "cmp")
    tuned, default = table.rows
    assert tuned.strength is None and tuned.n == 0 and default.strength == 1 and default.n == 2
    assert "| push_words (tuned) | none: every strength tried breaks the text |" in table.markdown()


def test_a_search_says_when_it_could_not_tell_strengths_apart():
    from attnlens.experiments.tune import Trial, Tuning

    tie = Tuning("m", "p", 2, [Trial(1, 0.5, 0.0, True), Trial(2, 0.5, 0.0, True), Trial(3, 0.9, 0.9, False)])
    assert tie.tied == 2 and not tie.at_strongest  # the looping 3 scored higher but was never a candidate
    top = Tuning("m", "p", 3, [Trial(1, 0.5, 0.0, True), Trial(3, 0.7, 0.0, True)])
    assert top.tied == 1 and top.at_strongest
    assert not top.below_unsteered  # the unsteered score unknown (NaN)
    worse = Tuning("m", "p", 3, [Trial(1, 0.5, 0.9, False), Trial(3, 0.2, 0.0, True)], unsteered_score=0.4)
    assert worse.below_unsteered and not Tuning("m", "p", 3, [Trial(3, 0.5, 0.0, True)], unsteered_score=0.4).below_unsteered
