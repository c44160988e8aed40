"""Steering methods side by side on a study: each at its tuned strength and at its paper's default.

:func:`compare_methods` runs, for every method named, the strength search of
:func:`~attnlens.experiments.tuning.tune_study` on the development part of the
study's items, then scores on the held-out part (the same items for every
method: one seeded split) the chosen strength, the method's
:meth:`~attnlens.experiments.profiles.Profile.reference_strength` of its
profile (its paper's default, where the paper names one) and the unsteered model. Each row gives the
mean with its bootstrap interval and the difference from the unsteered model,
paired by item, with its interval. Outputs are shared between the methods'
searches (a prompt whose tokens and steering match is generated once), and every
search is saved under ``out`` and resumes where it stopped.

``attnlens compare STUDY --methods guide instaboost spotlight spa pasta --out DIR``
does the same from the command line and writes ``compare.md``, ``compare.csv``
and ``compare.json`` to ``DIR``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import ExperimentError
from ..core.records import Showable
from .config import ExperimentConfig
from .schedule import OUTPUTS_FILE, STREAM_BATCH, SavedOutputs
from .study import Study

logger = logging.getLogger(__name__)

#: the built-in methods compared when none are named; with plugins, :func:`~attnlens.experiments.profiles.compared_methods`
#: (every method whose profile sets ``compare_order``) is what a comparison runs
DEFAULT_METHODS = ("guide", "instaboost", "spotlight", "spa", "pasta")


@dataclass
class MethodRow:
    """One method at one strength on the held-out items: its score and its paired difference from ``none``."""

    method: str
    setting: str  # "tuned" or "default"
    parameter: str
    strength: Any  # None: no strength tried passed the guard (the numbers are then NaN)
    mean: float
    low: float
    high: float
    difference: float
    difference_low: float
    difference_high: float
    n: int
    #: a tuned strength that is the strongest one tried (a stronger one might score higher)
    at_strongest: bool = False
    #: how many strengths tied for the best development score (a tuned one is the strongest of them)
    tied: int = 1
    #: a tuned strength that scored below the unsteered model on the development items
    below_unsteered: bool = False

    def label(self) -> str:
        """The strength as the table shows it, with what the search could not tell."""
        if self.strength is None:
            return "none: every strength tried breaks the text"
        notes = ([f"{self.tied} tied on development"] if self.tied > 1 else []) + (
            ["strongest tried"] if self.at_strongest else []) + (
            ["below none on development"] if self.below_unsteered else [])
        return f"{self.parameter}={self.strength:g}" + (f" ({'; '.join(notes)})" if notes else "")


@dataclass
class Comparison(Showable):
    """Every method's tuned and default strength on one study's held-out items, beside the unsteered model.

    ``markdown()`` is the table the docs print; ``show()`` / ``view()``, ``to_json()``."""

    study: str
    metric: str
    n_dev: int
    n_heldout: int
    unsteered: dict[str, float]
    rows: list[MethodRow] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)  # method: where its default comes from
    confidence: float = 0.95

    def as_rows(self) -> list[dict[str, Any]]:
        return [asdict(r) for r in self.rows]

    def markdown(self) -> str:
        """A Markdown table: the unsteered row first, then each method's tuned and default rows."""
        pct = f"{self.confidence:.0%}"
        u = self.unsteered
        head = (f"| method | strength | {self.metric} (mean [{pct} CI]) | difference from none [{pct} CI] |\n"
                "|---|---|---|---|\n"
                f"| none | | {u['mean']:.3f} [{u['low']:.3f}, {u['high']:.3f}] | |\n")
        lines = [f"| {r.method} ({r.setting}) | {r.label()} | | |" if r.strength is None
                 else f"| {r.method} ({r.setting}) | {r.label()} | {r.mean:.3f} [{r.low:.3f}, {r.high:.3f}] "
                 f"| {r.difference:+.3f} [{r.difference_low:+.3f}, {r.difference_high:+.3f}] |" for r in self.rows]
        return head + "\n".join(lines) + "\n"

    def view(self, **options: Any) -> Any:
        from ..viz import table_view

        caption = (f"{self.study}: {self.metric} on n = {self.n_heldout} held-out items (strengths chosen on "
                   f"{self.n_dev} others); intervals: {self.confidence:.0%} bootstrap; differences paired by item")
        rows = [{"method": "none", "setting": "", "strength": "", **{k: self.unsteered[k] for k in ("mean", "low", "high")}}]
        rows += [{k: v for k, v in asdict(r).items() if k not in ("parameter", "n")} for r in self.rows]
        return table_view(rows, f"methods on {self.study}", caption=caption)

    def save(self, out: str | Path) -> Path:
        """Write ``compare.json``, ``compare.csv`` and ``compare.md`` to the directory ``out``; returns it."""
        from .store import write_atomic

        path = Path(out).expanduser()
        path.mkdir(parents=True, exist_ok=True)
        table = io.StringIO()
        writer = csv.DictWriter(table, fieldnames=list(MethodRow.__dataclass_fields__))
        writer.writeheader()
        writer.writerow({"method": "none", "setting": "", "parameter": "", "strength": "",
                         **{k: self.unsteered[k] for k in ("mean", "low", "high", "n")}})
        writer.writerows(self.as_rows())
        for name, text in (("compare.json", self.to_json(indent=1)), ("compare.csv", table.getvalue()),
                           ("compare.md", self.markdown())):
            write_atomic(path / name, text)
        return path


