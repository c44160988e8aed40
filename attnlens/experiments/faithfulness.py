"""Which token attribution is faithful? Every method's deletion, insertion and ERASER figures over prompts.

Each item is one prompt (by default a sentence of the shipped passages without its
last word, so the target, the model's next token, is a word the sentence predicts).
For every item, every method ranks the prompt's tokens and is scored by erasing
them in that order (:func:`attnlens.attribution.faithfulness.evaluate_prompt`):
deletion and insertion areas, comprehensiveness and sufficiency AOPC, beside the
mean of ``seeds`` random orders (the same orders for every method of the item).

The run is the other experiments' run: the data is checked and loaded before the
model, ``run.json`` records the settings (a folder made with other methods, erase
mode, seeds, points, target or model is refused), one JSON line per (method, item)
is appended as each prompt finishes (all of a prompt's lines in one write), and a
rerun computes only the prompts not yet in ``rows.jsonl``. The summary gives each
method's means with bootstrap intervals over prompts and its paired difference from
the random orders on the same prompts (the ``_diff`` columns); ``pairs.csv`` gives
every pair of methods' paired differences::

    from attnlens.experiments import run_experiment
    from attnlens.experiments.faithfulness import FaithfulnessConfig

    result = run_experiment("faithfulness", FaithfulnessConfig(out="results/faith", limit=100))

On the command line: ``attnlens experiment faithfulness --out results/faith --limit 100``.
"""

from __future__ import annotations

import dataclasses
import logging
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..core.errors import AttnlensError, ExperimentError
from ..core.validate import is_int
from .config import ExperimentConfig, validate_config
from .sources import check_unique_ids, data_file, is_local, read_records, read_text, sentences
from .store import ROWS_FILE, RUN_FILE, SUMMARY_FILE, _check_run_file, append_rows, read_rows, run_lock, write_csv
from .study import Item, Score, Segments, Study
from .summary import ConditionSummary, ExperimentResult, _round, paired_difference, per_item, write_summary

logger = logging.getLogger(__name__)

PASSAGES_FILE = "summarize_passages.jsonl"
#: the passages the faithfulness prompts are drawn from: the first 61, so published tables reproduce
#: (the file has grown for the summarize study; more passages would change which prompts ``limit`` selects)
FAITHFULNESS_PASSAGES = 61
#: the row that holds the mean of the random orders
RANDOM = "random"
PAIRS_FILE = "pairs.csv"
#: sentences shorter than this (in words) make no prompt
MIN_WORDS = 8


@dataclass
class FaithfulnessConfig(ExperimentConfig):
    """The faithfulness experiment's settings (the shared ones that choose steering do not apply).

    ``methods`` None runs every registered attribution method; ``dataset`` a local ``.txt`` file
    (one prompt a line) or ``.jsonl``/``.json`` records with ``text`` (and ``id``), used as written;
    ``target`` None scores toward each prompt's most likely next token, else toward that continuation.
    """

    methods: Sequence[str] | None = None
    erase: str = "replace"
    seeds: int = 5
    points: int = 11
    fractions: Sequence[float] = (0.01, 0.05, 0.10, 0.20, 0.50)
    target: str | None = None
    influence: bool = False
    plots: bool = False


