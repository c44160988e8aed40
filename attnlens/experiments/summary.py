"""Summaries: per-condition means with bootstrap intervals over items, and the run's result."""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from ..core.records import Showable
from .config import Condition, ExperimentConfig
from .metrics import MIN_RELIABLE_N, bootstrap_ci
from .store import write_csv

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class ConditionSummary:
    """Per-condition means with bootstrap intervals (over items; generations are averaged first)."""

    condition: str
    method: str
    delta: float
    items: int
    generations: int
    estimates: Mapping[str, Any]  # metric -> metrics.Estimate
    #: metric -> metrics.Estimate of the mean paired difference from ``none`` over the items both ran
    differences: Mapping[str, Any] = field(default_factory=dict)
    #: how many independent sources the items come from, when the bootstrap resampled them in
    #: clusters (the needle study: needles, each placed in many cells); None: every item is its own
    clusters: int | None = None

    @property
    def units(self) -> int:
        """How many independent units the intervals rest on (items, or clusters of items)."""
        return self.items if self.clusters is None else self.clusters

    @property
    def note(self) -> str:
        """A word on the intervals when they rest on too few units to mean much ('' otherwise)."""
        if self.units >= MIN_RELIABLE_N:
            return ""
        unit = "item" if self.clusters is None else "source"
        return (f"n={self.units} {unit}{'s' if self.units != 1 else ''} (< {MIN_RELIABLE_N}): "
                "the intervals mean little")

    def as_row(self, metrics: Sequence[str]) -> dict[str, Any]:
        row: dict[str, Any] = {
            "condition": self.condition, "method": self.method, "delta": self.delta,
            "items": self.items, "clusters": self.clusters, "generations": self.generations,
        }
        for m in metrics:
            e = self.estimates.get(m)
            row[m] = _round(e.mean if e else float("nan"))
            row[f"{m}_low"] = _round(e.low if e else float("nan"))
            row[f"{m}_high"] = _round(e.high if e else float("nan"))
        for m in metrics:
            d = self.differences.get(m)
            row[f"{m}_diff"] = _round(d.mean if d else float("nan"))
            row[f"{m}_diff_low"] = _round(d.low if d else float("nan"))
            row[f"{m}_diff_high"] = _round(d.high if d else float("nan"))
        row["note"] = self.note
        return row


@dataclass
class ExperimentResult(Showable):
    """What a run produced. ``show()`` / ``view()``: the summary as a table (each metric's mean with its
    interval and the paired difference from the unsteered condition, n items per row); ``to_json()``."""

    study: str
    out: Path
    rows_path: Path
    summary_path: Path
    plots: list[Path]
    summary: list[ConditionSummary]
    metrics: tuple[str, ...]
    generated: int
    skipped: int
    #: words on the results a reader must see (intervals that rest on too few items)
    notes: list[str] = field(default_factory=list)

    def table(self) -> list[dict[str, Any]]:
        return [s.as_row(self.metrics) for s in self.summary]

    def to_dict(self) -> dict[str, Any]:
        return {"study": self.study, "out": str(self.out), "rows": str(self.rows_path),
                "summary_file": str(self.summary_path), "plots": [str(p) for p in self.plots],
                "metrics": list(self.metrics), "generated": self.generated, "skipped": self.skipped,
                "summary": self.table()}

    def view(self, **options: Any) -> Any:
        from ..viz import table_view

        rows = []
        for s in self.summary:
            row: dict[str, Any] = {"condition": s.condition, "method": s.method, "delta": s.delta, "n items": s.items}
            for m in self.metrics:
                e, d = s.estimates.get(m), s.differences.get(m)
                row[m] = (e.mean, e.low, e.high) if e else "-"
                row[f"{m} - none"] = (d.mean, d.low, d.high) if d else "-"
            rows.append(row)
        return table_view(rows, f"{self.study}: summary", caption=(
            "mean [95% bootstrap interval] over n items (generations averaged first); '- none': the paired "
            f"difference from the unsteered condition on the same items. Files: {self.out}"), **options)


def _round(x: float) -> float:
    return x if math.isnan(x) else round(x, 4)



# ----------------------------------------------------------------------------- summaries


def row_metric(row: Mapping[str, Any], metric: str) -> float | None:
    if metric == "influence":
        value = row.get("influence")
    else:
        value = row.get("metrics", {}).get(metric)
    return None if value is None else float(value)


def item_means(rows: Iterable[Mapping[str, Any]], metric: str, by: Sequence[str] = ()) -> dict[tuple, list[float]]:
    """Per group (the ``by`` fields), the metric's mean per item (generations averaged)."""
    per_item: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        value = row_metric(row, metric)
        if value is None or math.isnan(value):
            continue
        per_item[tuple(row.get(k) for k in by)][row["item"]].append(value)
    return {g: [sum(v) / len(v) for v in items.values()] for g, items in per_item.items()}


def per_item(rows: Iterable[Mapping[str, Any]], metric: str) -> dict[str, float]:
    """The metric's mean per item id (generations averaged)."""
    values: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        value = row_metric(row, metric)
        if value is not None and not math.isnan(value):
            values[row["item"]].append(value)
    return {item: sum(v) / len(v) for item, v in values.items()}


