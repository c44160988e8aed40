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
- under ``torchrun`` (several workers), each worker runs every ``world_size``-th
  batch into its own part file and rank 0 merges them into ``rows.jsonl`` in
  (condition, item, generation) order, as one process does
  (:mod:`attnlens.runtime.distributed`);
- the focus span's influence at the last prompt token, per (condition, item);
- a summary CSV (per-condition means with bootstrap intervals over items) and plots.
"""

from __future__ import annotations

import dataclasses
import logging
import zlib
from collections import Counter
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..core.errors import ExperimentError
from ..core.model import context_window
from ..core.validate import resolve_layers
from ..api import chain
from ..attribution.influence import trace_influence
from ..prompts.prompt import Prompt, tokenize_prompt
from ..core.resumable import ShardedRows
from ..runtime.distributed import Workers, sweep_device, worker_group
from .. import steering
from ..core.errors import AttnlensError
from ..steering.edits import install
from .schedule import batches
from ..steering.guide import with_strength
from .config import Condition, ExperimentConfig, validate_config
from .store import ROWS_FILE, RUN_FILE, SUMMARY_FILE, _check_run_file, row_key, run_lock, sharded_rows
from .study import Item, Study, build_messages
from .summary import ExperimentResult, small_n_notes, summarize_rows, write_summary

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- the run


@dataclass
class _Job:
    condition: Condition
    item: Item
    generation: int
    prompt: Prompt

    @property
    def key(self) -> str:
        return row_key(self.condition.name, self.item.id, self.generation)


def prepare_item(study: Study, item: Item, condition: Condition, tokenizer: Any, chat: bool,
             config: ExperimentConfig) -> Prompt:
    """The item's prompt under ``condition``: one focus span (its method's tag, or an emphasis) with its strength."""
    messages = build_messages(study, item, condition, config)
    item_input: Any = messages if chat else "\n\n".join(m["content"] for m in messages)
    prompt = tokenize_prompt(tokenizer, item_input, chat=chat)
    if len(prompt.spans) != 1:
        raise ExperimentError(f"item {item.id}: expected one focus span in the prompt, found {len(prompt.spans)}")
    prompt = with_strength(prompt, condition.delta or 0.0)
    if condition.method in steering.methods():  # the focus is the kind of span the method steers
        kind = steering.get(condition.method).spans
        prompt = dataclasses.replace(prompt, spans=tuple(dataclasses.replace(s, kind=kind) for s in prompt.spans))
    return prompt


def _focus(prompt: Prompt) -> tuple[int, int]:
    span = prompt.spans[0]
    return span.start, span.end


def _condition_plans(model: Any, condition: Condition, prompts: Sequence[Prompt], config: ExperimentConfig,
                     settings: dict[str, dict[str, Any]]) -> list[Any]:
    """The condition's steerings for ``prompts`` (one row each), through the chain every caller shares."""
    steer = {condition.method: settings[condition.method]} if condition.method in settings else {}
    return chain.plans_for(model, prompts, steer=steer)


def _method_settings(config: ExperimentConfig, conditions: Sequence[Condition]) -> dict[str, dict[str, Any]]:
    """Each steering condition's method settings, checked before the model loads."""
    out: dict[str, dict[str, Any]] = {}
    for condition in conditions:
        if condition.method in out or condition.method not in steering.methods():
            continue
        method = steering.get(condition.method)
        try:
            out[condition.method] = method.settings(method.experiment_settings(config))
        except AttnlensError as exc:
            raise ExperimentError(f"the {condition.method!r} condition: {exc}") from None
    return out


def _batches(jobs: list[_Job], batch_size: int, max_tokens: int) -> list[list[_Job]]:
    """Jobs of one condition, longest first, in batches under both limits."""
    return [[jobs[i] for i in batch]
            for batch in batches([len(j.prompt.input_ids) for j in jobs], batch_size, max_tokens)]


#: under greedy decoding, conditions whose rows can share a batch are scheduled together (False: each
#: condition's rows in batches of their own, as sampled runs always are)
STREAM_CONDITIONS = True


