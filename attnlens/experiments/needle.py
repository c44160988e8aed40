"""Needle in a haystack: a fact placed at each depth of contexts of each length, then a question.

The focus each condition emphasises is the needle itself. Metric per output:
``accuracy`` (1 when an accepted answer appears in it). The run also writes
``needle_grid.csv`` (accuracy and the needle's influence per condition, length
and depth), a heat map of accuracy by length and depth, and the needle's
influence by depth.
"""

from __future__ import annotations

import logging
import math
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.validate import is_int
from .metrics import bootstrap_ci, contains_answer
from ..core.errors import ExperimentError
from .config import ExperimentConfig
from .store import write_csv
from .study import Item, Score, Segments, Study
from .summary import item_means
from .sources import data_file, hf_texts, is_local, read_jsonl, read_text, sentences

logger = logging.getLogger(__name__)

HAYSTACK_FILE = "haystack.txt"
NEEDLES_FILE = "needles.jsonl"
#: tokens kept free for a chat template around the prompt when a context is cut to the window
WINDOW_MARGIN = 64
PREAMBLE = "Read the text below, then answer the question that follows it.\n\n"


@dataclass
class NeedleConfig(ExperimentConfig):
    """:class:`ExperimentConfig` plus context lengths (tokens) and needle depths (percent)."""

    context_lengths: Sequence[int] = (512, 1024, 2048)
    depths: Sequence[float] = (0, 25, 50, 75, 100)
    max_new_tokens: int = 32


@dataclass(frozen=True)
class NeedleData:
    haystack: str
    needles: list[dict[str, Any]]
    lengths: tuple[int, ...]
    depths: tuple[float, ...]


def _lengths(config: ExperimentConfig) -> tuple[int, ...]:
    values = getattr(config, "context_lengths", NeedleConfig.context_lengths)
    out = []
    for v in values:
        if not is_int(v) or v < 16:
            raise ExperimentError(f"context length {v!r} must be an integer of at least 16 tokens")
        out.append(v)
    if not out:
        raise ExperimentError("give at least one context length")
    return tuple(dict.fromkeys(out))


def _depths(config: ExperimentConfig) -> tuple[float, ...]:
    values = getattr(config, "depths", NeedleConfig.depths)
    out = []
    for v in values:
        try:
            x = float(v)
        except (TypeError, ValueError):
            raise ExperimentError(f"depth {v!r} must be a number between 0 and 100") from None
        if isinstance(v, bool) or not 0 <= x <= 100 or math.isnan(x):
            raise ExperimentError(f"depth {v!r} must be a number between 0 and 100")
        out.append(int(x) if x.is_integer() else x)
    if not out:
        raise ExperimentError("give at least one depth")
    return tuple(dict.fromkeys(out))