def _check(config: FaithfulnessConfig) -> FaithfulnessConfig:
    """Every setting checked before the model loads; returns the config with ``methods`` resolved."""
    from .. import attribution
    from ..attribution.token_methods import ERASE_MODES

    if not isinstance(config, FaithfulnessConfig):
        raise ExperimentError(f"the faithfulness experiment needs a FaithfulnessConfig, got {type(config).__name__}")
    validate_config(config)
    methods = config.methods
    if methods is None:
        names = list(attribution.methods())
    else:
        if isinstance(methods, str):
            methods = [m for m in methods.split(",") if m.strip()]
        if not isinstance(methods, Sequence) or not methods:
            raise ExperimentError(f"methods must be a non-empty list of attribution methods, got {config.methods!r}")
        try:
            names = [attribution.get(str(m).strip()).name for m in methods]
        except AttnlensError as exc:
            raise ExperimentError(f"methods: {exc}") from None
    if len(set(names)) != len(names) or RANDOM in names:
        raise ExperimentError(f"methods must name each method once (and not {RANDOM!r}), got {names}")
    if config.erase not in ERASE_MODES:
        raise ExperimentError(f"erase must be one of {', '.join(ERASE_MODES)}, got {config.erase!r}")
    if not is_int(config.seeds) or config.seeds < 1:
        raise ExperimentError(f"seeds must be a positive integer, got {config.seeds!r}")
    if not is_int(config.points) or config.points < 2:
        raise ExperimentError(f"points must be an integer of at least 2, got {config.points!r}")
    fractions = list(config.fractions) if isinstance(config.fractions, Sequence) else None
    if not fractions or any(isinstance(q, bool) or not isinstance(q, (int, float)) or not 0 < q <= 1
                            for q in fractions):
        raise ExperimentError(f"fractions must be numbers in (0, 1], got {config.fractions!r}")
    if config.target is not None and (not isinstance(config.target, str) or not config.target):
        raise ExperimentError(f"target must be a non-empty continuation text or None, got {config.target!r}")
    return dataclasses.replace(config, methods=tuple(names), fractions=tuple(float(q) for q in fractions))


def shipped_prompts() -> list[dict[str, str]]:
    """The default items: each sentence of the first :data:`FAITHFULNESS_PASSAGES` shipped passages (of at least
    :data:`MIN_WORDS` words) without its last word; every passage's first sentence first, then the second ones,
    ..., so a small ``limit`` spans the passages."""
    per_passage = []
    for record in read_records(data_file(PASSAGES_FILE))[:FAITHFULNESS_PASSAGES]:
        kept = [(i, s) for i, s in enumerate(sentences(record["text"])) if len(s.split()) >= MIN_WORDS]
        per_passage.append([{"id": f"{record['id']}.s{i + 1}", "text": " ".join(s.split()[:-1])} for i, s in kept])
    longest = max((len(p) for p in per_passage), default=0)
    return [p[i] for i in range(longest) for p in per_passage if i < len(p)]