def _stream(model: Any, jobs_by_condition: dict[Condition, list[_Job]], config: ExperimentConfig,
            method_settings: Any) -> list[list[_Job]]:
    """The run's batches. Greedy runs put every condition's rows in one stream: rows without steering
    (``none``, ``emphatic``) share batches, a method whose steering is a static bias (GUIDE at every
    delta, InstABoost, PASTA) puts all its conditions' rows in the same batches, each row with its own
    plan; a run-time edit keeps each condition apart. Each group's rows are sorted by length and batched
    under both limits. A sampled run keeps one condition per batch (a batch's seed draws its samples)."""
    if config.sampling or not STREAM_CONDITIONS:
        return [batch for pending in jobs_by_condition.values()
                for batch in _batches(pending, config.batch_size, config.max_batch_tokens)]
    groups: dict[Any, list[_Job]] = {}
    for condition, pending in jobs_by_condition.items():
        if not pending:
            continue
        if _steers(model, condition, pending[0].prompt, config, method_settings) is None:
            name: Any = ("plain",)
        elif _static_condition(model, condition, pending, config, method_settings):
            name = ("static", condition.method)
        else:
            name = ("edit", condition.name)
        groups.setdefault(name, []).extend(pending)
    return [batch for pending in groups.values()
            for batch in _batches(pending, config.batch_size, config.max_batch_tokens)]


def _steers(model: Any, condition: Condition, prompt: Prompt, config: ExperimentConfig,
            method_settings: Any) -> Any:
    """None when ``condition`` steers nothing (no method, or not a steering one)."""
    return condition.method if condition.method in method_settings else None


def _static_condition(model: Any, condition: Condition, jobs: Sequence[_Job], config: ExperimentConfig,
                      method_settings: Any) -> bool:
    """Whether every row's steering under ``condition`` is a static bias (a BiasPlan)."""
    from .schedule import _static

    return all(_static(_condition_plans(model, condition, [job.prompt], config, method_settings))
               for job in jobs)


def _batch_plans(model: Any, batch: Sequence[_Job], config: ExperimentConfig, method_settings: Any) -> list[Any]:
    """The steerings of a batch: one condition's plans for all its rows, or, for rows of several conditions
    of one static-bias method, each row's own plan stacked."""
    conditions = list(dict.fromkeys(j.condition for j in batch))
    if len(conditions) == 1:
        return _condition_plans(model, conditions[0], [j.prompt for j in batch], config, method_settings)
    from .schedule import _stacked

    return _stacked(model, [_condition_plans(model, j.condition, [j.prompt], config, method_settings)
                            for j in batch])


def _batch_seed(config: ExperimentConfig, jobs: Sequence[_Job]) -> int:
    return zlib.crc32(f"{config.seed}|{jobs[0].key}".encode()) & 0x7FFFFFFF


def _influence(model: Any, prompt: Prompt, plans: Sequence[Any]) -> float:
    """The focus span's influence on the last prompt token at the last layer, under the condition's plans."""
    import torch

    with ExitStack() as stack, torch.no_grad():
        for plan in plans:
            stack.enter_context(install(model, plan))
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
    own_run = getattr(study, "run_study", None)
    if callable(own_run):  # a study that runs itself (no generation: faithfulness)
        return own_run(config, model=model)
    conditions = validate_config(config)
    data = study.load_data(config)
    method_settings = _method_settings(config, conditions)

    out = Path(config.out).expanduser()
    try:
        with worker_group() as workers, ExitStack() as hold:
            if workers.is_main:
                # one launch per folder: a second run (or sweep) on it would double every row; under
                # torchrun a worker that fails ends its sweep, so the others do not wait for it
                out.mkdir(parents=True, exist_ok=True)
                hold.enter_context(run_lock(out))
            return _run(study, config, conditions, data, method_settings, out, model, workers)
    except OSError as exc:  # a read-only or full file system under the output directory
        where = Path(exc.filename) if exc.filename else None
        if where is None or where == out or out in where.parents or where in out.parents:
            raise ExperimentError(
                f"cannot write the results to {str(out)!r}: {exc.strerror or exc}"
                + (f" ({exc.filename})" if exc.filename else "")
                + "; choose a writable output directory with free space"
            ) from None
        raise


