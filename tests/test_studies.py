"""The PASTA-style studies (bios-json, pronouns, bios, counterfact, instructions): their metrics on hand-written
outputs, their shipped data, user data, paired differences, and each study end to end on the tiny model."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import pytest

from attnlens import cli
from attnlens.experiments import CONFIGS, ExperimentConfig, ExperimentError, get_study, run_experiment
from attnlens.experiments import instruction_checks as checks
from attnlens.experiments.bios import json_format, occupation_named, pronoun_shares
from attnlens.experiments.config import Condition
from attnlens.experiments.instructions import score_instructions
from attnlens.experiments.summary import summarize_rows

NEW_STUDIES = ("bios-json", "pronouns", "bios", "counterfact", "instructions")

# ----------------------------------------------------------------------------- metrics on hand-written outputs


def test_bios_json_format_needs_an_object_with_the_asked_key():
    assert json_format('{"name": "Lena Holm", "occupation": "nurse"}') == (True, "nurse")
    assert json_format('Sure! ```json\n{"Occupation": "pilot"}\n```') == (True, "pilot")
    assert json_format('{"name": "Lena Holm", "job": "nurse"}')[0] is False  # the wrong key
    assert json_format("occupation: nurse")[0] is False  # not JSON
    assert json_format('["occupation", "nurse"]')[0] is False  # not an object


def test_occupation_named_matches_whole_words_plurals_and_aliases():
    assert occupation_named("She is a Nurse.", "nurse")
    assert occupation_named("They work as pharmacists", "pharmacist")
    assert occupation_named("an attorney in Leeds", "lawyer")
    assert not occupation_named("She nursed her plants.", "nurse")
    assert not occupation_named("He is a chef.", "pilot")


def test_pronoun_shares():
    assert pronoun_shares("They are a nurse. Their patients like them.") == (1.0, 1.0)
    assert pronoun_shares("She is a nurse. Her patients like her.") == (0.0, 0.0)
    share_all, share_subject = pronoun_shares("They are a nurse. Her patients like them. He said so.")
    assert share_all == pytest.approx(2 / 4) and share_subject == pytest.approx(1 / 2)
    assert pronoun_shares("A nurse in Leeds.") == (0.0, 0.0)  # nothing was changed


# one passing and one failing output for every kind of instruction
CASES = {
    "lowercase": ({}, "all quiet here.", "All quiet here."),
    "uppercase": ({}, "ALL QUIET HERE.", "ALL quiet HERE."),
    "capital_words": ({"n": 1}, "The NASA team met.", "The NASA and ESA teams met."),
    "include_words": ({"words": ["river", "stone"]}, "A stone by the river.", "A stone by the lake."),
    "forbidden_words": ({"words": ["blue"]}, "The sky is azure, bluer than ever.", "The sky is Blue."),
    "word_frequency": ({"word": "tea", "n": 2}, "Tea, then more tea.", "Tea, then coffee."),
    "sentences": ({"relation": "exactly", "n": 1}, "One sentence only.", "One. Two."),
    "words_at_most": ({"n": 3}, "Just three words.", "Here are four words."),
    "words_at_least": ({"n": 4}, "Here are four words.", "Only three words."),
    "paragraphs": ({"n": 2}, "First part.\n\nSecond part.", "First part.\nStill first."),
    "bullets": ({"n": 2}, "* one\n* two", "* one\n* two\n* three"),
    "start_with": ({"phrase": "My answer is"}, "my answer is yes.", "Yes, my answer is yes."),
    "end_with": ({"phrase": "That is all."}, "Done. That is all.", "That is all. Bye."),
    "json": ({}, '```json\n{"a": 1}\n```', 'Here: {"a": 1}'),
    "title": ({}, "<<Rain>>\nIt rains.", "Rain\nIt rains."),
    "sections": ({"n": 2}, "SECTION 1\nA.\nSECTION 2\nB.", "SECTION 1\nA and B."),
    "language": ({"code": "fr", "language": "French"}, "Le chat dort sur le canapé depuis ce matin.",
                 "The cat has slept on the sofa since this morning."),
    "no_commas": ({}, "No commas at all.", "Yes, one comma."),
    "placeholders": ({"n": 2}, "Dear [name], see you at [place].", "Dear [name], see you there."),
    "postscript": ({}, "Thanks.\n\nP.S. Bring cake.", "Thanks. Bring cake."),
    "quotation": ({}, '"Quoted answer."', 'Quoted "answer."'),
    "repeat_request": ({"request": "Explain  how a kite flies."}, "Explain how a kite flies. Wind lifts it.",
                       "Wind lifts it."),
    "highlights": ({"n": 2}, "A *first* and a *second* one.", "Only *one* here."),
    "secret": ({"secret": "TANGERINE"}, "I cannot share the password.", "It is T-A-N-G-E-R-I-N-E."),
    "avoid_topic": ({"topic": "cryptocurrency", "words": ["bitcoin", "blockchain"]},
                    "I would rather not discuss that.", "Bitcoin mining secures the network."),
}


def test_every_kind_has_a_passing_and_a_failing_case():
    assert set(CASES) == set(checks.KINDS) and len(checks.KINDS) >= 20
    for kind, (args, good, bad) in CASES.items():
        instruction = {"kind": kind, **args}
        assert checks.rule_text(instruction)
        assert checks.check(good, instruction), (kind, good)
        assert not checks.check(bad, instruction), (kind, bad)


def test_loose_checks_forgive_markdown_and_a_first_line():
    starts = {"kind": "start_with", "phrase": "My answer is"}
    assert not checks.check("Sure!\nMy answer is yes.", starts)
    assert checks.check_loose("Sure!\nMy answer is yes.", starts)
    no_stars = {"kind": "end_with", "phrase": "That is all."}
    assert not checks.check("**That is all.**", no_stars) and checks.check_loose("**That is all.**", no_stars)
    assert not checks.check_loose("Yes, one comma.", {"kind": "no_commas"})
    # an empty answer follows no rule, not even one that only forbids something
    assert not checks.check("  ", {"kind": "no_commas"}) and not checks.check_loose("", {"kind": "no_commas"})


def test_instruction_scores_of_a_prompt():
    rules = [{"kind": "lowercase"}, {"kind": "no_commas"}, {"kind": "forbidden_words", "words": ["blue"]}]
    score = score_instructions("the sky is blue today", rules)
    assert score.metrics["prompt_strict"] == 0.0
    assert score.metrics["instruction_level_strict"] == score.metrics["prompt_share_strict"] == pytest.approx(2 / 3)
    assert score.details["strict"] == [True, True, False]
    assert score_instructions("the sky is clear", rules).metrics == {
        "prompt_strict": 1.0, "instruction_level_strict": 1.0, "prompt_loose": 1.0, "instruction_level_loose": 1.0,
        "prompt_share_strict": 1.0, "prompt_share_loose": 1.0}
    with pytest.raises(ExperimentError, match="unknown instruction kind 'shout'"):
        checks.check("x", {"kind": "shout"})
    with pytest.raises(ExperimentError, match="needs n"):
        checks.rule_text({"kind": "bullets"})


def test_paired_differences_from_none():
    def row(condition, item, value):
        return {"condition": condition, "item": item, "metrics": {"m": value}, "influence": None}

    rows = [row("none", f"i{k}", k % 2) for k in range(20)] + [row("guide@1", f"i{k}", 1.0) for k in range(20)]
    config = ExperimentConfig(out="unused", bootstrap=200)
    none, guide = summarize_rows(rows, [Condition("none"), Condition("guide", 1.0)], ["m"], config)
    assert none.differences == {}
    d = guide.differences["m"]
    assert d.mean == pytest.approx(0.5) and d.n == 20 and 0 < d.low <= 0.5 <= d.high
    table = guide.as_row(["m"])
    assert table["m_diff"] == pytest.approx(0.5) and math.isnan(none.as_row(["m"])["m_diff"])


# ----------------------------------------------------------------------------- data


def test_shipped_data_sizes():
    config = ExperimentConfig(out="unused")
    bios = get_study("bios").load_data(config)
    assert len(bios) >= 200 and len({b["occupation"] for b in bios}) >= 10
    study = get_study("bios")
    for b in bios:  # the first sentence (the focus) states the occupation
        item = study.items([b], config, None)[0]
        focus = study.segments(item, config).focus
        assert occupation_named(focus, b["occupation"]) and b["name"] in focus
        assert re.search(r"\b(he|she)\b", b["text"], re.I)
    facts = get_study("counterfact").load_data(config)
    assert len(facts) >= 120 and all(f["old"] in f["old_fact"] and f["new"] in f["new_fact"] for f in facts)
    prompts = get_study("instructions").load_data(config)
    kinds = {i["kind"] for p in prompts for i in p["instructions"]}
    assert len(prompts) >= 150 and len(kinds) >= 20
    assert all(1 <= len(p["instructions"]) <= 3 for p in prompts)
    assert sum(bool(p.get("passage")) for p in prompts) >= 20 and sum(p["tempting"] for p in prompts) >= 20


def test_user_data_files(tmp_path):
    bios = tmp_path / "bios.jsonl"  # Bias in Bios' own field names
    bios.write_text(json.dumps({"name": ["Ada", "Quill"], "title": "software_engineer",
                                "bio": "Ada Quill is a software engineer. She writes compilers."}) + "\n")
    [b] = get_study("bios").load_data(ExperimentConfig(out="x", dataset=str(bios)))
    assert (b["name"], b["occupation"]) == ("Ada Quill", "software engineer")
    cf = tmp_path / "cf.json"  # CounterFact's own shape
    cf.write_text(json.dumps([{"case_id": 7, "requested_rewrite": {
        "prompt": "The mother tongue of {} is", "subject": "Ada Quill", "relation_id": "P103",
        "target_true": {"str": "English"}, "target_new": {"str": "Finnish"}},
        "paraphrase_prompts": ["Ada Quill grew up speaking"]}]))
    [f] = get_study("counterfact").load_data(ExperimentConfig(out="x", dataset=str(cf)))
    assert f["new_fact"] == "The mother tongue of Ada Quill is Finnish" and f["paraphrase"] == "Ada Quill grew up speaking"
    assert f["id"] == "7"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"request": "Hi", "instructions": [{"kind": "shout"}]}) + "\n")
    with pytest.raises(ExperimentError, match="prompt 0: unknown instruction kind 'shout'"):
        get_study("instructions").load_data(ExperimentConfig(out="x", dataset=str(bad)))
    bad.write_text(json.dumps({"name": "A", "text": "A is here."}) + "\n")
    with pytest.raises(ExperimentError, match="biography 0 has no 'occupation'"):
        get_study("pronouns").load_data(ExperimentConfig(out="x", dataset=str(bad)))
    with pytest.raises(ExperimentError, match="local .jsonl or .json file"):
        get_study("counterfact").load_data(ExperimentConfig(out="x", dataset="no/such-dataset"))


def test_prompts_put_the_focus_where_the_study_says(tokenizer):
    config = ExperimentConfig(out="unused", limit=1)
    cf = get_study("counterfact")
    item = cf.items(cf.load_data(config), config, tokenizer)[0]
    seg = cf.segments(item, config)
    assert seg.before.startswith("Previously, the capital of France is Paris.") and seg.before.endswith("Currently, ")
    assert seg.focus == "the capital of France is Lima." and seg.after == "\nWhat is the capital of France?"
    bj = get_study("bios-json")
    item = bj.items(bj.load_data(config), config, tokenizer)[0]
    focus = bj.segments(item, config).focus
    assert focus.startswith("Answer the occupation of Tove Achebe and generate the answer as json format")
    assert '"occupation"' in bj.emphatic(focus) and bj.emphatic(focus).startswith("IMPORTANT: ANSWER THE")


# ----------------------------------------------------------------------------- end to end on the tiny model


def _csv(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("study", NEW_STUDIES)
def test_each_study_runs_end_to_end(tiny, tmp_path, study):
    config = CONFIGS[study](out=tmp_path / study, deltas=[0, 1], limit=2, max_new_tokens=2,
                            conditions=["guide"], plots=False, influence=False, bootstrap=50)
    result = run_experiment(study, config, model=tiny)
    assert result.generated == 4
    metrics = get_study(study).metrics
    rows = [json.loads(line) for line in (tmp_path / study / "rows.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(set(metrics) <= set(r["metrics"]) for r in rows)
    assert all(0.0 <= v <= 1.0 for r in rows for v in r["metrics"].values())
    summary = _csv(tmp_path / study / "summary.csv")
    assert [s["condition"] for s in summary] == ["none", "guide@1"]
    for m in metrics:
        assert summary[0][f"{m}_diff"] == "nan" and summary[1][f"{m}_diff"] != "nan"
        guide, none = float(summary[1][m]), float(summary[0][m])
        assert float(summary[1][f"{m}_diff"]) == pytest.approx(guide - none, abs=1e-3)
    if study == "instructions":
        per_kind = _csv(tmp_path / study / "per_kind.csv")
        assert {p["condition"] for p in per_kind} == {"none", "guide@1"} and all(int(p["n"]) >= 1 for p in per_kind)
    if study == "bios":
        assert (tmp_path / study / "by_occupation.csv").is_file()


def test_counterfact_probabilities_follow_the_steering(tiny, tmp_path):
    heads = tmp_path / "heads.json"
    heads.write_text(json.dumps({"0": [0, 1], "2": [3]}))
    config = CONFIGS["counterfact"](out=tmp_path / "cf", limit=2, max_new_tokens=2, conditions=["none", "pasta"],
                                    pasta_heads=str(heads), plots=False, bootstrap=50)
    run_experiment("counterfact", config, model=tiny)
    study = get_study("counterfact")
    from attnlens.experiments.runner import _continuation_scorer, _method_settings

    item = study.items(study.load_data(config), config, tiny.tokenizer)[0]
    settings = _method_settings(config, [Condition("none"), Condition("pasta")])
    none = _continuation_scorer(tiny, study, Condition("none"), config, settings)(item, ["Lima", "Paris"])
    pasta = _continuation_scorer(tiny, study, Condition("pasta"), config, settings)(item, ["Lima"])
    assert len(none) == 2 and all(v < 0 for v in none) and pasta[0] != pytest.approx(none[0])
    rows = [json.loads(line) for line in (tmp_path / "cf" / "rows.jsonl").read_text().splitlines()]
    first = {r["condition"]: r for r in rows if r["item"] == item.id}
    assert first["none"]["metrics"]["efficacy"] == float(none[0] > none[1])


def test_cli_knows_the_new_studies(tmp_path):
    parser = cli.build_parser()
    for study in NEW_STUDIES:
        args = parser.parse_args(["experiment", study, "--out", str(tmp_path), "--limit", "2"])
        config = cli.experiment._experiment_config(args)
        assert isinstance(config, CONFIGS[study]) and config.limit == 2


def test_study_items_as_profiling_examples(tmp_path, capsys):
    from attnlens.experiments.bios import neutral_pronouns
    from attnlens.experiments.profiling import examples_of

    assert neutral_pronouns("She thanked him. Her cat likes her, and he knows it.") == \
        "They thanked them. Their cat likes them, and they knows it."
    examples = examples_of(["bios-json", "pronouns", "counterfact"], 2)
    assert len(examples) == 6
    first = examples[0]
    assert first.target == '{"name": "Tove Achebe", "occupation": "nurse"}'
    assert first.emphasize[0] in first.prompt[-1]["content"]
    assert examples[2].target.startswith("Tove Achebe is a nurse") and " she " not in examples[2].target
    assert examples[4].target == "Lima"
    with pytest.raises(ExperimentError, match="instructions study gives no profiling examples"):
        examples_of(["instructions"], 2)
    assert cli.main(["pasta", "profile", "--out", str(tmp_path / "h.json")]) != 0
    assert "--data FILE or as --study NAME" in capsys.readouterr().err


def test_docs_code_blocks_run():
    text = (Path(__file__).resolve().parents[1] / "docs" / "studies.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, re.DOTALL)
    assert blocks
    for block in blocks:
        exec(compile(block, "docs/studies.md", "exec"), {})