class FaithfulnessStudy(Study):
    """Attribution methods scored by erasing tokens in their order; runs itself (no generation)."""

    name = "faithfulness"
    config_class = FaithfulnessConfig
    primary = "comprehensiveness_aopc"
    metrics = ("comprehensiveness_aopc", "sufficiency_aopc", "deletion_area", "insertion_area")

    def load_data(self, config: ExperimentConfig) -> list[dict[str, Any]]:
        if config.dataset is None:
            records = shipped_prompts()
        elif is_local(config.dataset):
            path = Path(config.dataset).expanduser()
            if not path.is_file():
                raise ExperimentError(f"dataset {config.dataset!r} is a folder, not a prompt file")
            if path.suffix == ".txt":
                lines = [line.strip() for line in read_text(path).split("\n")]
                records = [{"id": f"line{n}", "text": line} for n, line in enumerate(lines, start=1) if line]
            else:
                records = read_records(path)
        else:
            raise ExperimentError(f"dataset {config.dataset!r}: the faithfulness experiment reads a local "
                                  ".txt (one prompt a line), .jsonl or .json file")
        for n, record in enumerate(records):
            if not isinstance(record, dict) or not isinstance(record.get("text"), str) or not record["text"].strip():
                raise ExperimentError(f"prompt {n} of {config.dataset or 'the shipped data'} has no 'text'")
            record.setdefault("id", f"p{n + 1:03d}")
            record["id"] = str(record["id"])
        if not records:
            raise ExperimentError(f"{config.dataset or 'the shipped data'} has no prompts")
        check_unique_ids(records, f"the faithfulness data ({config.dataset or 'shipped'})")
        return records[:config.limit] if config.limit else records

    def data_fingerprints(self, data: Any) -> dict[str, str]:
        from .store import fingerprint

        return {f"item {r['id']}": fingerprint(r["text"]) for r in data}

    def items(self, data: Any, config: ExperimentConfig, tokenizer: Any) -> list[Item]:
        return [Item(r["id"], r) for r in data]

    def segments(self, item: Item, config: ExperimentConfig) -> Segments:  # the prompt is used as written
        return Segments(before=item.data["text"], focus="", after="")

    def score(self, items: Sequence[Item], outputs: Sequence[str], config: ExperimentConfig) -> list[Score]:
        raise ExperimentError("the faithfulness experiment scores prompts, not generations")

    # ------------------------------------------------------------------------- the run

    def run_study(self, config: ExperimentConfig, *, model: Any = None) -> ExperimentResult:
        """Run (or continue) the experiment in ``config.out``; see the module docstring."""
        config = _check(config)  # type: ignore[arg-type]
        data = self.load_data(config)
        out = Path(config.out).expanduser()
        try:
            out.mkdir(parents=True, exist_ok=True)
            with run_lock(out):
                return self._run(config, data, out, model)
        except OSError as exc:  # a read-only or full file system under the output directory
            where = Path(exc.filename) if exc.filename else None
            if where is None or where == out or out in where.parents or where in out.parents:
                raise ExperimentError(f"cannot write the results to {str(out)!r}: {exc.strerror or exc}; "
                                      "choose a writable output directory with free space") from None
            raise

    def _run(self, config: FaithfulnessConfig, data: list[dict[str, Any]], out: Path,
             model: Any) -> ExperimentResult:
        from ..attribution.faithfulness import evaluate_prompt

        rows_path = out / ROWS_FILE
        if config.fresh:
            for stale in (rows_path, out / RUN_FILE):
                stale.unlink(missing_ok=True)
        _check_run_file(out, config, self.name, data=self.data_fingerprints(data))
        names = [*config.methods, RANDOM]
        existing = read_rows(rows_path, repair=True)
        have: dict[str, set[str]] = {}
        for row in existing:
            have.setdefault(row["item"], set()).add(row["condition"])
        items = self.items(data, config, None)
        # a prompt is done when every method's row and the random row are in the file
        pending = [item for item in items if not set(names) <= have.get(item.id, set())]
        logger.info("faithfulness: %d prompt(s) to run, %d already in %s", len(pending),
                    len(items) - len(pending), rows_path)
        if pending and model is None:
            from ..runtime.models import load_model
            from ..runtime.distributed import sweep_device

            model = load_model(config.model, device=sweep_device())
        if model is not None:  # the model by its content: another one is refused
            from .provenance import model_identity
            from .store import check_model

            check_model(out, model_identity(model))
        _check_windows(model, pending, config.target)
        for item in tqdm(pending, desc=self.name, unit="prompt", disable=not pending):
            seed = zlib.crc32(f"{config.seed}|{item.id}".encode()) & 0x7FFFFFFF
            try:
                entry = evaluate_prompt(model, item.data["text"], config.methods, target=config.target,
                                        erase=config.erase, seeds=config.seeds, points=config.points,
                                        fractions=config.fractions, seed=seed)
            except ExperimentError:
                raise
            except AttnlensError as exc:
                raise ExperimentError(f"prompt {item.id}: {exc}") from None
            done = have.get(item.id, set())
            append_rows(rows_path, [_row(self.name, name, item, entry, seed) for name in names if name not in done])
        rows = [r for r in read_rows(rows_path) if r["item"] in {i.id for i in items} and r["condition"] in names]
        summary = summarize(rows, config.methods, self.metrics, config)
        summary_path = out / SUMMARY_FILE
        write_summary(summary_path, summary, self.metrics)
        write_pairs(out / PAIRS_FILE, rows, config.methods, self.metrics, config)
        return ExperimentResult(self.name, out, rows_path, summary_path, [out / PAIRS_FILE], summary,
                                self.metrics, len(pending), len(items) - len(pending))


