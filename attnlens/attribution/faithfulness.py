"""Faithfulness of token attributions: erase tokens in the order a method ranks them and watch the target.

``f(x)`` is the target's log-probability (:mod:`attnlens.attribution.tokens`).
A method's scores rank the prompt's *erasable* tokens (all but a leading BOS),
highest first; ties keep the prompt's order. Erasing a token replaces it by
the neutral token (``erase="replace"``, :func:`~attnlens.attribution.token_methods.neutral_token`)
or removes it (``erase="drop"``; a prompt erased to nothing keeps one neutral token).
With ``N`` erasable tokens and ``k`` of them erased:

- **deletion curve**: ``f`` with the top ``k`` erased, ``k`` from 0 to ``N`` at
  ``points`` evenly spaced counts; its **area** (trapezoid over ``k / N`` in
  [0, 1]) is lower for a faithful ranking;
- **insertion curve**: ``f`` with only the top ``k`` kept (all others erased);
  its area is higher for a faithful ranking;
- **comprehensiveness** at a fraction ``q`` (ERASER, DeYoung et al. 2020):
  ``f(x) - f(x without the top ceil(qN))``, higher is better; **sufficiency**:
  ``f(x) - f(only the top ceil(qN))``, lower is better. Their **AOPC** is the
  mean over the fractions (1, 5, 10, 20 and 50%).

Every figure comes with the same figure for random orders (the mean over
``seeds`` permutations), so a method is read against chance on the same prompt.
All edited prompts of one evaluation go through batched forward passes, each distinct one once.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..core.errors import AttnlensError
from ..core.records import Showable
from ..core.validate import is_int
from . import registry
from .token_methods import ERASE_MODES, erased, neutral_token
from .tokens import Target, check_scores, make_target, scores_for, target_logprob

logger = logging.getLogger(__name__)

FRACTIONS = (0.01, 0.05, 0.10, 0.20, 0.50)
#: the scalar metrics, and which direction is better
METRICS = {"deletion_area": "lower", "insertion_area": "higher", "comprehensiveness_aopc": "higher",
           "sufficiency_aopc": "lower"}


def check_settings(*, erase: Any = "replace", seeds: Any = 5, points: Any = 11,
                   fractions: Any = FRACTIONS) -> tuple[float, ...]:
    """Every setting of an evaluation checked before the model runs; returns ``fractions`` as floats.

    ``erase`` one of :data:`~attnlens.attribution.token_methods.ERASE_MODES`; ``seeds`` a positive
    integer; ``points`` an integer of at least 2; ``fractions`` a non-empty list of numbers in (0, 1].
    """
    if not isinstance(erase, str) or erase not in ERASE_MODES:
        raise AttnlensError(f"erase must be one of {', '.join(ERASE_MODES)}, got {erase!r}")
    if not is_int(seeds) or seeds < 1:
        raise AttnlensError(f"seeds must be a positive integer, got {seeds!r}")
    if not is_int(points) or points < 2:
        raise AttnlensError(f"points must be an integer of at least 2, got {points!r}")
    listed = list(fractions) if isinstance(fractions, Sequence) and not isinstance(fractions, (str, bytes)) else None
    if not listed:
        raise AttnlensError(f"fractions must be a non-empty list of numbers in (0, 1] (the shares of tokens "
                            f"comprehensiveness and sufficiency erase), got {fractions!r}")
    for q in listed:
        if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0 < q <= 1:
            raise AttnlensError(f"fractions must be numbers in (0, 1], got {q!r} in {fractions!r}")
    return tuple(float(q) for q in listed)


def erasable_positions(model: Any, prompt: Sequence[int]) -> list[int]:
    """The prompt positions the metrics erase: all but a leading BOS token."""
    bos = getattr(getattr(model, "tokenizer", None), "bos_token_id", None)
    start = 1 if (bos is not None and len(prompt) > 1 and prompt[0] == bos) else 0
    return list(range(start, len(prompt)))


def curve_counts(n: int, points: int) -> list[int]:
    """``points`` evenly spaced counts of erased tokens from 0 to ``n`` (fewer when ``n`` is small)."""
    if points < 2:
        raise AttnlensError(f"points must be at least 2, got {points}")
    return sorted({round(n * i / (points - 1)) for i in range(points)})


def ranked(scores: Sequence[float], positions: Sequence[int]) -> list[int]:
    """``positions`` ordered by score, highest first (ties: prompt order)."""
    return sorted(positions, key=lambda p: -float(scores[p]))


def _area(ys: Sequence[float], xs: Sequence[float]) -> float:
    if len(xs) < 2:
        return float(ys[0]) if ys else 0.0
    return float(sum((xs[i + 1] - xs[i]) * (ys[i + 1] + ys[i]) / 2 for i in range(len(xs) - 1)))


def _plan(order: list[int], n: int, counts: list[int], fractions: Sequence[float]) -> dict[str, list[list[int]]]:
    """For one order: the sets of positions to erase for every point of every metric."""
    top = [max(1, math.ceil(q * n)) for q in fractions]
    return {
        "deletion": [order[:k] for k in counts],
        "insertion": [order[k:] for k in counts],
        "comprehensiveness": [order[:k] for k in top],
        "sufficiency": [order[k:] for k in top],
    }


def evaluate_orders(score: Callable[[list[list[int]]], torch.Tensor], prompt: list[int],
                    orders: dict[str, list[int]], *, erase: str = "replace", neutral: int = 0, points: int = 11,
                    fractions: Sequence[float] = FRACTIONS) -> tuple[float, dict[str, dict[str, Any]]]:
    """Every metric of every order, with one call of ``score`` (edited prompts -> ``f`` per prompt).

    Returns ``(f(x), {order name: metrics})``.
    """
    if erase not in ERASE_MODES:
        raise AttnlensError(f"erase must be one of {', '.join(ERASE_MODES)}, got {erase!r}")
    if not orders:
        raise AttnlensError("no order to evaluate")
    n = len(next(iter(orders.values())))
    if n == 0:
        raise AttnlensError("the prompt has no erasable tokens (only a BOS token)")
    fractions = check_settings(erase=erase, points=points, fractions=fractions)
    counts = curve_counts(n, points)
    # each distinct edited prompt is scored once: every order shares the unedited and the fully erased
    # prompt, and a curve point and an ERASER fraction that erase the same tokens share a row
    rows: list[list[int]] = [list(prompt)]
    index: dict[tuple[int, ...], int] = {tuple(prompt): 0}
    where: dict[str, dict[str, list[int]]] = {}
    for name, order in orders.items():
        if sorted(order) != sorted(next(iter(orders.values()))):
            raise AttnlensError(f"order {name!r} ranks other positions than the first order")
        where[name] = {}
        for metric, sets in _plan(list(order), n, counts, fractions).items():
            where[name][metric] = []
            for gone in sets:
                edited = erased(list(prompt), gone, erase=erase, neutral=neutral) or [neutral]
                key = tuple(edited)
                if key not in index:
                    index[key] = len(rows)
                    rows.append(edited)
                where[name][metric].append(index[key])
    f = score(rows).double()
    full = float(f[0])
    xs = [k / n for k in counts]
    out = {}
    for name, idx in where.items():
        deletion = [float(f[i]) for i in idx["deletion"]]
        insertion = [float(f[i]) for i in idx["insertion"]]
        comp = [full - float(f[i]) for i in idx["comprehensiveness"]]
        suff = [full - float(f[i]) for i in idx["sufficiency"]]
        out[name] = {
            "deletion_area": _area(deletion, xs), "insertion_area": _area(insertion, xs),
            "comprehensiveness_aopc": sum(comp) / len(comp), "sufficiency_aopc": sum(suff) / len(suff),
            "deletion_curve": deletion, "insertion_curve": insertion, "fractions_erased": xs,
            "comprehensiveness": dict(zip(map(str, fractions), comp)),
            "sufficiency": dict(zip(map(str, fractions), suff)),
        }
    return full, out


def random_orders(positions: Sequence[int], seeds: int, *, seed: int = 0) -> dict[str, list[int]]:
    if not isinstance(seeds, int) or seeds < 1:
        raise AttnlensError(f"seeds must be a positive integer, got {seeds!r}")
    out = {}
    for s in range(seeds):
        order = list(positions)
        random.Random(seed * 1_000_003 + s).shuffle(order)
        out[f"random_{s}"] = order
    return out


def mean_metrics(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The element-wise mean of several orders' metrics (scalars and curves)."""
    out: dict[str, Any] = {}
    for key, value in results[0].items():
        if isinstance(value, float):
            out[key] = sum(r[key] for r in results) / len(results)
        elif isinstance(value, list) and key != "fractions_erased":
            out[key] = [sum(r[key][i] for r in results) / len(results) for i in range(len(value))]
        elif isinstance(value, dict):
            out[key] = {q: sum(r[key][q] for r in results) / len(results) for q in value}
        else:
            out[key] = value
    return out


