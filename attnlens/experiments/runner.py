"""The shared experiment runner: conditions, batched generation, resumable JSONL, summaries.

A study (:class:`Study`) says what its items are, how to write the prompt of one
item (:class:`Segments`: the text before, the *focus* each condition emphasises,
the text after) and how to score an output. The runner does the rest, the same
way for every study:

- conditions (:class:`Condition`): ``none`` (the plain prompt), ``guide`` at each
  delta (the focus tagged, ``+delta`` on its keys in every head of the chosen
  layers), ``emphatic`` (the focus rewritten as ``IMPORTANT: ...`` in upper case,
  the plain-prompt alternative) and ``pasta`` (the focus steered on chosen heads);
- batched generation with left padding and one bias term per row;
- one JSONL row per generation, appended as batches finish; rows already in the
  file are skipped, so an interrupted run continues where it stopped;
- the focus span's influence at the last prompt token, per (condition, item);
- a summary CSV (per-condition means with bootstrap intervals over items) and plots.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import zlib
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..errors import AttnlensError
from ..steering.bias import BiasPlan, LayerSpec, apply_bias, resolve_layers
from ..tags import escape_tags
from .metrics import bootstrap_ci

logger = logging.getLogger(__name__)

#: the condition kinds, in the order they run
METHODS = ("none", "guide", "emphatic", "pasta")
ROWS_FILE = "rows.jsonl"
SUMMARY_FILE = "summary.csv"
RUN_FILE = "run.json"
#: run settings that change outputs: a directory holds rows made with one set of them
IDENTITY_FIELDS = (
    "model", "max_new_tokens", "layers", "seed", "do_sample", "temperature", "top_p",
    "dataset", "pasta_heads", "pasta_alpha", "chat",
)


class ExperimentError(AttnlensError):
    """A bad experiment setting (study, condition, delta, output directory, data set)."""


# ----------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class Condition:
    """One way of presenting the focus: ``none``, ``guide`` (with ``delta``), ``emphatic`` or ``pasta``."""

    method: str
    delta: float = 0.0

    @property
    def name(self) -> str:
        return f"guide@{self.delta:g}" if self.method == "guide" else self.method


@dataclass
class ExperimentConfig:
    """Settings shared by every study; see ``attnlens experiment --help``."""

    out: str | os.PathLike
    deltas: Sequence[float] = (0.0, 1.0, 2.0)
    conditions: Sequence[str] | None = None  # None: every applicable method
    layers: LayerSpec = "all"
    model: str | None = None
    max_new_tokens: int = 64
    num_generations: int = 1
    do_sample: bool | None = None  # None: sample when num_generations > 1
    temperature: float = 0.7
    top_p: float | None = 0.95
    batch_size: int = 16
    max_batch_tokens: int = 8192  # rows x padded length per batch
    seed: int = 0
    limit: int | None = None
    dataset: str | None = None
    dataset_split: str = "train"
    text_field: str = "text"
    pasta_heads: str | None = None
    pasta_alpha: float = 0.01
    influence: bool = True
    chat: bool | None = None  # None: use the chat template when the tokenizer has one
    bootstrap: int = 1000
    confidence: float = 0.95
    plots: bool = True
    fresh: bool = False

    def identity(self) -> dict[str, Any]:
        out = {name: getattr(self, name) for name in IDENTITY_FIELDS}
        out["layers"] = _layers_key(self.layers)
        out["do_sample"] = self.sampling
        if not self.sampling:
            out["temperature"] = out["top_p"] = None
        return out

    @property
    def sampling(self) -> bool:
        return self.num_generations > 1 if self.do_sample is None else bool(self.do_sample)


def _layers_key(layers: LayerSpec) -> Any:
    if isinstance(layers, (str, int)) or layers is None:
        return layers
    return list(layers)


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool):
        raise ExperimentError(f"{what} must be a number, got {value!r}")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ExperimentError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(x):
        raise ExperimentError(f"{what} must be finite, got {value!r}")
    return x


def _positive_int(value: Any, what: str, *, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ExperimentError(f"{what} must be a positive integer, got {value!r}")
    return value


def resolve_conditions(config: ExperimentConfig) -> list[Condition]:
    """The conditions a config asks for, validated (GUIDE at delta 0 is the ``none`` condition)."""
    if isinstance(config.deltas, (str, bytes)) or not isinstance(config.deltas, Iterable):
        raise ExperimentError(f"deltas must be a list of numbers, got {config.deltas!r}")
    deltas = [_number(d, f"delta {d!r}") for d in config.deltas]
    methods = list(config.conditions) if config.conditions else None
    if methods is None:
        methods = ["none", "guide", "emphatic"] + (["pasta"] if config.pasta_heads else [])
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ExperimentError(
            f"unknown condition(s) {', '.join(map(repr, unknown))}; choose from {', '.join(METHODS)}"
        )
    if "pasta" in methods and not config.pasta_heads:
        raise ExperimentError("the 'pasta' condition needs a head configuration: pass pasta_heads (--pasta-heads FILE)")
    if "guide" in methods and not deltas:
        raise ExperimentError("the 'guide' condition needs at least one delta")
    out: list[Condition] = []
    for method in METHODS:
        if method not in methods:
            continue
        if method == "guide":
            for d in deltas:
                cond = Condition("none") if d == 0 else Condition("guide", d)
                if cond not in out:
                    out.append(cond)
        elif Condition(method) not in out:
            out.append(Condition(method))
    return out


def validate_config(config: ExperimentConfig) -> list[Condition]:
    """Check every setting that can be checked without a model; returns the conditions."""
    conditions = resolve_conditions(config)
    _positive_int(config.max_new_tokens, "max_new_tokens")
    _positive_int(config.num_generations, "num_generations")
    _positive_int(config.batch_size, "batch_size")
    _positive_int(config.max_batch_tokens, "max_batch_tokens")
    _positive_int(config.limit, "limit", allow_none=True)
    if isinstance(config.seed, bool) or not isinstance(config.seed, int):
        raise ExperimentError(f"seed must be an integer, got {config.seed!r}")
    if _number(config.temperature, "temperature") <= 0:
        raise ExperimentError(f"temperature must be > 0, got {config.temperature!r}")
    if config.top_p is not None and not 0 < _number(config.top_p, "top_p") <= 1:
        raise ExperimentError(f"top_p must be in (0, 1], got {config.top_p!r}")
    if not 0 < _number(config.pasta_alpha, "pasta_alpha") <= 1:
        raise ExperimentError(f"pasta_alpha must be in (0, 1], got {config.pasta_alpha!r}")
    if not 0 < _number(config.confidence, "confidence") < 1:
        raise ExperimentError(f"confidence must be in (0, 1), got {config.confidence!r}")
    if config.num_generations > 1 and config.do_sample is False:
        raise ExperimentError(
            "greedy decoding makes every generation of an item identical: "
            "use num_generations=1 or sampling (do_sample)"
        )
    try:  # syntax only; the range is checked against the model
        resolve_layers(config.layers, 10**6)
    except AttnlensError as exc:
        raise ExperimentError(f"layers: {exc}") from None
    out = Path(config.out).expanduser()
    if out.exists() and not out.is_dir():
        raise ExperimentError(f"output directory {str(out)!r} is a file")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ExperimentError(f"output directory {str(out)!r}: {str(parent)!r} is a file")
            break
    return conditions


# ----------------------------------------------------------------------------- studies


@dataclass(frozen=True)
class Segments:
    """A prompt in three parts: each condition presents ``focus`` differently."""

    before: str
    focus: str
    after: str
    system: str | None = None


@dataclass(frozen=True)
class Item:
    """One unit of a study: an id, the study's fields and the fields rows are grouped by."""

    id: str
    data: Mapping[str, Any]
    groups: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Score:
    """An output's numeric metrics (averaged in summaries) and any other details kept in the row."""

    metrics: Mapping[str, float]
    details: Mapping[str, Any] = field(default_factory=dict)