def _row(method: str, setting: str, parameter: str, strength: Any, estimate: dict[str, float],
         difference: dict[str, float], at_strongest: bool = False, tied: int = 1,
         below_unsteered: bool = False) -> MethodRow:
    return MethodRow(method, setting, parameter, strength, estimate["mean"], estimate["low"], estimate["high"],
                     difference["mean"], difference["low"], difference["high"], int(estimate["n"]), at_strongest,
                     tied, below_unsteered)


def compare_methods(
    study: Study | str,
    config: ExperimentConfig,
    methods: Sequence[str] | None = None,
    *,
    model: Any = None,
    metric: str | None = None,
    grids: dict[str, Sequence[Any]] | None = None,
    heldout: float = 0.5,
    max_repetition: float = 0.5,
    out: str | Path | None = None,
    stream: bool = True,
    batch_size: int | None = None,
) -> Comparison:
    """Every method in ``methods`` on ``study`` (``config.limit`` items), tuned and at its default.

    ``methods``: default :func:`~attnlens.experiments.profiles.compared_methods` (the built-ins, and every
    plugin method whose profile sets ``compare_order``).

    ``metric``: the study's metric (default: its first); ``grids``: a method's
    strengths to search (default: its profile's :meth:`~attnlens.experiments.profiles.Profile.grid`);
    ``out``: the directory the searches are saved to (default: ``config.out``).
    ``stream`` (default): every output the searches need is generated first as one stream of
    rows (:mod:`attnlens.experiments.schedule`: the strengths of a static bias share batches, the
    unsteered rows are shared by every method, batches are sorted by length), up to
    ``batch_size`` rows a batch (default: :data:`STREAM_BATCH`, within ``config.max_batch_tokens``
    of prompt and new tokens); ``stream=False`` runs each search's generations in turn, as
    :func:`~attnlens.experiments.tuning.tune_study` does. Greedy outputs are the same either way.
    A method without a strength, one with no grid (given or from its profile), or one the config cannot
    run (PASTA without heads), is an error naming it, before anything runs.
    """
    from .. import steering
    from .store import run_lock
    from .profiles import compared_methods, profile
    from .tuning import check_method_settings, text_metric

    if methods is None:
        methods = compared_methods()
    if isinstance(study, str):
        from . import get_study

        study = get_study(study)
    if isinstance(methods, str) or not methods:
        raise ExperimentError("methods must be a list of steering method names, e.g. ['guide', 'spa']")
    steerers = [steering.get(m) for m in methods]
    if len({s.name for s in steerers}) != len(steerers):
        raise ExperimentError(f"a method is named twice in {list(methods)}")
    unknown = sorted(set(grids or {}) - {s.name for s in steerers})
    if unknown:
        raise ExperimentError(f"grids names method(s) not compared: {', '.join(unknown)}")
    for s in steerers:
        policy = profile(s)
        if policy.strength is None:
            raise ExperimentError(f"steering method {s.name!r} has no strength to tune: its profile names none "
                                  "(register an attnlens.experiments.profiles.Profile with strength=PARAMETER and "
                                  "strength_grid=...)")
        if not (grids or {}).get(s.name) and not policy.grid():
            raise ExperimentError(f"steering method {s.name!r} has no strengths to search: give its grid "
                                  f"(grids={{{s.name!r}: [...]}}, or --grid {s.name}=V1,V2,...) or register a "
                                  "profile with a strength_grid")
        if not s.ready(config):
            raise ExperimentError(f"steering method {s.name!r} needs more settings to run on a study: "
                                  f"{policy.experiment_hint or 'give its required parameters in config.steering'}")
    check_method_settings(config)
    metric = text_metric(study, config, metric)
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                   or batch_size < 1):
        raise ExperimentError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(max_repetition, bool) or not isinstance(max_repetition, (int, float)) \
            or not 0.0 <= max_repetition <= 1.0:
        raise ExperimentError(f"max_repetition must be a share of repeated word trigrams in [0, 1], got "
                              f"{max_repetition!r}")
    data = study.load_data(config)  # a bad data file fails before the model loads
    if model is None:
        from ..runtime.models import load_model

        model = load_model(config.model) if config.model else load_model()
    directory = Path(out if out is not None else config.out).expanduser()
    directory.mkdir(parents=True, exist_ok=True)
    with run_lock(directory):  # a second comparison on the same folder fails at once
        comparison = _compare(study, config, steerers, model, metric, grids, heldout, max_repetition, directory,
                              data, stream, batch_size or STREAM_BATCH)
    if out is not None:
        comparison.save(directory)
    return comparison


