"""The PASTA paper's metrics as pastalib scores them, beside this package's own, on hand-written outputs;
IFEval's instruction-level accuracy over all instructions; the studies report both."""

from __future__ import annotations

import json
import math

import pytest

from attnlens.core.errors import AttnlensError
from attnlens.experiments import CONFIGS, ExperimentConfig, get_study, run_experiment
from attnlens.experiments.bios import json_format, pronoun_shares
from attnlens.experiments.counterfact import ContinuationLogprob, first_token_logprob
from attnlens.experiments.instructions import score_instructions
from attnlens.experiments.metrics import (
    bootstrap_ci, ifeval_instruction_level, pastalib_efficacy, pastalib_json_format, pastalib_json_prediction,
    pastalib_pronouns, pastalib_top1,
)
from attnlens.experiments.study import Item
from attnlens.experiments.summary import summarize_rows
from attnlens.experiments.config import Condition


# ----------------------------------------------------------------------------- JSON formatting


def test_json_format_as_pastalib_any_braced_substring_that_parses():
    # any object counts for pastalib; ours needs the key 'occupation'
    assert pastalib_json_format('{"name": "Lena Holm"}') and not json_format('{"name": "Lena Holm"}')[0]
    # text around it, a later closing brace, an empty object
    assert pastalib_json_format('Sure: {"a": 1} and then } more')
    assert pastalib_json_format("{}")
    # single quotes are not JSON; no braces at all; an object cut before it closes
    assert not pastalib_json_format("{'name': 'Lena', 'occupation': 'nurse'}")
    assert not pastalib_json_format("Lena Holm is a nurse.")
    assert not pastalib_json_format('{"name": "Lena", "occupation": "nu')
    # a brace alone is not an object
    assert not pastalib_json_format("} {")
    # nested braces: the outer object parses from the first { to the last }
    assert pastalib_json_format('x {"a": {"b": 2}} y')


def test_json_prediction_as_pastalib_the_target_among_the_values():
    assert pastalib_json_prediction('{"name": "Lena", "occupation": "Nurse"}', "nurse")
    # a string value containing the target counts; the key does not matter
    assert pastalib_json_prediction('{"job": "a registered nurse"}', "nurse")
    # the target only in the text, not in an object's values
    assert not pastalib_json_prediction('The nurse said {"name": "Lena"}', "nurse")
    # a nested object is itself a braced substring that parses: its values count
    assert pastalib_json_prediction('{"person": {"occupation": "nurse"}}', "nurse")
    # a number or a list value does not hold the target
    assert not pastalib_json_prediction('{"jobs": ["nurse"], "n": 1}', "nurse")
    # the second object of two holds it
    assert pastalib_json_prediction('{"name": "Lena"} then {"occupation": "nurse"}', "nurse")
    assert not pastalib_json_prediction("no object, nurse", "nurse")


# ----------------------------------------------------------------------------- pronouns


@pytest.mark.parametrize("output, expected, ours", [
    # every pronoun changed: both pass; ours: all shares 1
    ("They are a nurse and their patients like them.", (True, True), (1.0, 1.0)),
    # no pronoun at all: pastalib passes both, ours scores 0
    ("Lena Holm is a nurse.", (True, True), (0.0, 0.0)),
    ("", (True, True), (0.0, 0.0)),
    # "her" left: the subject check passes, the all-changed check fails
    ("They love her work.", (True, False), (0.5, 1.0)),
    # one "he" among many "they": both fail (pass or fail, not a share)
    ("They said they would, and they did, but he left.", (False, False), (0.75, 0.75)),
    # contractions split as spaCy splits them, with and without the apostrophe
    ("He's a pilot.", (False, False), (0.0, 0.0)),
    ("shes a pilot", (False, False), (0.0, 0.0)),
    # words that only contain a pronoun are not one
    ("The shell and the shed; hello there, theme.", (True, True), (0.0, 0.0)),
    # split inside a word at a slash or a hyphen before a letter
    ("they/she", (False, False), (0.5, 0.5)),
    ("HIS-work", (True, False), (0.0, 0.0)),
])
def test_pronoun_changes_as_pastalib_pass_or_fail(output, expected, ours):
    assert pastalib_pronouns(output) == expected
    assert pronoun_shares(output) == pytest.approx(ours)