class Study(ABC):
    """What one experiment measures; the runner generates and records."""

    name: str = ""
    #: the metric plotted against delta
    primary: str = ""
    #: every numeric metric :meth:`score` returns, in the order the summary lists them
    metrics: tuple[str, ...] = ()
    #: item fields the rows carry for breakdowns (needle: length, depth)
    group_fields: tuple[str, ...] = ()

    @abstractmethod
    def load_data(self, config: ExperimentConfig) -> Any:
        """The raw data (shipped files, a local file or a Hugging Face data set); runs before the model loads."""

    @abstractmethod
    def items(self, data: Any, config: ExperimentConfig, tokenizer: Any) -> list[Item]:
        """The study's items (``config.limit`` applied)."""

    @abstractmethod
    def segments(self, item: Item, config: ExperimentConfig) -> Segments:
        """The prompt of an item, with its focus."""

    def metric_names(self, config: ExperimentConfig) -> tuple[str, ...]:
        """The metrics a run with ``config`` records (:attr:`metrics` unless a setting adds some)."""
        return self.metrics

    def emphatic(self, focus: str) -> str:
        """The plain-prompt emphasis of the focus: ``IMPORTANT:`` and upper case."""
        return "IMPORTANT: " + focus.strip().upper()

    @abstractmethod
    def score(self, items: Sequence[Item], outputs: Sequence[str], config: ExperimentConfig) -> list[Score]:
        """Score each output against its item."""

    def extra_outputs(self, rows: Sequence[Mapping[str, Any]], out: Path, config: ExperimentConfig) -> list[Path]:
        """Study-specific tables and plots; returns the files written."""
        return []


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


