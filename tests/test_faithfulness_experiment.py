"""The faithfulness experiment: runs, resumes after an interruption, refuses changed settings, gives intervals."""

from __future__ import annotations

import json
import math

import pytest

from attnlens.attribution import faithfulness as fm
from attnlens.core.errors import ExperimentError
from attnlens.experiments import CONFIGS, STUDY_NAMES, run_experiment
from attnlens.experiments.faithfulness import FaithfulnessConfig, pairs, shipped_prompts

PROMPTS = ["The cat sat on the mat and looked at the", "One two three four five six",
           "Paris is the capital of France and Rome is the capital of"]


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(PROMPTS[:2]) + "\n\n" + PROMPTS[2] + "\n")
    return path


def config(tmp_path, data, **kwargs):
    base = dict(out=tmp_path / "out", dataset=str(data), methods=["attention", "occlusion"], seeds=2, points=3,
                bootstrap=200)
    return FaithfulnessConfig(**{**base, **kwargs})


def test_registered_and_shipped_prompts():
    assert "faithfulness" in STUDY_NAMES and CONFIGS["faithfulness"] is FaithfulnessConfig
    items = shipped_prompts()
    assert len(items) >= 100 and len({i["id"] for i in items}) == len(items)
    # the first ones come from different passages; each is a sentence without its last word
    assert len({i["id"].split(".")[0] for i in items[:10]}) == 10
    from attnlens.experiments.sources import data_file, read_records, sentences

    passages = {r["id"]: sentences(r["text"]) for r in read_records(data_file("summarize_passages.jsonl"))}
    for item in items[:20]:
        passage, s = item["id"].split(".s")
        full = passages[passage][int(s) - 1]
        assert full.startswith(item["text"]) and len(full.split()) == len(item["text"].split()) + 1



def test_shipped_prompts_come_from_the_first_61_passages(tmp_path):
    """The passages file grew for the summarize study; the faithfulness prompts (and so ``--limit 100``, the
    published tables' prompts) still come only from its first 61 passages, p001-p061."""
    from attnlens.experiments.faithfulness import FAITHFULNESS_PASSAGES, FaithfulnessStudy
    from attnlens.experiments.sources import data_file, read_records

    assert FAITHFULNESS_PASSAGES == 61
    records = read_records(data_file("summarize_passages.jsonl"))
    assert len(records) > FAITHFULNESS_PASSAGES  # so the cap matters
    first = {r["id"] for r in records[:FAITHFULNESS_PASSAGES]}
    assert first == {f"p{n:03d}" for n in range(1, 62)}
    data = FaithfulnessStudy().load_data(FaithfulnessConfig(out=tmp_path / "out", limit=100))
    assert len(data) == 100
    used = {item["id"].split(".")[0] for item in data}
    assert used == first  # every one of the 61 passages gives the first sentence, and no later passage is used
    assert {item["id"].split(".")[0] for item in shipped_prompts()} <= first

def test_runs_resumes_without_recomputing_and_summarizes(tiny, tmp_path, data, monkeypatch):
    calls = []
    real = fm.evaluate_prompt

    def spy(model, prompt, *args, **kwargs):
        calls.append(prompt)
        if stop_after is not None and len(calls) > stop_after:
            raise KeyboardInterrupt  # the run is interrupted while the second prompt is computed
        return real(model, prompt, *args, **kwargs)

    monkeypatch.setattr(fm, "evaluate_prompt", spy)
    stop_after = 1
    with pytest.raises(KeyboardInterrupt):
        run_experiment("faithfulness", config(tmp_path, data), model=tiny)
    rows_path = tmp_path / "out" / "rows.jsonl"
    first = rows_path.read_text()
    rows = [json.loads(line) for line in first.splitlines()]
    assert [(r["condition"], r["item"]) for r in rows] == [("attention", "line1"), ("occlusion", "line1"),
                                                            ("random", "line1")]
    with rows_path.open("a") as f:  # a line cut off by a crash is removed and its prompt runs again
        f.write('{"condition": "attention", "item": "line2", "gen')

    calls.clear()
    stop_after = None
    result = run_experiment("faithfulness", config(tmp_path, data), model=tiny)
    assert calls == PROMPTS[1:]  # only the prompts not done
    assert (result.generated, result.skipped) == (2, 1)
    text = rows_path.read_text()
    assert text.startswith(first) and len(text.splitlines()) == 9

    calls.clear()
    again = run_experiment("faithfulness", config(tmp_path, data), model=None)  # nothing to do: no model loads
    assert calls == [] and (again.generated, again.skipped) == (0, 3)

    rows = [json.loads(line) for line in text.splitlines()]
    table = {r["condition"]: r for r in result.table()}
    assert list(table) == ["attention", "occlusion", "random"]
    for name, row in table.items():
        assert row["items"] == 3
        for metric in fm.METRICS:
            values = [r["metrics"][metric] for r in rows if r["condition"] == name]
            assert row[metric] == pytest.approx(sum(values) / 3, abs=1e-4)
            assert row[f"{metric}_low"] <= row[metric] <= row[f"{metric}_high"]
            assert row[f"{metric}_low"] < row[f"{metric}_high"]  # three different prompts: an interval, not a point
            diff = row[f"{metric}_diff"]
            if name == "random":
                assert math.isnan(diff)
            else:
                paired = [r["metrics"][metric] - q["metrics"][metric] for r in rows if r["condition"] == name
                          for q in rows if q["condition"] == "random" and q["item"] == r["item"]]
                assert diff == pytest.approx(sum(paired) / 3, abs=1e-4)
                assert row[f"{metric}_diff_low"] <= diff <= row[f"{metric}_diff_high"]
    # the same random orders for every method of a prompt, and a seed per prompt that does not depend on the order
    assert len({(r["item"], r["seed"]) for r in rows}) == 3
    pair = pairs(rows, ["attention", "occlusion"], list(fm.METRICS), config(tmp_path, data))
    assert pair[0]["items"] == 3 and pair[0]["deletion_area"] == pytest.approx(
        table["attention"]["deletion_area"] - table["occlusion"]["deletion_area"], abs=1e-3)
    assert (tmp_path / "out" / "summary.csv").read_text().startswith("condition,")
    assert (tmp_path / "out" / "pairs.csv").read_text().startswith("first,second,items")