def item_weights(rows: Iterable[Mapping[str, Any]], metric: str) -> dict[str, float] | None:
    """Each item's weight for ``metric`` when its rows give one (``details["weights"][metric]``), else None.

    A metric that is a share of smaller units (the rules of a prompt) gives each item the number of
    units it holds: the weighted mean over items is then the share over all units (IFEval's
    instruction-level accuracy), not the mean of per-item shares."""
    weights: dict[str, float] = {}
    for row in rows:
        weight = ((row.get("details") or {}).get("weights") or {}).get(metric)
        if weight is not None:
            weights[row["item"]] = float(weight)
    return weights or None


def item_clusters(rows: Iterable[Mapping[str, Any]], cluster: str | None) -> dict[str, Any] | None:
    """Each item's source (the rows' ``cluster`` field), or None when items are not clustered."""
    if cluster is None:
        return None
    return {row["item"]: row.get(cluster, row["item"]) for row in rows}


def estimate(values: Mapping[str, float], config: ExperimentConfig, clusters: Mapping[str, Any] | None = None,
             weights: Mapping[str, float] | None = None) -> Any:
    """The mean of per-item ``values`` with a bootstrap interval; resampled by source when ``clusters`` maps
    each item to one; weighted by ``weights`` (per item) when given."""
    items = list(values)
    labels = None if clusters is None else [clusters.get(i, i) for i in items]
    w = None if weights is None else [weights.get(i, 1.0) for i in items]
    return bootstrap_ci([values[i] for i in items], confidence=config.confidence, resamples=config.bootstrap,
                        seed=config.seed, clusters=labels, weights=w)


def paired_difference(rows: Sequence[Mapping[str, Any]], baseline: Sequence[Mapping[str, Any]], metric: str,
                      config: ExperimentConfig, clusters: Mapping[str, Any] | None = None) -> Any:
    """The mean of ``rows`` minus ``baseline`` over the items both have, with a paired bootstrap interval
    (by source when ``clusters`` maps each item to one; weighted when the rows weight the metric)."""
    mine, base = per_item(rows, metric), per_item(baseline, metric)
    return estimate({i: mine[i] - base[i] for i in mine if i in base}, config, clusters,
                    item_weights(rows, metric))


def summarize_rows(rows: Sequence[Mapping[str, Any]], conditions: Sequence[Condition], metrics: Sequence[str],
                   config: ExperimentConfig, *, cluster: str | None = None) -> list[ConditionSummary]:
    """Per-condition means with bootstrap intervals over items, and each steered condition's paired
    difference from ``none`` (when ``none`` ran).

    ``cluster`` names a row field that items share a source by (the needle study's ``needle``):
    the bootstrap then resamples sources, not items. A summary whose intervals rest on fewer than
    :data:`~attnlens.experiments.metrics.MIN_RELIABLE_N` units logs a warning and carries a note.
    """
    out = []
    baseline = [r for r in rows if r["condition"] == "none"]
    clusters = item_clusters(rows, cluster)
    for condition in conditions:
        mine = [r for r in rows if r["condition"] == condition.name]
        estimates, differences = {}, {}
        for metric in metrics:
            estimates[metric] = estimate(per_item(mine, metric), config, clusters, item_weights(mine, metric))
            if baseline and condition.name != "none":
                differences[metric] = paired_difference(mine, baseline, metric, config, clusters)
        items = {r["item"] for r in mine}
        sources = None if clusters is None else len({clusters[i] for i in items})
        out.append(ConditionSummary(condition.name, condition.method, condition.delta,
                                    len(items), len(mine), estimates, differences, sources))
    few = [s for s in out if s.note and s.items]
    if few:
        logger.warning("%s: %s", ", ".join(s.condition for s in few), few[0].note)
    return out


def small_n_notes(summary: Sequence[ConditionSummary]) -> list[str]:
    """One line per distinct note of ``summary`` (intervals that rest on too few units)."""
    notes = dict.fromkeys(s.note for s in summary if s.note and s.items)
    return [f"note: {n}; run more items (drop --limit) before reading them" for n in notes]


def write_summary(path: Path, summary: Sequence[ConditionSummary], metrics: Sequence[str]) -> None:
    rows = [s.as_row(metrics) for s in summary]
    fields = ["condition", "method", "delta", "items", "clusters", "generations"]
    for m in metrics:
        fields += [m, f"{m}_low", f"{m}_high"]
    for m in metrics:
        fields += [f"{m}_diff", f"{m}_diff_low", f"{m}_diff_high"]
    fields.append("note")
    write_csv(path, rows, fields)


def group_table(rows: Sequence[Mapping[str, Any]], by: str, metrics: Sequence[str], path: Path,
                config: ExperimentConfig) -> Path:
    """Per (condition, ``by`` value): n and each metric's mean with a bootstrap interval, written as CSV."""
    table = []
    conditions = list(dict.fromkeys(r["condition"] for r in rows))
    for condition in conditions:
        mine = [r for r in rows if r["condition"] == condition]
        for group in sorted({str(r.get(by)) for r in mine}):
            sub = [r for r in mine if str(r.get(by)) == group]
            line: dict[str, Any] = {"condition": condition, by: group, "items": len({r["item"] for r in sub})}
            for m in metrics:
                e = bootstrap_ci(list(per_item(sub, m).values()), confidence=config.confidence,
                                 resamples=config.bootstrap, seed=config.seed)
                line.update({m: _round(e.mean), f"{m}_low": _round(e.low), f"{m}_high": _round(e.high)})
            table.append(line)
    fields = ["condition", by, "items"] + [f"{m}{s}" for m in metrics for s in ("", "_low", "_high")]
    write_csv(path, table, fields)
    return path