@dataclass
class Faithfulness(Showable):
    """One method's faithfulness on one prompt, beside the mean of random orders.

    Attributes:
        method: the method's name; ``metrics``: its figures; ``random``: the mean over ``seeds``
            random orders; ``full_logprob``: ``f(x)``; ``n_erasable``: ``N``.
    """

    method: str
    metrics: dict[str, Any]
    random: dict[str, Any]
    full_logprob: float
    n_erasable: int
    erase: str
    seeds: int
    target_ids: list[int] = field(default_factory=list)

    def summary(self) -> dict[str, dict[str, float]]:
        """The four scalar metrics: ``{metric: {"method", "random"}}``."""
        return {k: {"method": self.metrics[k], "random": self.random[k]} for k in METRICS}

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "erase": self.erase, "seeds": self.seeds, "n_erasable": self.n_erasable,
                "full_logprob": self.full_logprob, "target_ids": self.target_ids, "metrics": self.metrics,
                "random": self.random}

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    def __repr__(self) -> str:
        parts = ", ".join(f"{k}={self.metrics[k]:.3f} (random {self.random[k]:.3f})" for k in METRICS)
        return f"<Faithfulness {self.method}: {parts}>"


def _check_method(method: Any) -> str:
    if not isinstance(method, (str, registry.AttributionMethod)):
        raise AttnlensError(f"method must be a method's name, got {type(method).__name__}")
    return registry.get(method).name