def _run(study: Study, config: ExperimentConfig, conditions: list[Condition], data: Any, method_settings: Any,
         out: Path, model: Any, workers: Workers) -> ExperimentResult:
    """The run on one worker of ``workers`` (all of them run this, each its shard of the batches)."""
    store = sharded_rows(out / ROWS_FILE, workers)
    done = _resume(study, config, data, out, store, workers)
    model = _checked_model(model, config, out, workers)
    chat = config.chat if config.chat is not None else getattr(model.tokenizer, "chat_template", None) is not None
    items = _run_items(study, data, config, model)
    jobs_by_condition, prompts = _pending_jobs(study, conditions, items, config, model.tokenizer, chat, done)
    _check_context(model, prompts, config)
    # the unit of work is a batch: every worker forms the same batches, so a row's batch
    # (its padding, its seed) is the one-process run's, and takes every world_size-th one
    units = [(batch[0].condition, batch) for batch in _stream(model, jobs_by_condition, config, method_settings)]
    mine = workers.mine(units)
    logger.info("%s: worker %d/%d runs %d generations; %d to run in all, %d already in %s", study.name,
                workers.rank, workers.world_size, sum(len(b) for _, b in mine), sum(len(b) for _, b in units),
                len(done), store.merged)
    generated = _generate_rows(model, study, config, method_settings, store, mine)
    all_rows = _merged_rows(store, conditions, items)
    summary, metrics, plots = _report(study, config, conditions, all_rows, out, workers)
    workers.barrier()
    return ExperimentResult(study.name, out, store.merged, out / SUMMARY_FILE, plots, summary,
                            metrics, generated, len(done), small_n_notes(summary))


def _resume(study: Study, config: ExperimentConfig, data: Any, out: Path, store: ShardedRows,
            workers: Workers) -> set[str]:
    """Check (and on rank 0 record) the folder's settings and data; the keys of the rows already on disk.

    ``--fresh`` removes the rows, their parts and the run file first. Every worker reads the same
    rows before any of them writes, so they agree on what is pending."""
    if workers.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if config.fresh:
            for stale in (store.merged, out / RUN_FILE, *store.part_files()):
                stale.unlink(missing_ok=True)
        _check_run_file(out, config, study.name, data=study.data_fingerprints(data))
    workers.barrier()
    if not workers.is_main:
        _check_run_file(out, config, study.name, write=False, data=study.data_fingerprints(data))
    done = {row_key(r["condition"], r["item"], int(r["generation"])) for r in store.read_all()}
    workers.barrier()
    return done


def _checked_model(model: Any, config: ExperimentConfig, out: Path, workers: Workers) -> Any:
    """The model (``config.model`` loaded on this worker's device when none is given), checked against the
    folder by its content (another one is refused), with what made the run recorded."""
    if model is None:
        from ..runtime.models import load_model

        model = load_model(config.model, device=sweep_device())
    if workers.is_main:
        from .provenance import model_identity, run_provenance
        from .store import check_model, record_provenance

        check_model(out, model_identity(model))
        record_provenance(out, run_provenance(config.model, model))
    return model


def _run_items(study: Study, data: Any, config: ExperimentConfig, model: Any) -> list[Item]:
    """The study's items for this model (its layers checked, its window told to the study)."""
    resolve_layers(config.layers, model.cfg.n_layers)
    study.window = getattr(model.cfg, "n_ctx", None)  # studies that fill a context fit it to the window
    items = study.items(data, config, model.tokenizer)
    if not items:
        raise ExperimentError(f"the {study.name} study has no items to run")
    _check_unique_ids(study.name, items)
    return items