# ----------------------------------------------------------------------------- rows on disk


def row_key(condition: str, item: str, generation: int) -> str:
    return f"{condition}|{item}|{generation}"


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSONL file; a damaged line (an interrupted write) is dropped and the file repaired."""
    if not path.exists():
        return []
    rows, bad = [], 0
    with path.open(encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if isinstance(row, dict) and {"condition", "item", "generation"} <= row.keys():
                rows.append(row)
            else:
                bad += 1
    if bad:
        logger.warning("dropping %d damaged line(s) from %s", bad, path)
        tmp = path.with_suffix(".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        tmp.replace(path)
    return rows


def _check_run_file(out: Path, config: ExperimentConfig, study: str) -> None:
    run_file = out / RUN_FILE
    identity = {"study": study, **config.identity()}
    if run_file.exists():
        try:
            previous = json.loads(run_file.read_text())
        except json.JSONDecodeError:
            previous = None
        if isinstance(previous, dict):
            diff = [k for k in identity if previous.get(k) != identity[k]]
            if diff:
                detail = ", ".join(f"{k}={previous.get(k)!r} (now {identity[k]!r})" for k in diff)
                raise ExperimentError(
                    f"{str(out)!r} holds results made with other settings: {detail}; "
                    "choose another output directory or start afresh (--fresh)"
                )
    run_file.write_text(json.dumps(identity, indent=1))


# ----------------------------------------------------------------------------- the run


@dataclass
class _Job:
    condition: Condition
    item: Item
    generation: int
    prompt: Any  # pipeline.Prompt

    @property
    def key(self) -> str:
        return row_key(self.condition.name, self.item.id, self.generation)


def tag_focus(condition: Condition, focus: str) -> str:
    """The focus as the condition presents it, wrapped in a GUIDE tag (``guide``) or an influence tag."""
    opener, closer = ("<!!->", "<-!!>") if condition.method == "guide" else ("<?->", "<-?>")
    # the focus' surrounding whitespace stays outside the span
    lead = focus[: len(focus) - len(focus.lstrip())]
    trail = focus[len(focus.rstrip()) :]
    return f"{lead}{opener}{escape_tags(focus.strip())}{closer}{trail}"


def build_messages(study: Study, item: Item, condition: Condition,
                   config: ExperimentConfig) -> list[dict[str, str]]:
    """The chat of one item under one condition; the focus carries a GUIDE or influence tag."""
    seg = study.segments(item, config)
    focus = study.emphatic(seg.focus) if condition.method == "emphatic" else seg.focus
    content = escape_tags(seg.before) + tag_focus(condition, focus) + escape_tags(seg.after)
    messages = [{"role": "system", "content": escape_tags(seg.system)}] if seg.system else []
    messages.append({"role": "user", "content": content})
    return messages


def _prepare(study: Study, item: Item, condition: Condition, tokenizer: Any, chat: bool,
             config: ExperimentConfig) -> Any:
    from ..pipeline import prepare

    messages = build_messages(study, item, condition, config)
    if chat:
        prompt = prepare(tokenizer, messages, delta_mid=condition.delta or 1.0, chat=True)
    else:
        text = "\n\n".join(m["content"] for m in messages)
        prompt = prepare(tokenizer, text, delta_mid=condition.delta or 1.0, chat=False)
    if len(prompt.spans) != 1:
        raise ExperimentError(f"item {item.id}: expected one focus span in the prompt, found {len(prompt.spans)}")
    return prompt


def _focus(prompt: Any) -> tuple[int, int]:
    span = prompt.spans[0]
    return span.start, span.end


def _condition_plan(model: Any, condition: Condition, prompt: Any, config: ExperimentConfig,
                    head_config: Any, row: int | None) -> BiasPlan:
    plan = BiasPlan.for_model(model)
    start, end = _focus(prompt)
    if condition.method == "guide":
        plan.add(start, end, condition.delta, layers=config.layers, row=row)
    elif condition.method == "pasta":
        from ..steering.pasta import pasta_plan

        pasta = pasta_plan(model, [(start, end)], head_config, alpha=config.pasta_alpha,
                           scale_position="exclude", seq_len=len(prompt.input_ids))
        plan.terms.extend(dataclasses.replace(t, row=row) for t in pasta.terms)
    return plan


def _batches(jobs: list[_Job], batch_size: int, max_tokens: int) -> list[list[_Job]]:
    """Jobs of one condition, longest first, in batches under both limits."""
    jobs = sorted(jobs, key=lambda j: -len(j.prompt.input_ids))
    out: list[list[_Job]] = []
    current: list[_Job] = []
    for job in jobs:
        width = max([len(job.prompt.input_ids)] + [len(j.prompt.input_ids) for j in current])
        if current and (len(current) >= batch_size or width * (len(current) + 1) > max_tokens):
            out.append(current)
            current = []
        current.append(job)
    if current:
        out.append(current)
    return out


def _batch_seed(config: ExperimentConfig, jobs: Sequence[_Job]) -> int:
    return zlib.crc32(f"{config.seed}|{jobs[0].key}".encode()) & 0x7FFFFFFF


_INFLUENCE_WARNED = False


def _influence(model: Any, prompt: Any, plan: BiasPlan) -> float | None:
    """The focus span's influence on the last prompt token at the last layer, under the condition's plan."""
    global _INFLUENCE_WARNED
    try:
        from ..attribution.influence import trace_influence
    except ImportError:
        if not _INFLUENCE_WARNED:
            logger.warning("attnlens.attribution.influence is not available: rows record no influence")
            _INFLUENCE_WARNED = True
        return None
    import torch

    with apply_bias(model, plan), torch.no_grad():
        trace = trace_influence(model, list(prompt.input_ids), [_focus(prompt)], methods=("influence",),
                                progress=False)  # the run's own bar shows progress
    return float(trace["influence"][0, -1, -1])


def _decode(tokenizer: Any, tokens: Sequence[int]) -> str:
    return tokenizer.decode(list(tokens), skip_special_tokens=True).strip()


def run_experiment(
    study: Study | str,
    config: ExperimentConfig,
    *,
    model: Any = None,
) -> ExperimentResult:
    """Run (or continue) one study; see the module docstring.

    Every setting is checked and the data loaded before the model: a bad input
    fails fast. ``model`` may be a loaded bridge; otherwise ``config.model`` is
    loaded (``None``: the embedded model).
    """
    if isinstance(study, str):
        from . import get_study

        study = get_study(study)
    conditions = validate_config(config)
    data = study.load_data(config)
    head_config = None
    if any(c.method == "pasta" for c in conditions):
        head_config = _load_heads(config.pasta_heads)

    out = Path(config.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    rows_path = out / ROWS_FILE
    if config.fresh:
        for stale in (rows_path, out / RUN_FILE):
            if stale.exists():
                stale.unlink()
    _check_run_file(out, config, study.name)
    existing = read_rows(rows_path)
    done = {row_key(r["condition"], r["item"], int(r["generation"])) for r in existing}

    if model is None:
        from ..models import load_model

        model = load_model(config.model)
    tokenizer = model.tokenizer
    resolve_layers(config.layers, model.cfg.n_layers)
    chat = config.chat if config.chat is not None else getattr(tokenizer, "chat_template", None) is not None
    study.window = getattr(model.cfg, "n_ctx", None)  # studies that fill a context fit it to the window
    items = study.items(data, config, tokenizer)
    if not items:
        raise ExperimentError(f"the {study.name} study has no items to run")

    jobs_by_condition: dict[Condition, list[_Job]] = {}
    prompts: dict[tuple[str, str], Any] = {}
    for condition in conditions:
        pending = []
        for item in items:
            for g in range(config.num_generations):
                if row_key(condition.name, item.id, g) in done:
                    continue
                key = (condition.name, item.id)
                if key not in prompts:
                    prompts[key] = _prepare(study, item, condition, tokenizer, chat, config)
                pending.append(_Job(condition, item, g, prompts[key]))
        jobs_by_condition[condition] = pending
    total = sum(len(v) for v in jobs_by_condition.values())
    n_ctx = getattr(model.cfg, "n_ctx", None)
    if n_ctx:
        longest = max((len(p.input_ids) for p in prompts.values()), default=0)
        if longest + config.max_new_tokens > n_ctx:
            raise ExperimentError(
                f"a prompt of {longest} tokens plus {config.max_new_tokens} new tokens exceeds the model's "
                f"context of {n_ctx} tokens"
            )
    logger.info("%s: %d generations to run, %d already in %s", study.name, total, len(done), rows_path)

    influences: dict[tuple[str, str], float | None] = {}
    generated = 0
    with tqdm(total=total, desc=study.name, unit="gen", disable=total == 0) as bar, \
            rows_path.open("a", encoding="utf-8") as sink:
        for condition, pending in jobs_by_condition.items():
            for batch in _batches(pending, config.batch_size, config.max_batch_tokens):
                bar.set_description(f"{study.name} {condition.name}")
                bar.set_postfix_str(f"item {batch[0].item.id}" + (f" (+{len(batch) - 1})" if len(batch) > 1 else ""))
                rows = _run_batch(model, study, condition, batch, config, head_config, influences)
                for row in rows:
                    sink.write(json.dumps(row, ensure_ascii=False) + "\n")
                sink.flush()
                generated += len(rows)
                bar.update(len(rows))

    keep_conditions = {c.name for c in conditions}
    keep_items = {i.id for i in items}
    all_rows = [r for r in read_rows(rows_path) if r["condition"] in keep_conditions and r["item"] in keep_items]
    declared = study.metric_names(config)
    found = sorted({m for r in all_rows for m in r.get("metrics", {})} - set(declared))
    metrics = declared + tuple(found) + ("influence",)
    summary = summarize_rows(all_rows, conditions, metrics, config)
    summary_path = out / SUMMARY_FILE
    write_summary(summary_path, summary, metrics)
    plots: list[Path] = []
    if config.plots:
        from . import plots as plotting

        plots.append(plotting.accuracy_vs_delta(summary, study.primary, out / "accuracy_vs_delta.html",
                                                title=f"{study.name}: {study.primary} by condition"))
    plots.extend(study.extra_outputs(all_rows, out, config))
    return ExperimentResult(study.name, out, rows_path, summary_path, plots, summary,
                            metrics, generated, len(done))


def _load_heads(path: Any) -> Any:
    try:
        from ..steering.pasta import load_head_config
    except ImportError:
        raise ExperimentError("PASTA steering is not available in this installation") from None
    if not Path(str(path)).expanduser().is_file():
        raise ExperimentError(f"PASTA head configuration {str(path)!r} is not a file")
    return load_head_config(path)


def _run_batch(model: Any, study: Study, condition: Condition, batch: list[_Job], config: ExperimentConfig,
               head_config: Any, influences: dict[tuple[str, str], float | None]) -> list[dict[str, Any]]:
    from ..generation import generate_batch

    if config.influence:
        for job in batch:
            key = (condition.name, job.item.id)
            if key not in influences:
                single = _condition_plan(model, condition, job.prompt, config, head_config, None)
                influences[key] = _influence(model, job.prompt, single)
    plan = BiasPlan.for_model(model)
    for r, job in enumerate(batch):
        plan.extend(_condition_plan(model, condition, job.prompt, config, head_config, r))
    seed = _batch_seed(config, batch)
    sample_kwargs: dict[str, Any] = {}
    if config.sampling:
        sample_kwargs = {"do_sample": True, "temperature": config.temperature, "top_p": config.top_p, "seed": seed}
    new_tokens = generate_batch(model, [j.prompt.input_ids for j in batch], [plan] if plan.terms else [],
                                max_new_tokens=config.max_new_tokens, **sample_kwargs)
    outputs = [_decode(model.tokenizer, t) for t in new_tokens]
    scores = study.score([j.item for j in batch], outputs, config)
    rows = []
    for job, output, tokens, score in zip(batch, outputs, new_tokens, scores):
        start, end = _focus(job.prompt)
        rows.append({
            "study": study.name,
            "condition": condition.name,
            "method": condition.method,
            "delta": condition.delta,
            "item": job.item.id,
            "generation": job.generation,
            **{k: job.item.groups[k] for k in study.group_fields if k in job.item.groups},
            "seed": seed if config.sampling else None,
            "prompt_tokens": len(job.prompt.input_ids),
            "focus_span": [start, end],
            "new_tokens": len(tokens),
            "output": output,
            "metrics": {k: float(v) for k, v in score.metrics.items()},
            "influence": influences.get((condition.name, job.item.id)) if config.influence else None,
            **({"details": dict(score.details)} if score.details else {}),
        })
    return rows


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


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]], fields: Sequence[str]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k) for k in fields})