class NeedleStudy(Study):
    name = "needle"
    config_class = NeedleConfig
    primary = "accuracy"
    metrics = ("accuracy",)
    group_fields = ("needle", "length", "depth")
    #: the cells (length x depth) of one needle share it: summaries resample needles, not cells
    cluster_field = "needle"

    def load_data(self, config: ExperimentConfig) -> NeedleData:
        lengths, depths = _lengths(config), _depths(config)
        if config.dataset is None:
            haystack = read_text(data_file(HAYSTACK_FILE))
        elif is_local(config.dataset):
            path = Path(config.dataset).expanduser()
            if path.suffix in (".jsonl", ".json"):
                from .sources import read_records

                haystack = "\n\n".join(str(r.get(config.text_field, "")) for r in read_records(path))
            else:
                haystack = read_text(path)
        else:
            # about 0.75 words per token: enough documents for the longest context
            texts = hf_texts(config.dataset, split=config.dataset_split, field=config.text_field,
                             count=max(4, max(lengths) // 300), min_words=100)
            haystack = "\n\n".join(texts)
        if not sentences(haystack):
            raise ExperimentError("the haystack text is empty")
        needles = read_jsonl(data_file(NEEDLES_FILE))
        if config.limit:
            needles = needles[: config.limit]
        return NeedleData(haystack, needles, lengths, depths)

    def data_fingerprints(self, data: NeedleData) -> dict[str, str]:
        from .store import fingerprint

        return {"haystack": fingerprint(data.haystack),
                **{f"needle {n.get('id')}": fingerprint(n) for n in data.needles}}

    def items(self, data: NeedleData, config: ExperimentConfig, tokenizer: Any) -> list[Item]:
        sents = sentences(data.haystack)
        counts = [len(ids) for ids in tokenizer(sents, add_special_tokens=False)["input_ids"]]
        items = []
        window = getattr(self, "window", None)  # set by the runner: the model's context
        for needle in data.needles:
            needle_tokens = len(tokenizer(needle["needle"], add_special_tokens=False)["input_ids"])
            for length in data.lengths:
                target = length
                if window:
                    # a context at the window's size is cut so that the prompt and the new tokens fit it
                    rest = len(tokenizer(PREAMBLE + _question(needle["question"]), add_special_tokens=False)
                               ["input_ids"])
                    target = min(length, window - config.max_new_tokens - rest - WINDOW_MARGIN - length // 100)
                context = _fill(sents, counts, max(1, target - needle_tokens))
                cumulative = [0]
                for _, n in context:
                    cumulative.append(cumulative[-1] + n)
                for depth in data.depths:
                    k = _insertion_point(cumulative, depth / 100 * cumulative[-1])
                    items.append(Item(
                        f"{needle['id']}-L{length}-D{depth:g}",
                        {
                            "needle": needle["needle"], "question": needle["question"], "answers": needle["answers"],
                            "before": " ".join(s for s, _ in context[:k]),
                            "after": " ".join(s for s, _ in context[k:]),
                            "context_tokens": cumulative[-1] + needle_tokens,
                        },
                        {"needle": needle["id"], "length": length, "depth": depth},
                    ))
        return items

    def segments(self, item: Item, config: ExperimentConfig) -> Segments:
        d = item.data
        before = PREAMBLE + (d["before"] + " " if d["before"] else "")
        after = (" " + d["after"] if d["after"] else "") + _question(d["question"])
        return Segments(before=before, focus=d["needle"], after=after)

    def score(self, items: Sequence[Item], outputs: Sequence[str], config: ExperimentConfig) -> list[Score]:
        return [Score({"accuracy": float(contains_answer(o, i.data["answers"]))}) for i, o in zip(items, outputs)]

    def extra_outputs(self, rows: Sequence[Mapping[str, Any]], out: Path, config: ExperimentConfig) -> list[Path]:
        grid = needle_grid(rows, config)
        path = out / "needle_grid.csv"
        write_csv(path, grid, ["condition", "length", "depth", "items", "accuracy", "accuracy_low",
                               "accuracy_high", "influence", "influence_low", "influence_high"])
        files = [path]
        if config.plots and grid:
            from .plots import needle_heatmap, needle_influence

            files.append(needle_heatmap(grid, out / "needle_heatmap.html"))
            files.append(needle_influence(grid, out / "needle_influence.html"))
        return files


def _question(question: str) -> str:
    return f"\n\nQuestion: {question} Answer in one short sentence."


def _fill(sents: Sequence[str], counts: Sequence[int], target: int) -> list[tuple[str, int]]:
    """Whole sentences (cycling through the text when it is short) until ``target`` tokens are reached."""
    out: list[tuple[str, int]] = []
    total, i = 0, 0
    while total < target:
        s, n = sents[i % len(sents)], counts[i % len(sents)]
        if out and total + n > target and (total + n - target) > (target - total):
            break  # stopping short is closer to the target than overshooting
        out.append((s, n))
        total += n
        i += 1
        if i == len(sents):
            logger.info("the haystack is shorter than %d tokens: repeating it", target)
    return out


def _insertion_point(cumulative: Sequence[int], position: float) -> int:
    """The sentence boundary (index into ``cumulative``) closest to ``position`` tokens."""
    k = bisect_left(cumulative, position)
    if k >= len(cumulative):
        return len(cumulative) - 1
    if k > 0 and position - cumulative[k - 1] <= cumulative[k] - position:
        return k - 1
    return k


def needle_grid(rows: Sequence[Mapping[str, Any]], config: ExperimentConfig) -> list[dict[str, Any]]:
    """Accuracy and the needle's mean influence per condition, length and depth, each with a bootstrap
    interval over needles (a cell holds one item per needle: they are independent)."""
    by = ("condition", "length", "depth")
    accuracy = item_means(rows, "accuracy", by)
    influence = item_means(rows, "influence", by)
    order = {}
    for r in rows:
        order.setdefault(r["condition"], len(order))
    out = []

    def ci(values: Sequence[float]) -> Any:
        return bootstrap_ci(values, confidence=config.confidence, resamples=config.bootstrap, seed=config.seed)

    for key in sorted(accuracy, key=lambda k: (order.get(k[0], 0), k[1], k[2])):
        est = ci(accuracy[key])
        inf = ci(influence[key]) if influence.get(key) else None
        out.append({
            "condition": key[0], "length": key[1], "depth": key[2], "items": est.n,
            "accuracy": round(est.mean, 4), "accuracy_low": round(est.low, 4), "accuracy_high": round(est.high, 4),
            "influence": round(inf.mean, 6) if inf else None,
            "influence_low": round(inf.low, 6) if inf else None,
            "influence_high": round(inf.high, 6) if inf else None,
        })
    return out