def _pending_jobs(study: Study, conditions: Sequence[Condition], items: Sequence[Item], config: ExperimentConfig,
                  tokenizer: Any, chat: bool, done: set[str]
                  ) -> tuple[dict[Condition, list[_Job]], dict[tuple[str, str], Prompt]]:
    """Each condition's generations not on disk, and the prompt of every (condition, item) they need."""
    jobs_by_condition: dict[Condition, list[_Job]] = {}
    prompts: dict[tuple[str, str], Prompt] = {}
    for condition in conditions:
        pending = []
        for item in items:
            for g in range(config.num_generations):
                if row_key(condition.name, item.id, g) in done:
                    continue
                key = (condition.name, item.id)
                if key not in prompts:
                    prompts[key] = prepare_item(study, item, condition, tokenizer, chat, config)
                pending.append(_Job(condition, item, g, prompts[key]))
        jobs_by_condition[condition] = pending
    return jobs_by_condition, prompts


def _check_context(model: Any, prompts: dict[tuple[str, str], Prompt], config: ExperimentConfig) -> None:
    """Every pending prompt, with its new tokens, fits the model's context."""
    n_ctx = context_window(model)
    if n_ctx:
        longest = max((len(p.input_ids) for p in prompts.values()), default=0)
        if longest + config.max_new_tokens > n_ctx:
            raise ExperimentError(
                f"a prompt of {longest} tokens plus {config.max_new_tokens} new tokens exceeds the model's "
                f"context of {n_ctx} tokens"
            )


#: a greedy run's unsteered and static-bias batches are generated in continuous batches of this many of
#: the run's batches at a time (rows join and leave between steps); each such chunk's rows are scored and
#: saved when it ends (scoring runs the model, which a continuous batch holds with its steering installed)
CONTINUOUS_CHUNK = 4


def _continuous_kind(model: Any, condition: Condition, batch: Sequence[_Job], config: ExperimentConfig,
                     method_settings: Any) -> Any:
    """How a batch can join a continuous batch: ("plain",), ("static", method), ("edit", condition) for
    one condition's run-time edit of attention (SpotLight), or None (SPA's own decoding). Whether the run
    uses continuous batches at all is the caller's (:func:`_generate_rows`)."""
    from ..runtime.continuous import joinable

    if _steers(model, condition, batch[0].prompt, config, method_settings) is None:
        return ("plain",)
    if _static_condition(model, condition, batch, config, method_settings) and \
            all(j.condition.method == condition.method for j in batch):
        return ("static", condition.method)
    if all(j.condition == condition for j in batch) and all(
            joinable(_condition_plans(model, condition, [j.prompt], config, method_settings), edits=True)
            for j in batch):
        return ("edit", condition.name)
    return None


def _continuous_tokens(model: Any, units: Sequence[tuple[Condition, list[_Job]]], config: ExperimentConfig,
                       method_settings: Any, out: list[Any], missing: list[int], edits: bool = False) -> None:
    """Every row of ``units`` generated in one continuous batch: each unit's new tokens into ``out`` (a
    :class:`~attnlens.runtime.generate.Generation` per unit), ``missing[u]`` counting down to 0 as unit
    ``u``'s rows end (so a caller interrupted midway knows which units are whole)."""
    from ..runtime.continuous import Row, generate_rows

    rows = []
    for u, (_, batch) in enumerate(units):
        for k, job in enumerate(batch):
            plans = [] if _steers(model, job.condition, job.prompt, config, method_settings) is None else \
                _condition_plans(model, job.condition, [job.prompt], config, method_settings)
            rows.append(Row(list(map(int, job.prompt.input_ids)), plans, key=(u, k)))
    for (u, k), tokens in generate_rows(model, rows, max_new_tokens=config.max_new_tokens,
                                        batch_size=config.batch_size, max_tokens=config.max_batch_tokens,
                                        min_rows=min(8, config.batch_size), edits=edits):
        out[u][k] = tokens
        missing[u] -= 1