def test_refuses_changed_settings_and_bad_inputs(tiny, tmp_path, data):
    run_experiment("faithfulness", config(tmp_path, data, methods=["attention"]), model=tiny)
    for change, name in [({"seeds": 3}, "seeds"), ({"erase": "drop"}, "erase"), ({"points": 4}, "points"),
                         ({"methods": ["attention", "rollout"]}, "methods"), ({"target": " the"}, "target")]:
        with pytest.raises(ExperimentError, match=f"other settings: {name}="):
            run_experiment("faithfulness", config(tmp_path, data, **{"methods": ["attention"], **change}), model=tiny)
    data.write_text("A different first prompt here\n" + "\n".join(PROMPTS[1:]) + "\n")
    with pytest.raises(ExperimentError, match="other data: item line1"):
        run_experiment("faithfulness", config(tmp_path, data, methods=["attention"]), model=tiny)
    fresh = run_experiment("faithfulness", config(tmp_path, data, methods=["attention"], seeds=3, fresh=True),
                           model=tiny)
    assert (fresh.generated, fresh.skipped) == (3, 0)

    other = tmp_path / "other"
    for bad, match in [({"methods": ["nope"]}, "methods: .*nope"), ({"methods": []}, "non-empty"),
                       ({"methods": ["attention", "attention"]}, "once"), ({"erase": "blank"}, "erase"),
                       ({"seeds": 0}, "seeds"), ({"points": 1}, "points"), ({"fractions": [0.0]}, "fractions"),
                       ({"dataset": str(tmp_path / "missing.txt")}, "missing.txt.*local"),
                       ({"dataset": "openwebtext"}, "local"), ({"limit": 0}, "limit")]:
        with pytest.raises(ExperimentError, match=match):
            run_experiment("faithfulness", config(tmp_path, data, out=other, **bad), model=None)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(ExperimentError, match="no prompts"):
        run_experiment("faithfulness", config(tmp_path, empty, out=other), model=None)


def test_cli(tiny, tmp_path, data, monkeypatch, capsys):
    from attnlens import cli
    from attnlens.runtime import models

    monkeypatch.setattr(models, "load_model", lambda *a, **k: tiny)
    argv = ["experiment", "faithfulness", "--out", str(tmp_path / "cli"), "--dataset", str(data), "--methods",
            "attention", "--seeds", "2", "--points", "3", "--limit", "2", "--bootstrap", "100"]
    assert cli.main(argv + ["--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["study"] == "faithfulness" and (out["generated"], out["skipped"]) == (2, 0)
    assert [r["condition"] for r in out["summary"]] == ["attention", "random"]
    assert all(r["items"] == 2 for r in out["summary"])
    assert cli.main(argv) == 0  # resumed: nothing to run; the table says so
    text = capsys.readouterr().out
    assert "0 new prompt(s), 2 already done" in text and "paired difference from random orders" in text
    assert cli.main(argv[:-6] + ["--seeds", "3", "--points", "3", "--limit", "2"]) == 2
    assert "other settings: seeds=2 (now 3)" in capsys.readouterr().err