def _check_windows(model: Any, items: Sequence[Item], target: str | None) -> None:
    """Every pending prompt tokenized and checked against the model's window before the first one runs: a
    prompt past the window is an ExperimentError naming it, not a full forward pass (minutes, gigabytes)
    that fails afterwards."""
    from ..attribution.tokens import check_fits

    for item in items:
        try:
            check_fits(model, item.data["text"], target, what=f"prompt {item.id}")
        except AttnlensError as exc:
            raise ExperimentError(str(exc)) from None


def _row(study: str, name: str, item: Item, entry: dict[str, Any], seed: int) -> dict[str, Any]:
    m = entry["metrics"][name]
    scalars = ("deletion_area", "insertion_area", "comprehensiveness_aopc", "sufficiency_aopc")
    return {
        "study": study, "condition": name, "method": name, "delta": 0.0, "item": item.id, "generation": 0,
        "seed": seed, "prompt_tokens": entry["n_prompt"], "n_erasable": entry["n_erasable"],
        "target_ids": entry["target_ids"], "full_logprob": entry["full_logprob"],
        "metrics": {k: float(m[k]) for k in scalars},
        "details": {k: v for k, v in m.items() if k not in scalars},
    }


def summarize(rows: Sequence[dict[str, Any]], methods: Sequence[str], metrics: Sequence[str],
              config: ExperimentConfig) -> list[ConditionSummary]:
    """Each method's (and the random orders') means with bootstrap intervals over prompts, and each
    method's paired difference from the random orders on the same prompts."""
    from .metrics import bootstrap_ci

    baseline = [r for r in rows if r["condition"] == RANDOM]
    out = []
    for name in [*methods, RANDOM]:
        mine = [r for r in rows if r["condition"] == name]
        estimates = {m: bootstrap_ci(list(per_item(mine, m).values()), confidence=config.confidence,
                                     resamples=config.bootstrap, seed=config.seed) for m in metrics}
        differences = ({m: paired_difference(mine, baseline, m, config) for m in metrics}
                       if name != RANDOM else {})
        n = len({r["item"] for r in mine})
        out.append(ConditionSummary(name, name, 0.0, n, len(mine), estimates, differences))
    return out


def pairs(rows: Sequence[dict[str, Any]], methods: Sequence[str], metrics: Sequence[str],
          config: ExperimentConfig) -> list[dict[str, Any]]:
    """For every pair of methods (``first`` before ``second`` in ``methods``): the mean of first minus second
    over the prompts both ran, with a paired bootstrap interval, per metric."""
    by = {name: [r for r in rows if r["condition"] == name] for name in methods}
    table = []
    for i, first in enumerate(methods):
        for second in methods[i + 1:]:
            line: dict[str, Any] = {"first": first, "second": second}
            for m in metrics:
                e = paired_difference(by[first], by[second], m, config)
                line.update({"items": e.n, m: _round(e.mean), f"{m}_low": _round(e.low),
                             f"{m}_high": _round(e.high)})
            table.append(line)
    return table


def write_pairs(path: Path, rows: Sequence[dict[str, Any]], methods: Sequence[str], metrics: Sequence[str],
                config: ExperimentConfig) -> Path:
    fields = ["first", "second", "items"] + [f"{m}{s}" for m in metrics for s in ("", "_low", "_high")]
    write_csv(path, pairs(rows, methods, metrics, config), fields)
    return path


__all__ = ["FAITHFULNESS_PASSAGES", "FaithfulnessConfig", "FaithfulnessStudy", "pairs", "shipped_prompts",
           "summarize"]