def _generate_rows(model: Any, study: Study, config: ExperimentConfig, method_settings: Any, store: ShardedRows,
                   mine: Sequence[tuple[Condition, list[_Job]]]) -> int:
    """Run this worker's batches, appending each batch's rows as it finishes; the number of rows.

    Greedy runs generate consecutive unsteered (or one static-bias method's) batches in a continuous
    batch, :data:`CONTINUOUS_CHUNK` batches at a time, so no row waits for the slowest of its batch."""
    from ..runtime.continuous import continuous_reason
    from ..runtime.generate import Generation

    total = sum(len(batch) for _, batch in mine)
    influences: dict[tuple[str, str], float | None] = {}
    generated = 0
    # sampled runs keep each batch's seed; a model with a hook of the user's on it cannot run one
    continuous = not config.sampling and STREAM_CONDITIONS and continuous_reason(model, busy_ok=True) is None
    kinds = [_continuous_kind(model, c, b, config, method_settings) if continuous else None for c, b in mine]
    with tqdm(total=total, desc=study.name, unit="gen", disable=total == 0) as bar, store.writer() as write:
        i = 0
        while i < len(mine):
            j = i + 1
            if kinds[i] is not None:
                while j < len(mine) and j - i < CONTINUOUS_CHUNK and kinds[j] == kinds[i]:
                    j += 1
            chunk = mine[i:j]
            names = list(dict.fromkeys(job.condition.name for _, batch in chunk for job in batch))
            bar.set_description(f"{study.name} {names[0]}" + (f" (+{len(names) - 1})" if len(names) > 1 else ""))
            bar.set_postfix_str(f"item {chunk[0][1][0].item.id}")
            made: list[Any] | None = None
            missing = [len(batch) for _, batch in chunk]

            def finish(u: int) -> int:
                condition, batch = chunk[u]
                rows = _run_batch(model, study, condition, batch, config, method_settings, influences,
                                  new_tokens=None if made is None else made[u])
                write(rows)
                bar.update(len(rows))
                return len(rows)

            if kinds[i] is not None:
                made = [Generation([[] for _ in batch], backend="direct") for _, batch in chunk]  # run directly
                try:
                    _continuous_tokens(model, chunk, config, method_settings, made, missing,
                                       edits=kinds[i][0] == "edit")
                except BaseException:  # the batches whose rows all ended are scored and saved, then it fails
                    for u in range(len(chunk)):
                        if missing[u] == 0:
                            generated += finish(u)
                    raise
            for u in range(len(chunk)):
                generated += finish(u)
            i = j
    return generated


def _merged_rows(store: ShardedRows, conditions: Sequence[Condition], items: Sequence[Item]) -> list[dict[str, Any]]:
    """Every worker's rows merged in (condition, item, generation) order; those of this run's conditions and items.

    Rows of other conditions or items stay in the file, after these."""
    condition_index = {c.name: i for i, c in enumerate(conditions)}
    item_index = {item.id: i for i, item in enumerate(items)}

    def order(row: dict[str, Any]) -> tuple[Any, ...]:
        c, i = condition_index.get(row["condition"]), item_index.get(row["item"])
        if c is None or i is None:
            return (1, 0, 0, 0)
        return (0, c, i, int(row["generation"]))

    merged = store.merge(key=lambda r: row_key(r["condition"], r["item"], int(r["generation"])), order=order)
    return [r for r in merged if r.get("condition") in condition_index and r.get("item") in item_index]


def _report(study: Study, config: ExperimentConfig, conditions: Sequence[Condition], rows: list[dict[str, Any]],
            out: Path, workers: Workers) -> tuple[Any, tuple[str, ...], list[Path]]:
    """The summary of ``rows`` and its metrics; rank 0 writes the summary CSV and the plots."""
    declared = study.metric_names(config)
    found = sorted({m for r in rows for m in r.get("metrics", {})} - set(declared))
    metrics = declared + tuple(found) + ("influence",)
    summary = summarize_rows(rows, conditions, metrics, config, cluster=study.cluster_field)
    plots: list[Path] = []
    if workers.is_main:  # one writer for the shared files
        write_summary(out / SUMMARY_FILE, summary, metrics)
        if config.plots:
            from . import plots as plotting

            every = (study.primary, *(m for m in metrics if m != study.primary))
            plots.append(plotting.accuracy_vs_delta(summary, every, out / "accuracy_vs_delta.html",
                                                    title=f"{study.name}: every metric by condition"))
        plots.extend(study.extra_outputs(rows, out, config))
        if config.plots:
            from .plots import static_paths

            plots.extend(p for html in list(plots) if html.suffix == ".html" for p in static_paths(html)
                         if p.exists())
    return summary, metrics, plots


