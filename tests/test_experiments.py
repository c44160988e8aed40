"""Experiments: metrics on hand examples, conditions and prompts, bad input (before any model loads),
resumable runs, batching, PASTA, the CLI, and small end-to-end runs on the tiny and embedded models."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
from pathlib import Path

import pytest

import attnlens.runtime.models
from attnlens import cli
from attnlens.core.errors import AttnlensError
from attnlens.experiments import (
    Condition,
    ExperimentConfig,
    ExperimentError,
    JSONConfig,
    NeedleConfig,
    SummarizeConfig,
    build_messages,
    get_study,
    read_rows,
    resolve_conditions,
    run_experiment,
)
from attnlens.experiments import metrics, sources
from attnlens.experiments.runner import _batches, _Job, prepare_item as _prepare

# ----------------------------------------------------------------------------- metrics


def test_language_detection_on_hand_examples():
    assert metrics.detect_language("Le conseil municipal a voté mardi pour construire des pistes cyclables.") == "fr"
    assert metrics.detect_language("The city council voted on Tuesday to build bicycle lanes.") == "en"
    assert metrics.detect_language("  12345 ... ") is None
    assert metrics.is_language("Les abeilles communiquent par une danse.", "fr")
    assert not metrics.is_language("Bees communicate with a dance.", "fr")


def test_semantic_similarity_ranks_related_text_higher():
    passage = "Honeybees tell each other where flowers are by dancing inside the hive."
    sims = metrics.semantic_similarity(
        [passage, "Bees dance to show their hive mates where to find food.", "The stock market fell sharply today.", ""],
        [passage] * 4,
    )
    assert sims[0] == pytest.approx(1.0, abs=1e-4)
    assert sims[1] > sims[2] + 0.3
    assert sims[3] == 0.0
    with pytest.raises(AttnlensError, match="1 texts but 2 references"):
        metrics.semantic_similarity(["a"], ["a", "b"])


def test_contains_answer_matches_whole_words_case_and_punctuation_insensitively():
    assert metrics.contains_answer("The password is Blue-Heron-42.", ["blue-heron-42"])
    assert metrics.contains_answer("It is the MANGO!", ["mango"])
    assert metrics.contains_answer("Il vient de Maurice (Mauritius).", ["mauritius"])
    assert not metrics.contains_answer("The mangoes were ripe.", ["mango"])
    assert not metrics.contains_answer("I do not know.", ["paprika"])
    assert metrics.normalize("  Café   Crème! ") == "cafe creme"


SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}, "city": {"type": "string"}},
    "required": ["name", "age", "city"],
    "additionalProperties": False,
}
EXPECTED = {"name": "Maria Lopez", "age": 43, "city": "Valencia"}


def test_json_scores_on_hand_examples():
    exact = metrics.score_json('{"name": "Maria Lopez", "age": 43, "city": "Valencia"}', SCHEMA, EXPECTED)
    assert (exact.valid_json, exact.exact_format, exact.key_jaccard, exact.value_accuracy) == (True, True, 1.0, 1.0)

    fenced = metrics.score_json('```json\n{"name": "Maria Lopez", "age": 43, "city": "valencia"}\n```', SCHEMA, EXPECTED)
    assert fenced.exact_format and fenced.value_accuracy == 1.0

    chatty = metrics.score_json('Sure! Here it is: {"name": "Maria Lopez", "age": 43, "city": "Valencia"} Hope it helps.',
                                SCHEMA, EXPECTED)
    assert chatty.valid_json and not chatty.exact_format and chatty.key_jaccard == 1.0

    # two of the three keys right, one extra: |{name, age}| / |{name, age, city, job}| = 2/4
    wrong_keys = metrics.score_json('{"name": "Maria Lopez", "age": "43", "job": "architect"}', SCHEMA, EXPECTED)
    assert wrong_keys.valid_json and not wrong_keys.exact_format
    assert wrong_keys.key_jaccard == pytest.approx(0.5)
    assert wrong_keys.value_accuracy == pytest.approx(2 / 3)  # "43" read as 43; city missing

    wrong_type = metrics.score_json('{"name": "Maria Lopez", "age": "forty-three", "city": "Valencia"}', SCHEMA)
    assert wrong_type.valid_json and wrong_type.key_jaccard == 1.0 and not wrong_type.exact_format

    broken = metrics.score_json('{"name": "Maria Lopez", "age": 43,', SCHEMA, EXPECTED)
    assert broken.as_metrics() == {"valid_json": 0.0, "exact_format": 0.0, "key_jaccard": 0.0, "value_accuracy": 0.0}
    assert metrics.score_json("[1, 2]", SCHEMA).valid_json is False
    assert metrics.key_jaccard([], []) == 1.0


def test_bootstrap_interval():
    const = metrics.bootstrap_ci([0.5] * 10)
    assert (const.mean, const.low, const.high, const.n) == (0.5, 0.5, 0.5, 10)
    half = metrics.bootstrap_ci([0, 1] * 20, seed=3)
    assert half.mean == 0.5 and half.low < 0.5 < half.high
    assert 0.25 < half.low and half.high < 0.75
    assert metrics.bootstrap_ci([0, 1] * 20, seed=3) == half  # seeded
    wide = metrics.bootstrap_ci([0, 1] * 20, confidence=0.99, seed=3)
    assert wide.low <= half.low and wide.high >= half.high
    assert metrics.bootstrap_ci([1.0, float("nan"), None]).n == 1
    assert math.isnan(metrics.bootstrap_ci([]).mean)


# ----------------------------------------------------------------------------- data


def test_shipped_data_is_large_enough():
    config = ExperimentConfig(out="unused")
    assert len(get_study("summarize").load_data(config)) >= 50
    assert len(get_study("json").load_data(config).records) >= 50
    needle = get_study("needle").load_data(NeedleConfig(out="unused"))
    assert len(needle.haystack.split()) >= 1800 and len(needle.needles) >= 10
    for n in needle.needles:  # the answer must come from the needle, not the haystack
        assert not any(metrics.contains_answer(needle.haystack, [a]) for a in n["answers"])
        assert metrics.contains_answer(n["needle"], n["answers"])


def test_json_records_validate_against_their_schemas():
    data = get_study("json").load_data(ExperimentConfig(out="unused"))
    for record in data.records:
        schema = data.schemas[record["schema"]]
        score = metrics.score_json(json.dumps(record["expected"]), schema, record["expected"])
        assert score.exact_format and score.value_accuracy == 1.0, record["id"]


# ----------------------------------------------------------------------------- conditions and prompts


def test_conditions():
    names = [c.name for c in resolve_conditions(ExperimentConfig(out="x", deltas=[0, 1, 2]))]
    assert names == ["none", "guide@1", "guide@2", "emphatic"]
    names = [c.name for c in resolve_conditions(ExperimentConfig(out="x", deltas=[2, 0.5], conditions=["guide"]))]
    assert names == ["guide@2", "guide@0.5"]
    with_pasta = resolve_conditions(ExperimentConfig(out="x", deltas=[1], pasta_heads="heads.json"))
    assert [c.method for c in with_pasta] == ["none", "guide", "emphatic", "pasta"]
    with pytest.raises(ExperimentError, match="unknown condition.*'loud'"):
        resolve_conditions(ExperimentConfig(out="x", conditions=["none", "loud"]))
    with pytest.raises(ExperimentError, match="pasta"):
        resolve_conditions(ExperimentConfig(out="x", conditions=["pasta"]))
    with pytest.raises(ExperimentError, match="delta 'abc' must be a number"):
        resolve_conditions(ExperimentConfig(out="x", deltas=[1, "abc"]))
    with pytest.raises(ExperimentError, match="finite"):
        resolve_conditions(ExperimentConfig(out="x", deltas=[float("inf")]))


def test_prompts_tag_the_focus_and_escape_the_passage(tokenizer):
    study = get_study("summarize")
    config = SummarizeConfig(out="x")
    item = study.items([{"id": "t", "text": "A passage with a literal <!-> tag <-!> inside."}], config, tokenizer)[0]

    guide = _prepare(study, item, Condition("guide", 2.0), tokenizer, True, config)
    (span,) = guide.spans
    assert (span.kind, span.delta, span.text) == ("guide", 2.0, "Summarize in French.")
    assert "<!-> tag <-!>" in guide.text  # the passage's tags stay literal text
    assert "Summarize in French" in tokenizer.decode(guide.input_ids[span.start : span.end])

    emphatic = _prepare(study, item, Condition("emphatic"), tokenizer, True, config)
    assert emphatic.spans[0].text == "IMPORTANT: SUMMARIZE IN FRENCH." and emphatic.spans[0].kind == "influence"
    none = _prepare(study, item, Condition("none"), tokenizer, True, config)
    assert none.spans[0].delta == 0 and none.input_ids == guide.input_ids

    messages = build_messages(study, item, Condition("none"), config)
    assert messages[-1]["content"].startswith("<?->Summarize in French.<-?>\n\n")


def test_json_emphatic_prompt_keeps_the_key_names(tokenizer):
    study = get_study("json")
    config = JSONConfig(out="x", limit=1)
    item = study.items(study.load_data(config), config, tokenizer)[0]
    content = build_messages(study, item, Condition("emphatic"), config)[-1]["content"]
    assert ("<?->IMPORTANT: ANSWER WITH ONLY A JSON OBJECT THAT HAS EXACTLY THESE KEYS: "
            "name, age, occupation, city, email.<-?>") in content
    assert item.data["text"] in content


def test_needle_contexts_have_the_asked_lengths_and_depths(tokenizer):
    study = get_study("needle")
    config = NeedleConfig(out="x", limit=2, context_lengths=[128, 512], depths=[0, 50, 100])
    items = study.items(study.load_data(config), config, tokenizer)
    assert len(items) == 2 * 2 * 3
    for item in items:
        length, depth = item.groups["length"], item.groups["depth"]
        assert abs(item.data["context_tokens"] - length) <= 0.15 * length
        if depth == 0:
            assert item.data["before"] == ""
        if depth == 100:
            assert item.data["after"] == ""
        prompt = _prepare(study, item, Condition("guide", 1.0), tokenizer, True, config)
        (span,) = prompt.spans
        assert item.data["needle"].split()[-1] in tokenizer.decode(prompt.input_ids[span.start : span.end])
    middle = [i for i in items if i.groups["depth"] == 50 and i.groups["length"] == 512][0]
    before = len(tokenizer(middle.data["before"])["input_ids"])
    assert 0.35 < before / middle.data["context_tokens"] < 0.65


def test_batches_respect_the_row_and_token_limits(tokenizer):
    study = get_study("needle")
    config = NeedleConfig(out="x", limit=1, context_lengths=[64, 256], depths=[0, 100])
    items = study.items(study.load_data(config), config, tokenizer)
    jobs = [_Job(Condition("none"), i, 0, _prepare(study, i, Condition("none"), tokenizer, True, config))
            for i in items]
    batches = _batches(jobs, batch_size=3, max_tokens=700)
    assert sorted(j.key for b in batches for j in b) == sorted(j.key for j in jobs)
    for b in batches:
        width = max(len(j.prompt.input_ids) for j in b)
        assert len(b) <= 3 and (len(b) == 1 or width * len(b) <= 700)
    assert [len(j.prompt.input_ids) for j in batches[0]][0] == max(len(j.prompt.input_ids) for j in jobs)


# ----------------------------------------------------------------------------- bad input, before any model loads


@pytest.fixture
def no_model_load(monkeypatch):
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(attnlens.runtime.models, "load_model", refuse)
    return calls


def test_bad_input_fails_before_the_model_loads(tmp_path, no_model_load, monkeypatch):
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    cases = [
        ("summarize", SummarizeConfig(out=a_file), "is a file"),
        ("summarize", SummarizeConfig(out=a_file / "sub"), "is a file"),
        ("json", JSONConfig(out=tmp_path / "j", conditions=["shout"]), "unknown condition"),
        ("json", JSONConfig(out=tmp_path / "j", deltas=["two"]), "must be a number"),
        ("json", JSONConfig(out=tmp_path / "j", conditions=["pasta"]), "head configuration"),
        ("json", JSONConfig(out=tmp_path / "j", pasta_heads=str(tmp_path / "missing.json")), "not a file"),
        ("needle", NeedleConfig(out=tmp_path / "n", depths=[50, 150]), "between 0 and 100"),
        ("needle", NeedleConfig(out=tmp_path / "n", context_lengths=[0]), "context length"),
        ("json", JSONConfig(out=tmp_path / "j", dataset="openwebtext"), "local .jsonl"),
        ("summarize", SummarizeConfig(out=tmp_path / "s", num_generations=3, do_sample=False), "greedy"),
        ("summarize", SummarizeConfig(out=tmp_path / "s", layers="middle"), "layers"),
    ]
    for study, config, message in cases:
        with pytest.raises(ExperimentError, match=message):
            run_experiment(study, config)
    if importlib.util.find_spec("bert_score") is None:
        with pytest.raises(AttnlensError, match="pip install bert-score"):
            run_experiment("summarize", SummarizeConfig(out=tmp_path / "s", bertscore=True))
    with pytest.raises(ExperimentError, match="unknown study 'poetry'"):
        run_experiment("poetry", SummarizeConfig(out=tmp_path / "p"))
    # an unreachable hub: a clear error, fast (no retries)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(sources, "_reachable", lambda url, timeout=5.0: False)
    with pytest.raises(ExperimentError, match="'openwebtext'.*cannot be reached"):
        run_experiment("summarize", SummarizeConfig(out=tmp_path / "s", dataset="openwebtext"))
    with pytest.raises(ExperimentError, match="'blbooks'.*cannot be reached"):
        run_experiment("needle", NeedleConfig(out=tmp_path / "n", dataset="blbooks"))
    assert no_model_load == []
    assert not (tmp_path / "s").exists()


def test_offline_mode_dataset_error(tmp_path, no_model_load, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(ExperimentError, match="could not load the data set 'no-such-owner/no-such-set'"):
        run_experiment("summarize", SummarizeConfig(out=tmp_path / "s", dataset="no-such-owner/no-such-set"))
    assert no_model_load == []


def test_cli_bad_input(tmp_path, capsys, no_model_load):
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    assert cli.main(["experiment", "json", "--out", str(a_file)]) == 2
    assert "is a file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli.main(["experiment", "summarize", "--out", str(tmp_path / "o"), "--delta", "1", "lots"])
    assert exc.value.code == 2
    assert "expected a number, got 'lots'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["experiment", "haiku", "--out", str(tmp_path / "o")])
    assert "invalid choice: 'haiku'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["experiment", "json", "--out", str(tmp_path / "o"), "--conditions", "quiet"])
    assert "invalid choice: 'quiet'" in capsys.readouterr().err
    assert no_model_load == []


def test_cli_accepts_the_seed_spellings(tmp_path):
    parser = cli.build_parser()
    args = parser.parse_args(["experiment", "summarize", "--out", str(tmp_path), "--max_new_tokens", "7",
                              "--model_name", "some/model", "--num_generations", "3", "--delta", "0", "1.5",
                              "--layers", "0", "2"])
    config = cli.experiment._experiment_config(args)
    assert isinstance(config, SummarizeConfig)
    assert (config.max_new_tokens, config.model, config.num_generations) == (7, "some/model", 3)
    assert list(config.deltas) == [0.0, 1.5] and config.layers == "0 2" and config.sampling
    needle = cli.experiment._experiment_config(parser.parse_args(
        ["experiment", "needle", "--out", str(tmp_path), "--context-lengths", "512", "1024", "--depths", "0", "50"]))
    assert list(needle.context_lengths) == [512, 1024] and list(needle.depths) == [0, 50]
    assert needle.max_new_tokens == NeedleConfig.max_new_tokens


# ----------------------------------------------------------------------------- runs on the tiny model


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _csv(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_summarize_run_is_resumable(tiny, tmp_path):
    out = tmp_path / "fr"
    config = SummarizeConfig(out=out, deltas=[0, 1], limit=2, max_new_tokens=3, conditions=["guide", "emphatic"])
    first = run_experiment("summarize", config, model=tiny)
    assert (first.generated, first.skipped) == (6, 0)
    rows = _rows(out / "rows.jsonl")
    assert {(r["condition"], r["item"]) for r in rows} == {
        (c, i) for c in ("none", "guide@1", "emphatic") for i in ("p001", "p002")}
    for r in rows:
        assert set(r["metrics"]) == {"french", "similarity"} and r["details"]["language"] in (None, "en", "fr", "es",
                                                                                               "de", "it", "pt", "nl")
        assert isinstance(r["output"], str) and r["influence"] > 0
    by = {(r["condition"], r["item"]): r for r in rows}
    # GUIDE raises the instruction's influence on the last prompt token
    assert by[("guide@1", "p001")]["influence"] > by[("none", "p001")]["influence"]

    again = run_experiment("summarize", config, model=tiny)
    assert (again.generated, again.skipped) == (0, 6)
    assert _rows(out / "rows.jsonl") == rows

    # an interrupted write: the damaged line is dropped and its generation redone
    with (out / "rows.jsonl").open("a") as f:
        f.write('{"condition": "none", "item": "p003", "gen')
    more = run_experiment("summarize", SummarizeConfig(**{**config.__dict__, "limit": 3}), model=tiny)
    assert (more.generated, more.skipped) == (3, 6)
    final = read_rows(out / "rows.jsonl")
    assert len(final) == 9 and len({(r["condition"], r["item"], r["generation"]) for r in final}) == 9

    summary = _csv(out / "summary.csv")
    assert [s["condition"] for s in summary] == ["none", "guide@1", "emphatic"]
    for s in summary:
        assert s["items"] == "3"
        assert float(s["influence_low"]) <= float(s["influence"]) <= float(s["influence_high"])
    html = (out / "accuracy_vs_delta.html").read_text()
    assert "Plotly.newPlot" in html and len(html) > 1_000_000  # plotly.js inlined: the file opens offline alone
    assert not (out / "plotly.min.js").exists()
    for name in ("accuracy_vs_delta", "influence_vs_accuracy"):
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert b"<svg" in (out / f"{name}.svg").read_bytes()[:2000]
    run = json.loads((out / "run.json").read_text())
    assert run["provenance"]["packages"]["transformer-lens"] and run["provenance"]["attnlens"]["version"]

    with pytest.raises(ExperimentError, match="max_new_tokens=3 .now 4"):
        run_experiment("summarize", SummarizeConfig(**{**config.__dict__, "max_new_tokens": 4}), model=tiny)
    fresh = run_experiment("summarize", SummarizeConfig(**{**config.__dict__, "max_new_tokens": 4, "fresh": True}),
                           model=tiny)
    assert (fresh.generated, fresh.skipped) == (6, 0)


def test_batched_rows_match_single_rows(tiny, tmp_path):
    base = dict(deltas=[2], conditions=["guide"], limit=4, max_new_tokens=4, influence=False, plots=False)
    batched = run_experiment("json", JSONConfig(out=tmp_path / "b", batch_size=4, **base), model=tiny)
    single = run_experiment("json", JSONConfig(out=tmp_path / "s", batch_size=1, **base), model=tiny)
    assert batched.generated == single.generated == 4
    key = lambda r: r["item"]  # noqa: E731
    b = sorted(_rows(tmp_path / "b" / "rows.jsonl"), key=key)
    s = sorted(_rows(tmp_path / "s" / "rows.jsonl"), key=key)
    assert len({r["prompt_tokens"] for r in b}) > 1  # the batch really was padded
    assert [r["output"] for r in b] == [r["output"] for r in s]


def test_sampled_generations_are_seeded(tiny, tmp_path):
    def run(out, seed):
        config = JSONConfig(out=out, deltas=[0], limit=2, max_new_tokens=6, num_generations=3, seed=seed,
                            influence=False, plots=False)
        run_experiment("json", config, model=tiny)
        return sorted((r["item"], r["generation"], r["output"]) for r in _rows(Path(out) / "rows.jsonl"))

    a, b, c = run(tmp_path / "a", 1), run(tmp_path / "b", 1), run(tmp_path / "c", 2)
    assert len(a) == 2 * 2 * 3  # none and emphatic, 2 items, 3 generations
    assert a == b and a != c
    outputs_item = [o for i, g, o in a if i == a[0][0]]
    assert len(set(outputs_item)) > 1  # sampling: generations differ


def test_needle_and_json_runs_write_their_tables(tiny, tmp_path):
    needle = run_experiment("needle", NeedleConfig(out=tmp_path / "n", deltas=[0, 2], limit=1, max_new_tokens=3,
                                                   context_lengths=[64, 128], depths=[0, 50, 100]), model=tiny)
    assert needle.generated == 3 * 6  # none, guide@2, emphatic x 2 lengths x 3 depths
    grid = _csv(tmp_path / "n" / "needle_grid.csv")
    assert len(grid) == 3 * 6 and {g["depth"] for g in grid} == {"0", "50", "100"}
    assert all(0 <= float(g["accuracy"]) <= 1 and float(g["influence"]) > 0 for g in grid)
    rows = _rows(tmp_path / "n" / "rows.jsonl")
    assert {(r["length"], r["depth"]) for r in rows} == {(L, d) for L in (64, 128) for d in (0, 50, 100)}
    for name in ("needle_heatmap.html", "needle_influence.html", "accuracy_vs_delta.html"):
        assert (tmp_path / "n" / name).stat().st_size > 1000

    js = run_experiment("json", JSONConfig(out=tmp_path / "j", deltas=[1], limit=5, max_new_tokens=3), model=tiny)
    summary = _csv(tmp_path / "j" / "summary.csv")
    assert [s["condition"] for s in summary] == ["none", "guide@1", "emphatic"]
    assert {"valid_json", "exact_format_low", "key_jaccard_high", "value_accuracy"} <= set(summary[0])
    assert {r["schema"] for r in _rows(tmp_path / "j" / "rows.jsonl")} == {"person", "product", "book", "event",
                                                                           "flight"}
    assert js.generated == 15


def test_pasta_condition_steers_the_chosen_heads(tiny, tmp_path):
    heads = tmp_path / "heads.json"
    heads.write_text(json.dumps({"0": [0, 1], "2": [3]}))
    run_experiment("summarize", SummarizeConfig(out=tmp_path / "p", conditions=["none", "pasta"], limit=2,
                                                max_new_tokens=2, pasta_heads=str(heads), plots=False), model=tiny)
    rows = {(r["condition"], r["item"]): r for r in _rows(tmp_path / "p" / "rows.jsonl")}
    assert {c for c, _ in rows} == {"none", "pasta"}
    for item in ("p001", "p002"):
        assert rows[("pasta", item)]["influence"] != pytest.approx(rows[("none", item)]["influence"])


# ----------------------------------------------------------------------------- the embedded model, through the CLI


@pytest.mark.embedded
def test_cli_run_on_the_embedded_model(embedded, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(attnlens.runtime.models, "load_model", lambda name=None, **kw: embedded)
    out = tmp_path / "smoke"
    argv = ["experiment", "summarize", "--limit", "1", "--max-new-tokens", "6", "--delta", "0", "2",
            "--conditions", "none", "guide", "--out", str(out)]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "guide@2" in printed and "french" in printed and str(out / "summary.csv") in printed
    assert "note: n=1 item (< 10): the intervals mean little" in printed  # --limit 1: the command says so
    rows = _rows(out / "rows.jsonl")
    assert len(rows) == 2 and all(r["new_tokens"] >= 1 and r["output"] for r in rows)
    by = {r["condition"]: r for r in rows}
    assert by["guide@2"]["influence"] > by["none"]["influence"]
    assert cli.main(argv) == 0
    assert "0 new generation(s), 2 already done" in capsys.readouterr().out