# ----------------------------------------------------------------------------- CounterFact


def test_efficacy_as_pastalib_first_tokens_compared():
    assert pastalib_efficacy([-1.0], [-2.0]) == 1.0
    assert pastalib_efficacy([-2.0], [-1.0]) == 0.0
    assert pastalib_efficacy([-1.5], [-1.5]) == 0.0  # the same first token: a tie fails
    # the paraphrase score: the share of a fact's paraphrases
    assert pastalib_efficacy([-1.0, -3.0, -0.5], [-2.0, -2.0, -2.0]) == pytest.approx(2 / 3)
    with pytest.raises(AttnlensError, match="one old log-probability per new one"):
        pastalib_efficacy([-1.0], [])


def test_counterfact_scores_first_tokens_beside_the_mean_per_token():
    """A fake scorer: the new object's mean per token is lower than the old one's, but its first token is more
    probable; ours says 0, pastalib's 1. The paraphrase score averages every paraphrase."""
    study = get_study("counterfact")
    item = Item("cf", {"question": "Q?", "paraphrase": "P1?", "paraphrases": ["P1?", "P2?", "P3?"],
                       "new": "Lima", "old": "Paris", "old_fact": "a", "new_fact": "b"})
    table = {"Q?": ((-3.0, -0.5), (-1.0, -2.0)), "P1?": ((-3.0, -0.5), (-1.0, -2.0)),
             "P2?": ((-1.0, -1.0), (-0.5, -0.1)), "P3?": ((-1.0, -0.2), (-2.0, -1.0))}
    asked = []

    def scorer(it, texts):
        question = it.data["_ask"]
        asked.append(question)
        assert texts == ["Lima", "Paris"]
        return [ContinuationLogprob(mean, first) for mean, first in table[question]]

    metrics, = study.model_scores([item], ExperimentConfig(out="unused"), scorer)
    assert metrics == {"efficacy": 0.0, "pastalib_efficacy": 1.0, "paraphrase": 0.0,
                       "pastalib_paraphrase": pytest.approx(2 / 3)}
    assert asked == ["Q?", "P1?", "P2?", "P3?"]  # each question scored once
    assert first_token_logprob(ContinuationLogprob(-1.0, -0.25)) == -0.25 and first_token_logprob(-2.0) == -2.0


def test_counterfact_records_keep_every_paraphrase(tmp_path):
    record = {"case_id": 7, "requested_rewrite": {
        "prompt": "The capital of {} is", "subject": "France", "relation_id": "P36",
        "target_true": {"str": "Paris"}, "target_new": {"str": "Lima"}},
        "paraphrase_prompts": ["Where is the seat of France? The capital of France is",
                               "France's capital city is", "France's capital city is"]}
    path = tmp_path / "cf.json"
    path.write_text(json.dumps([record]))
    study = get_study("counterfact")
    config = CONFIGS["counterfact"](out=str(tmp_path), dataset=str(path))
    fact, = study.load_data(config)
    assert fact["paraphrases"] == ["Where is the seat of France? The capital of France is", "France's capital city is"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"old_fact": "a", "new_fact": "b", "question": "q", "old": "x", "new": "y",
                                "paraphrases": "not a list"}]))
    with pytest.raises(AttnlensError, match="'paraphrases' must be"):
        study.load_data(CONFIGS["counterfact"](out=str(tmp_path), dataset=str(bad)))


# ----------------------------------------------------------------------------- Bias in Bios