def _compare(study: Study, config: ExperimentConfig, steerers: Sequence[Any], model: Any, metric: str,
             grids: dict[str, Sequence[Any]] | None, heldout: float, max_repetition: float,
             directory: Path, data: Any = None, stream: bool = True, batch_size: int = 64) -> Comparison:
    from .profiles import profile
    from .tuning import study_search

    cache: dict[str, str] = {}
    policies = {s.name: profile(s) for s in steerers}
    searches = [study_search(study, config, s.name, model=model, metric=metric, grid=(grids or {}).get(s.name),
                             heldout=heldout, max_repetition=max_repetition, out=directory / f"tune-{s.name}.json",
                             compare=[policies[s.name].reference_strength()], cache=cache, require_valid=False,
                             data=data)
                for s in steerers]
    if stream:
        outputs = SavedOutputs(directory, model, cache)
        # the development part at every strength, the held-out part unsteered and at each default: one stream;
        # then the held-out part at each chosen strength: a second one
        outputs.fill(searches, config, batch_size)
        for search in searches:
            search.develop()
        outputs.fill(searches, config, batch_size, chosen=True)
    rows: list[MethodRow] = []
    unsteered: dict[str, float] = {}
    sources: dict[str, str] = {}
    n_dev = 0
    for s, search in zip(steerers, searches):
        policy = policies[s.name]
        parameter = policy.strength
        logger.info("comparing %s on %s (default %s=%s)", s.name, study.name, parameter,
                    policy.reference_strength())
        if not stream:
            search.develop()
        result = search.finish()
        other = result.compared[0]
        if result.chosen is None:  # every strength tried loops past the guard: a finding, not a failure
            nan = {"mean": math.nan, "low": math.nan, "high": math.nan, "n": 0}
            rows.append(_row(s.name, "tuned", parameter, None, nan, nan))
        else:
            rows.append(_row(s.name, "tuned", parameter, result.chosen, result.heldout, result.difference,
                             result.at_strongest, result.tied, result.below_unsteered))
        rows.append(_row(s.name, "default", parameter, other["strength"], other["heldout"], other["difference"]))
        sources[s.name] = policy.source()
        if unsteered and abs(unsteered["mean"] - result.unsteered["mean"]) > 1e-9:
            # the methods tag the same text; their untagged prompts tokenise alike unless a tag splits a word
            logger.warning("the unsteered score differs between methods' prompts (%s: %.4f, before: %.4f)",
                           s.name, result.unsteered["mean"], unsteered["mean"])
        unsteered = unsteered or result.unsteered
        n_dev = len(result.dev)
    return Comparison(study.name, metric, n_dev, int(unsteered["n"]), unsteered, rows, sources,
                      getattr(config, "confidence", 0.95))


def load_comparison(path: str | Path) -> Comparison:
    """A :class:`Comparison` read back from its ``compare.json`` (or the directory holding it)."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / "compare.json"
    try:
        data = json.loads(path.read_text())
        data["rows"] = [MethodRow(**r) for r in data["rows"]]
        return Comparison(**data)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ExperimentError(f"cannot read the comparison {str(path)!r}: {exc}") from None
