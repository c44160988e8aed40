"""Summaries: per-condition means with bootstrap intervals over items, and the run's result."""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


from .config import Condition, ExperimentConfig
from .metrics import bootstrap_ci
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

    def as_row(self, metrics: Sequence[str]) -> dict[str, Any]:
        row: dict[str, Any] = {
            "condition": self.condition, "method": self.method, "delta": self.delta,
            "items": self.items, "generations": self.generations,
        }
        for m in metrics:
            e = self.estimates.get(m)
            row[m] = _round(e.mean if e else float("nan"))
            row[f"{m}_low"] = _round(e.low if e else float("nan"))
            row[f"{m}_high"] = _round(e.high if e else float("nan"))
        return row


@dataclass
class ExperimentResult:
    """What a run produced."""

    study: str
    out: Path
    rows_path: Path
    summary_path: Path
    plots: list[Path]
    summary: list[ConditionSummary]
    metrics: tuple[str, ...]
    generated: int
    skipped: int

    def table(self) -> list[dict[str, Any]]:
        return [s.as_row(self.metrics) for s in self.summary]


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


def summarize_rows(rows: Sequence[Mapping[str, Any]], conditions: Sequence[Condition], metrics: Sequence[str],
                   config: ExperimentConfig) -> list[ConditionSummary]:
    """Per-condition means with bootstrap intervals over items."""
    out = []
    for condition in conditions:
        mine = [r for r in rows if r["condition"] == condition.name]
        estimates = {}
        for metric in metrics:
            values = item_means(mine, metric).get((), [])
            estimates[metric] = bootstrap_ci(values, confidence=config.confidence, resamples=config.bootstrap,
                                             seed=config.seed)
        out.append(ConditionSummary(condition.name, condition.method, condition.delta,
                                    len({r["item"] for r in mine}), len(mine), estimates))
    return out


def write_summary(path: Path, summary: Sequence[ConditionSummary], metrics: Sequence[str]) -> None:
    rows = [s.as_row(metrics) for s in summary]
    fields = ["condition", "method", "delta", "items", "generations"]
    for m in metrics:
        fields += [m, f"{m}_low", f"{m}_high"]
    write_csv(path, rows, fields)