def test_bias_in_bios_as_pastalib_the_most_probable_candidate():
    assert pastalib_top1({"nurse": -1.0, "pilot": -2.0, "chef": -3.0}, "nurse")
    assert not pastalib_top1({"nurse": -2.0, "pilot": -1.0, "chef": -3.0}, "nurse")
    # equal first tokens: the first candidate in sorted order wins
    assert pastalib_top1({"pilot": -1.0, "photographer": -1.0}, "photographer")
    assert not pastalib_top1({"pilot": -1.0, "photographer": -1.0}, "pilot")
    with pytest.raises(AttnlensError, match="not among the candidates"):
        pastalib_top1({"nurse": -1.0}, "chef")


def test_bios_study_ranks_every_occupation_of_the_data(tmp_path):
    study = get_study("bios")
    config = CONFIGS["bios"](out=str(tmp_path), limit=20)
    items = study.items(study.load_data(config), config, None)
    candidates = items[0].data["candidates"]
    assert candidates == sorted({i.data["occupation"] for i in items}) and len(candidates) == 14
    right = {c: (-1.0 if c == items[0].data["occupation"] else -5.0) for c in candidates}

    def scorer(item, texts):
        assert list(texts) == candidates
        return [ContinuationLogprob(-9.0, right[t]) for t in texts]

    assert study.model_scores([items[0]], config, scorer) == [{"pastalib_accuracy": 1.0}]
    wrong = dict(right, **{items[0].data["occupation"]: -6.0})
    assert study.model_scores([items[0]], config,
                              lambda item, texts: [ContinuationLogprob(0.0, wrong[t]) for t in texts]) == [
        {"pastalib_accuracy": 0.0}]


def test_the_studies_declare_both_metrics():
    assert {"pastalib_format_accuracy", "pastalib_prediction_accuracy"} <= set(get_study("bios-json").metrics)
    assert {"pastalib_pronoun_accuracy", "pastalib_all_changed_accuracy"} <= set(get_study("pronouns").metrics)
    assert "pastalib_accuracy" in get_study("bios").model_metrics
    assert {"pastalib_efficacy", "pastalib_paraphrase"} <= set(get_study("counterfact").model_metrics)
    scores = get_study("bios-json").score(
        [Item("b", {"occupation": "nurse"})], ['{"name": "Lena", "job": "nurse"}'], None)
    assert scores[0].metrics == {"format_accuracy": 0.0, "occupation_accuracy": 1.0,
                                 "pastalib_format_accuracy": 1.0, "pastalib_prediction_accuracy": 1.0}
    scores = get_study("pronouns").score([Item("b", {"occupation": "nurse"})], ["Lena Holm is a nurse."], None)
    assert scores[0].metrics == {"pronouns_changed_all": 0.0, "pronouns_changed_he_she": 0.0,
                                 "occupation_accuracy": 1.0, "pastalib_pronoun_accuracy": 1.0,
                                 "pastalib_all_changed_accuracy": 1.0}


# ----------------------------------------------------------------------------- IFEval's instruction level


RULES_3 = [{"kind": "lowercase"}, {"kind": "no_commas"}, {"kind": "forbidden_words", "words": ["blue"]}]
RULES_1 = [{"kind": "no_commas"}]