def _evaluate(model: Any, target: Target, method_scores: dict[str, torch.Tensor], *, erase: str, seeds: int,
              points: int, fractions: Sequence[float], seed: int = 0) -> tuple[float, dict[str, Any], dict[str, Any]]:
    positions = erasable_positions(model, target.prompt)
    orders = {name: ranked(s.tolist(), positions) for name, s in method_scores.items()}
    rand = random_orders(positions, seeds, seed=seed)
    full, results = evaluate_orders(lambda rows: target_logprob(model, rows, target.target), target.prompt,
                                    {**orders, **rand}, erase=erase, neutral=neutral_token(model), points=points,
                                    fractions=fractions)
    random_mean = mean_metrics([results[name] for name in rand])
    return full, {name: results[name] for name in orders}, random_mean


def faithfulness(model: Any, text_or_tokens: Any, *, method: str = "influence", target: Any = None,
                 erase: str = "replace", seeds: int = 5, points: int = 11,
                 fractions: Sequence[float] = FRACTIONS, scores: Sequence[float] | None = None) -> Faithfulness:
    """How faithful one method's token ranking is on one prompt (deletion, insertion, ERASER AOPC).

    Args:
        model, text_or_tokens, target: as for :func:`attnlens.attribute`.
        method: a registered attribution method (ignored for the ranking when ``scores`` is given,
            but kept as the record's name).
        erase: ``"replace"`` (by the neutral token) or ``"drop"``.
        seeds: random orders averaged for the baseline.
        points: points of the deletion and insertion curves.
        fractions: the fractions of tokens for comprehensiveness and sufficiency.
        scores: one score per prompt token to evaluate instead of the method's.
    """
    name = _check_method(method) if scores is None else str(method)
    fractions = check_settings(erase=erase, seeds=seeds, points=points, fractions=fractions)
    if scores is not None and (isinstance(scores, (str, bytes)) or not hasattr(scores, "__len__")):
        raise AttnlensError(f"scores must be one number per prompt token, got {type(scores).__name__}")
    t = make_target(model, text_or_tokens, target)
    if scores is None:
        s = scores_for(model, name, t)
    else:
        s = check_scores(scores, t.n_prompt)
    full, results, rand = _evaluate(model, t, {name: s}, erase=erase, seeds=seeds, points=points, fractions=fractions)
    return Faithfulness(name, results[name], rand, full, len(erasable_positions(model, t.prompt)), erase, seeds,
                        list(t.target))


# ----------------------------------------------------------------------------- comparison over prompts


def check_n_boot(n_boot: Any) -> int:
    """``n_boot`` (bootstrap resamples) as a positive integer, else an error naming it."""
    if not is_int(n_boot) or n_boot < 1:
        raise AttnlensError(f"n_boot must be a positive integer (bootstrap resamples), got {n_boot!r}")
    return int(n_boot)