def _check_unique_ids(study: str, items: Sequence[Item]) -> None:
    counts = Counter(item.id for item in items)
    repeated = [f"{item_id!r} ({n} times)" for item_id, n in counts.items() if n > 1]
    if repeated:
        raise ExperimentError(
            f"the {study} data has repeated item ids: {', '.join(repeated[:10])}"
            + (f" and {len(repeated) - 10} more" if len(repeated) > 10 else "")
            + "; every item needs its own id (rows are keyed by it)"
        )


def _continuation_scorer(model: Any, study: Study, condition: Condition, config: ExperimentConfig,
                         method_settings: Any) -> Any:
    """``scorer(item, texts)``: each text's mean log-probability after the item's prompt under ``condition``."""
    from .counterfact import continuation_logprobs

    tokenizer = model.tokenizer
    chat = config.chat if config.chat is not None else getattr(tokenizer, "chat_template", None) is not None

    def scorer(item: Item, texts: Sequence[str]) -> list[float]:
        prompt = prepare_item(study, item, condition, tokenizer, chat, config)
        plans = _condition_plans(model, condition, [prompt], config, method_settings)
        return continuation_logprobs(model, prompt.input_ids, plans, texts, leading_space=not chat)

    return scorer


def _run_batch(model: Any, study: Study, condition: Condition, batch: list[_Job], config: ExperimentConfig,
               method_settings: Any, influences: dict[tuple[str, str], float | None],
               new_tokens: Sequence[Sequence[int]] | None = None) -> list[dict[str, Any]]:
    """The rows of one batch (its rows may be of several conditions; ``condition`` is the first's);
    ``new_tokens``: the batch's outputs when a continuous batch already generated them."""
    if config.influence:
        for job in batch:
            key = (job.condition.name, job.item.id)
            if key not in influences:
                single = _condition_plans(model, job.condition, [job.prompt], config, method_settings)
                influences[key] = _influence(model, job.prompt, single)
    prompts = [j.prompt for j in batch]
    plans = _batch_plans(model, batch, config, method_settings) if new_tokens is None else []
    seed = _batch_seed(config, batch)
    sample_kwargs: dict[str, Any] = {}
    if config.sampling:
        sample_kwargs = {"do_sample": True, "temperature": config.temperature, "top_p": config.top_p, "seed": seed}
    if new_tokens is None:
        new_tokens = chain.generate(model, prompts, plans, batch_size=len(batch), progress=False,
                                    max_new_tokens=config.max_new_tokens, **sample_kwargs)
    outputs = [_decode(model.tokenizer, t) for t in new_tokens]
    scores = study.score([j.item for j in batch], outputs, config)
    for cond in dict.fromkeys(j.condition for j in batch):  # read under each row's own condition
        index = [i for i, j in enumerate(batch) if j.condition == cond]
        read = study.model_scores([batch[i].item for i in index], config,
                                  _continuation_scorer(model, study, cond, config, method_settings))
        if read is not None:
            for i, r in zip(index, read):
                scores[i] = dataclasses.replace(scores[i], metrics={**scores[i].metrics, **r})
    rows = []
    for job, output, tokens, score in zip(batch, outputs, new_tokens, scores):
        start, end = _focus(job.prompt)
        rows.append({
            "study": study.name,
            "condition": job.condition.name,
            "method": job.condition.method,
            "delta": job.condition.delta,
            "item": job.item.id,
            "generation": job.generation,
            **{k: job.item.groups[k] for k in study.group_fields if k in job.item.groups},
            "seed": seed if config.sampling else None,
            "prompt_tokens": len(job.prompt.input_ids),
            "focus_span": [start, end],
            "new_tokens": len(tokens),
            "backend": new_tokens.backend,
            "output": output,
            "metrics": {k: float(v) for k, v in score.metrics.items()},
            "influence": influences.get((job.condition.name, job.item.id)) if config.influence else None,
            **({"details": dict(score.details)} if score.details else {}),
        })
    return rows