def test_instruction_level_is_over_all_instructions():
    # prompt 1 follows 3 of 3 rules, prompt 2 follows 0 of 1: IFEval 3/4, the mean of shares (1 + 0) / 2
    assert ifeval_instruction_level([[True, True, True], [False]]) == 0.75
    with pytest.raises(AttnlensError, match="at least one instruction"):
        ifeval_instruction_level([[], []])
    a, b = score_instructions("the sky is clear", RULES_3), score_instructions("Yes, one comma.", RULES_1)
    assert a.metrics["instruction_level_strict"] == 1.0 and b.metrics["instruction_level_strict"] == 0.0
    assert a.details["weights"]["instruction_level_strict"] == 3 and b.details["weights"]["instruction_level_loose"] == 1

    def row(item, condition, score):
        return {"item": item, "condition": condition, "metrics": dict(score.metrics), "details": dict(score.details)}

    none = [row("p1", "none", score_instructions("the sky is blue", RULES_3)),  # 2 of 3
            row("p2", "none", b)]                                                # 0 of 1
    guide = [row("p1", "guide@1", a), row("p2", "guide@1", b)]                   # 3 of 3, 0 of 1
    config = ExperimentConfig(out="unused", bootstrap=200)
    metrics = ["instruction_level_strict", "prompt_share_strict", "prompt_strict"]
    s_none, s_guide = summarize_rows(none + guide, [Condition("none"), Condition("guide", 1.0)], metrics, config)
    assert s_none.estimates["instruction_level_strict"].mean == pytest.approx(2 / 4)
    assert s_none.estimates["prompt_share_strict"].mean == pytest.approx((2 / 3 + 0) / 2)
    assert s_guide.estimates["instruction_level_strict"].mean == pytest.approx(3 / 4)
    assert s_guide.estimates["prompt_share_strict"].mean == pytest.approx(1 / 2)
    assert s_guide.estimates["prompt_strict"].mean == pytest.approx(1 / 2)
    # the paired difference over all instructions: (3 - 2) of 4 rules
    assert s_guide.differences["instruction_level_strict"].mean == pytest.approx(1 / 4)
    assert s_guide.differences["prompt_share_strict"].mean == pytest.approx(1 / 6)
    e = s_guide.estimates["instruction_level_strict"]
    assert 0.0 <= e.low <= e.mean <= e.high <= 1.0


def test_weighted_bootstrap():
    e = bootstrap_ci([1.0, 0.0], weights=[3, 1], resamples=500)
    assert e.mean == 0.75 and e.n == 2 and 0.0 <= e.low < e.high <= 1.0
    # every resample's mean is weighted too: with one value repeated the interval is that value
    assert bootstrap_ci([0.5, 0.5], weights=[1, 9]).low == 0.5
    assert bootstrap_ci([1.0, 0.0], weights=[2, 2]).mean == bootstrap_ci([1.0, 0.0]).mean
    assert bootstrap_ci([1.0, 0.0, 1.0], weights=[1, 2, 3], clusters=["a", "a", "b"]).mean == pytest.approx(4 / 6)
    for bad in ([1], [0, 1], [-1, 1], [math.nan, 1]):
        with pytest.raises(AttnlensError, match="weights must"):
            bootstrap_ci([1.0, 0.0], weights=bad)


# ----------------------------------------------------------------------------- end to end on the tiny model


@pytest.mark.parametrize("study", ["bios", "counterfact", "instructions"])
def test_the_runs_report_pastalib_and_ifeval_metrics(tiny, tmp_path, study):
    config = CONFIGS[study](out=tmp_path / study, deltas=[0, 1], limit=2, max_new_tokens=2, conditions=["guide"],
                            plots=False, influence=False, bootstrap=50)
    result = run_experiment(study, config, model=tiny)
    rows = [json.loads(line) for line in (tmp_path / study / "rows.jsonl").read_text().splitlines()]
    declared = get_study(study).metrics
    assert all(set(declared) <= set(r["metrics"]) for r in rows)
    assert set(declared) <= set(result.metrics)
    header = (tmp_path / study / "summary.csv").read_text().splitlines()[0].split(",")
    assert [m for m in declared if m.startswith(("pastalib_", "instruction_level_"))]
    assert all(m in header for m in declared)
    if study == "instructions":
        # the summary's instruction level is the share of all rules, from the rows by hand
        for condition in ("none", "guide@1"):
            mine = [r for r in rows if r["condition"] == condition]
            followed = [r["details"]["strict"] for r in mine]
            summary = next(s for s in result.summary if s.condition == condition)
            assert summary.estimates["instruction_level_strict"].mean == pytest.approx(
                ifeval_instruction_level(followed))