def bootstrap_interval(values: Sequence[float], *, n_boot: int = 1000, level: float = 0.95,
                       seed: int = 0) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean and its percentile-bootstrap interval."""
    check_n_boot(n_boot)
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < level < 1:
        raise AttnlensError(f"level must be a number in (0, 1), got {level!r}")
    x = torch.as_tensor(list(values), dtype=torch.float64)
    if x.numel() == 0:
        raise AttnlensError("no values to summarise")
    if not bool(torch.isfinite(x).all()):
        raise AttnlensError(f"the values to summarise must be finite numbers; got {float(x[~torch.isfinite(x)][0])}")
    mean = float(x.mean())
    if x.numel() == 1:
        return mean, mean, mean
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, x.numel(), (n_boot, x.numel()), generator=g)
    means = x[idx].mean(1).sort().values
    lo = float(means[int((1 - level) / 2 * (n_boot - 1))])
    hi = float(means[int((1 + level) / 2 * (n_boot - 1))])
    return mean, lo, hi


@dataclass
class FaithfulnessComparison(Showable):
    """Several methods over several prompts: per prompt figures and bootstrap intervals."""

    methods: list[str]
    per_prompt: list[dict[str, Any]]
    erase: str
    seeds: int
    n_boot: int = 1000

    def table(self) -> list[dict[str, Any]]:
        """One row per method (and ``random``): every metric's mean with a 95% bootstrap interval,
        and the method's difference from random on the same prompts."""
        rows = []
        for name in [*self.methods, "random"]:
            row: dict[str, Any] = {"method": name, "prompts": len(self.per_prompt)}
            for metric in METRICS:
                vals = [p["metrics"][name][metric] for p in self.per_prompt]
                row[metric] = bootstrap_interval(vals, n_boot=self.n_boot)
                if name != "random":
                    diff = [p["metrics"][name][metric] - p["metrics"]["random"][metric] for p in self.per_prompt]
                    row[f"{metric}_vs_random"] = bootstrap_interval(diff, n_boot=self.n_boot)
            rows.append(row)
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {"erase": self.erase, "seeds": self.seeds, "methods": self.table(), "per_prompt": self.per_prompt}

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    def text(self) -> str:
        head = f"{'method':<22}" + "".join(f"{m:>34}" for m in METRICS)
        lines = [f"{len(self.per_prompt)} prompts, erase={self.erase}, {self.seeds} random orders; "
                 "mean [95% bootstrap interval]", head]
        for row in self.table():
            cells = "".join(f"{row[m][0]:>12.3f} [{row[m][1]:8.3f},{row[m][2]:8.3f}]" for m in METRICS)
            lines.append(f"{row['method']:<22}{cells}")
        lines.append("better: " + ", ".join(f"{m} {d}" for m, d in METRICS.items()))
        return "\n".join(lines)


def evaluate_prompt(model: Any, prompt: Any, methods: Sequence[str], *, target: Any = None,
                    erase: str = "replace", seeds: int = 5, points: int = 11,
                    fractions: Sequence[float] = FRACTIONS, seed: int = 0) -> dict[str, Any]:
    """Every method's faithfulness on one prompt, beside the mean of ``seeds`` random orders drawn with ``seed``
    (the same orders for every method).

    Returns ``{"n_prompt", "n_erasable", "full_logprob", "target_ids", "metrics": {method or "random": metrics}}``.
    """
    if isinstance(methods, (str, registry.AttributionMethod)):
        methods = [methods]
    names = [_check_method(m) for m in methods]
    if not names:
        raise AttnlensError("no method given")
    fractions = check_settings(erase=erase, seeds=seeds, points=points, fractions=fractions)
    t = make_target(model, prompt, target)
    scores = {name: scores_for(model, name, t) for name in names}
    full, results, rand = _evaluate(model, t, scores, erase=erase, seeds=seeds, points=points,
                                    fractions=fractions, seed=seed)
    return {"n_prompt": t.n_prompt, "n_erasable": len(erasable_positions(model, t.prompt)), "full_logprob": full,
            "target_ids": list(t.target), "metrics": {**results, "random": rand}}


def compare_faithfulness(model: Any, prompts: Sequence[Any], *, methods: Sequence[str] = ("influence", "rollout"),
                         target: Any = None, erase: str = "replace", seeds: int = 5, points: int = 11,
                         fractions: Sequence[float] = FRACTIONS, n_boot: int = 1000,
                         on_prompt: Callable[[int, dict[str, Any]], None] | None = None) -> FaithfulnessComparison:
    """Every method's faithfulness on every prompt (the same random orders for all methods).

    ``target`` applies to every prompt (``None``: each prompt's own next token).
    ``on_prompt(i, entry)`` is called after each prompt (progress, saving).
    """
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence) or not prompts:
        raise AttnlensError("prompts must be a non-empty list of texts or token lists")
    if isinstance(methods, str):
        methods = [methods]
    names = [_check_method(m) for m in methods]
    if not names:
        raise AttnlensError("no method given")
    fractions = check_settings(erase=erase, seeds=seeds, points=points, fractions=fractions)
    n_boot = check_n_boot(n_boot)
    per_prompt = []
    for i, prompt in enumerate(prompts):
        entry = {"prompt": i, **evaluate_prompt(model, prompt, names, target=target, erase=erase, seeds=seeds,
                                                points=points, fractions=fractions, seed=i)}
        per_prompt.append(entry)
        if on_prompt is not None:
            on_prompt(i, entry)
        logger.info("faithfulness: prompt %d/%d done", i + 1, len(prompts))
    return FaithfulnessComparison(names, per_prompt, erase, seeds, n_boot)
