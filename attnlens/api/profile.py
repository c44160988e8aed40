"""Find the heads worth steering with PASTA: steer each head alone and score the task.

For every (layer, head) and every example, the head alone is steered towards
the example's emphasised substrings and a scorer rates the model's prediction
of the example's target completion (by default the mean log-probability of its
tokens given the prompt: one forward pass, no generation). Heads are ranked by
their mean score over the examples; the unsteered score is reported alongside,
so a head whose score beats it helps the task.

It is fast because:

- each batch row steers a different head (per-row, per-head bias terms), so
  one forward pass scores many heads;
- no head changes what a query *before* the first emphasised token sees (with
  ``exclude`` all its keys are scaled alike, with ``include`` none is), so the
  prompt up to that token is run once per example and its KV cache is shared
  by every row;
- only the target positions go through the unembedding, without autograd.

Example data (JSONL, one object a line)::

    {"prompt": "Mary is a doctor. ... Answer in JSON.", "emphasize": "Answer in JSON", "target": "{\\"occupation\\": \\"doctor\\"}"}

``prompt`` may be a chat (a list of ``{"role", "content"}``); ``emphasize`` a
string or a list of strings; an optional ``occurrence`` picks a repeated one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..core.model import Model
from ..core.validate import is_int
from ..core.errors import AttnlensError
from ..core.model import check_window, model_shape
from ..runtime.distributed import Workers, current_workers, run_sweep, worker_group
from ..runtime.prefix import PrefixRun, can_skip, skip_reproduces_baseline, supports_logits_to_keep
from ..steering.bias import BiasPlan, apply_bias
from ..prompts.prompt import Prompt, locate_substrings
from .head_profile import HeadProfile, HeadScore  # noqa: F401 - the results, re-exported
from .profile_examples import ProfileExample, _examples, json_format_examples, load_examples
from .scorers import (
    SCORERS,
    Scorer,
    _resolve_scorer,
    first_token_logprob,
    mean_logprob,
    sum_logprob,
    token_accuracy,
)
from ..steering.pasta import (
    HeadConfig,
    HeadConfigLike,
    check_alpha,
    check_scale_position,
    normalize_head_config,
    pasta_plan,
)

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- profiling


@dataclass
class _Prepared:
    prompt: Prompt
    target: list[int]

    @property
    def ids(self) -> list[int]:
        return self.prompt.input_ids + self.target

    @property
    def prefix(self) -> int:
        """Positions no single-head steering changes: those before the first emphasised token."""
        return max(0, min(min(s for s, _ in self.prompt.spans), len(self.prompt) - 1))


def _prepare(tokenizer: Any, ex: ProfileExample, chat: bool, i: int) -> _Prepared:
    try:
        prompt = locate_substrings(tokenizer, ex.prompt, list(ex.emphasize), occurrence=ex.occurrence, chat=chat)
    except AttnlensError as exc:
        raise type(exc)(f"example {i}: {exc}") from None
    target = list(tokenizer(ex.target, add_special_tokens=False)["input_ids"])
    if not target:
        raise AttnlensError(f"example {i}: the target {ex.target!r} has no tokens")
    return _Prepared(prompt, target)


def _head_list(heads: HeadConfigLike | None, n_layers: int, n_heads: int) -> list[tuple[int, int]]:
    config: HeadConfig = (
        {layer: tuple(range(n_heads)) for layer in range(n_layers)}
        if heads is None
        else normalize_head_config(heads, n_layers, n_heads)
    )
    return [(layer, head) for layer, hs in config.items() for head in hs]


def _auto_batch_size(suffix_len: int, rows: int, budget: int) -> int:
    """Rows per forward so each pass holds about ``budget`` tokens (bounded to [1, rows])."""
    return max(1, min(rows, budget // max(1, suffix_len)))


def _schedule(
    heads: Sequence[tuple[int, int]], size: int, skip: bool
) -> Iterator[tuple[int, list[tuple[int, int]]]]:
    """Chunks of at most ``size`` heads and the block each chunk can start at.

    With ``skip``, heads go in layer order and chunks end at layer boundaries where they
    can: a chunk starts at the layer of its first head, and every head of a later layer in
    it runs the blocks in between unsteered, which is wasted work.
    """
    if not skip:
        for start in range(0, len(heads), size):
            yield 0, list(heads[start : start + size])
        return
    chunk: list[tuple[int, int]] = []
    for _, group in groupby(sorted(heads), key=lambda lh: lh[0]):
        members = list(group)
        if chunk and len(chunk) + len(members) > size:
            yield chunk[0][0], chunk
            chunk = []
        while len(members) > size:
            yield members[0][0], members[:size]
            members = members[size:]
        chunk.extend(members)
    if chunk:
        yield chunk[0][0], chunk


def profile_heads(
    model: Model,
    examples: Iterable[ProfileExample | Mapping[str, Any]] | str | os.PathLike,
    *,
    alpha: float = 0.01,
    scale_position: str = "exclude",
    scorer: str | Scorer = "mean_logprob",
    heads: HeadConfigLike | None = None,
    chat: bool = False,
    batch_size: int | None = None,
    token_budget: int = 512,
    share_prefix: bool = True,
    skip_layers: bool = True,
    progress: bool = True,
    sweep_dir: str | os.PathLike | None = None,
    threads: int | None = None,
) -> HeadProfile:
    """Steer each head alone on every example and score the task; rank the heads.

    Args:
        model: a TransformerBridge with a tokenizer.
        examples: :class:`ProfileExample` objects, dicts with ``prompt``/``emphasize``/``target``,
            or the path of a JSONL file of them.
        alpha: PASTA's scaling coefficient, as in :class:`~attnlens.api.pasta.PASTA`.
        scale_position: ``"exclude"`` or ``"include"``, as in :class:`~attnlens.api.pasta.PASTA`.
        scorer: ``"mean_logprob"`` (default), ``"sum_logprob"``, ``"token_accuracy"``,
            ``"first_token_logprob"``, or ``f(logits [rows, n_target, vocab], target [n_target]) -> [rows]``
            (higher is better).
        heads: profile only these (a head config); default every head of every layer.
        chat: send plain-string prompts through the chat template as user messages.
        batch_size: rows (heads) per forward pass; default: about ``token_budget`` tokens per pass.
        share_prefix: run the prompt before the first emphasised token once per example and
            share its KV cache across the rows (same result, faster).
        skip_layers: start the rows that steer layer ``l`` at block ``l`` from the unsteered
            residual stream (same result, faster); checked on the first example against a full
            pass, and turned off when the model does not reproduce it.
        progress: show a progress bar.
        sweep_dir: run as a resumable sweep: each (example, chunk of heads) is a unit whose
            scores are appended to ``sweep_dir/profile.jsonl`` as it finishes; rerunning skips
            the units on disk. Under ``torchrun`` the workers split the units (every
            ``world_size``-th one) and write their own part files, merged by rank 0; every
            worker returns the whole profile. Needed (and shared by the workers) when
            ``WORLD_SIZE`` > 1.
        threads: torch threads for the run on a CPU (restored afterwards); default
            :func:`default_threads`: the cores left free by other work, at most torch's own
            count (one per physical core), so a busy machine gets one thread.

    Returns:
        A :class:`HeadProfile`: per-head scores, the unsteered baseline, ``top(k)``, JSON export.
    """
    scale_position = check_scale_position(scale_position)
    alpha = check_alpha(alpha, scale_position)
    scorer_name, score = _checked_scorer(scorer)
    _check_sizes(batch_size, threads)
    if getattr(model, "tokenizer", None) is None:
        raise AttnlensError("the model has no tokenizer; profiling needs one")
    n_layers, n_heads = model_shape(model)
    todo = _head_list(heads, n_layers, n_heads)
    prepared = _prepared_examples(model, examples, chat)
    per_example = np.full((n_layers, n_heads, len(prepared)), np.nan)
    baseline = np.zeros(len(prepared))
    skip = skip_layers and can_skip(model)
    started = time.perf_counter()
    if sweep_dir is None and current_workers().distributed:
        raise AttnlensError("profile_heads on several workers needs sweep_dir: a directory every worker can write")
    bar = tqdm(total=len(todo) * len(prepared), desc="profiling heads", unit="head", disable=not progress)
    try:
        with worker_group() as workers, torch.no_grad(), _torch_threads(model, threads):
            _profile(model, prepared, todo, None if sweep_dir is None else Path(sweep_dir).expanduser(), workers,
                     per_example, baseline, score=score,
                     settings=dict(alpha=alpha, scale_position=scale_position, scorer=scorer_name),
                     plan=lambda spans, layer, head, n: pasta_plan(model, spans, {layer: [head]}, alpha,
                                                                   scale_position, seq_len=n),
                     batch_size=batch_size, token_budget=token_budget, share_prefix=share_prefix, skip=skip,
                     keep_logits=supports_logits_to_keep(model), bar=bar)
    finally:
        bar.close()
    seconds = time.perf_counter() - started
    logger.info("profiled %d heads on %d examples in %.1f s", len(todo), len(prepared), seconds)
    return HeadProfile(scores=per_example.mean(axis=-1),  # NaN for heads not profiled
                       per_example=per_example, baseline=float(baseline.mean()), baseline_per_example=baseline,
                       alpha=alpha, scale_position=scale_position, scorer=scorer_name, seconds=seconds)


def _checked_scorer(scorer: str | Scorer) -> tuple[str, Callable[[torch.Tensor, torch.Tensor, int], np.ndarray]]:
    """The scorer's name and ``score(logits, target, rows)``: its scores as an array, their shape checked."""
    scorer_name, score_fn = _resolve_scorer(scorer)

    def score(logits: torch.Tensor, target: torch.Tensor, rows: int) -> np.ndarray:
        out = score_fn(logits, target).detach().float().cpu().numpy()
        if out.shape != (rows,):
            raise AttnlensError(f"scorer {scorer_name!r} returned shape {tuple(out.shape)}; expected ({rows},)")
        return out

    return scorer_name, score


def _check_sizes(batch_size: int | None, threads: int | None) -> None:
    if batch_size is not None and (not is_int(batch_size) or batch_size < 1):
        raise AttnlensError(f"batch_size must be a positive integer, got {batch_size!r}")
    if threads is not None and (not is_int(threads) or threads < 1):
        raise AttnlensError(f"threads must be a positive integer, got {threads!r}")


def _prepared_examples(model: Model, examples: Any, chat: bool) -> list[Any]:
    """The examples tokenized, each checked against the model's window."""
    prepared = [_prepare(model.tokenizer, ex, chat, i) for i, ex in enumerate(_examples(examples))]
    for i, prep in enumerate(prepared):
        check_window(model, len(prep.ids), what=f"example {i} (prompt and target)")
    return prepared


def default_threads() -> int:
    """Torch threads for profiling on a CPU: the cores that other work leaves free, at least one and at
    most torch's own count (one per physical core).

    Free cores are the CPUs this process may use less the 1-minute load average, counting one
    runnable task as this process itself. On a busy machine a second thread mostly waits for a
    core while the first waits for it, so one thread is faster there; on an idle one every core
    helps. ``OMP_NUM_THREADS`` (or ``torch.set_num_threads`` before the call, when it is lower)
    overrides the rule.
    """
    current = torch.get_num_threads()
    if os.environ.get("OMP_NUM_THREADS"):
        return current
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        load = os.getloadavg()[0]
    except OSError:  # no load average on this platform
        return current
    free = int(cpus - max(0.0, load - 1.0) + 0.5)
    return max(1, min(current, free))


@contextmanager
def _torch_threads(model: Model, threads: int | None) -> Iterator[None]:
    """Run with ``threads`` torch threads (default :func:`default_threads`) when the model is on a CPU."""
    device = getattr(getattr(model, "cfg", None), "device", None)
    if device is not None and torch.device(device).type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    chosen = threads or default_threads()
    logger.info("profiling with %d torch thread(s) (%s; torch had %d)", chosen,
                "as asked" if threads else "default_threads()", before)
    torch.set_num_threads(chosen)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _unit_key(unit: tuple[int, tuple[tuple[int, int], ...] | None, int]) -> str:
    e, chunk, _ = unit
    if chunk is None:
        return f"{e}/baseline"
    return f"{e}/L{chunk[0][0]}H{chunk[0][1]}+{len(chunk)}"


def _profile(model: Model, prepared: list[_Prepared], todo: list[tuple[int, int]], out: Path | None,
             workers: Workers,
           per_example: np.ndarray, baseline: np.ndarray, *, score: Any, settings: dict[str, Any], plan: Any,
           batch_size: int | None, token_budget: int, share_prefix: bool, skip: bool, keep_logits: bool,
           bar: Any) -> None:
    """The one scoring loop of :func:`profile_heads`: (example, chunk of heads) units, each scored under its
    stacked plans; fills ``per_example`` and ``baseline``. With ``out`` the units run as a resumable sweep
    (``out/profile.jsonl``), split among ``workers``; without it, in order in this process."""
    n_layers = model_shape(model)[0]
    identity = {**settings, "heads": [list(h) for h in todo],
                "examples": [hashlib.sha256(json.dumps([p.ids, len(p.target)]).encode()).hexdigest()[:16]
                             for p in prepared]}
    if out is not None and workers.is_main:
        run_file = out / "profile.run.json"
        out.mkdir(parents=True, exist_ok=True)
        if run_file.exists():
            previous = json.loads(run_file.read_text())
            diff = sorted(k for k in identity if previous.get(k) != identity[k])
            if diff:
                raise AttnlensError(f"{str(out)!r} holds a profile made with other {', '.join(diff)}; "
                                    "choose another sweep_dir or remove it")
        run_file.write_text(json.dumps(identity))
    runners: dict[int, PrefixRun] = {}

    def runner_for(e: int) -> PrefixRun:
        if e not in runners:
            runners.clear()  # one example's cache at a time
            prep = prepared[e]
            runners[e] = PrefixRun(model, prep.ids, len(prep.target), prep.prefix if share_prefix else 0,
                                   keep_logits=keep_logits, skip=skip)
        return runners[e]

    if skip:  # every worker takes the same schedule
        skip = workers.all_agree(skip_reproduces_baseline(runner_for(0), n_layers))
        runners.clear()  # built before the schedule was known
    units: list[tuple[int, tuple[tuple[int, int], ...] | None, int]] = []
    for e, prep in enumerate(prepared):
        suffix = len(prep.ids) - (prep.prefix if share_prefix else 0)
        size = batch_size or _auto_batch_size(suffix, len(todo), token_budget)
        units.append((e, None, 0))
        units.extend((e, tuple(chunk), start) for start, chunk in _schedule(todo, size, skip))

    def compute(unit: tuple[int, tuple[tuple[int, int], ...] | None, int]) -> list[dict[str, Any]]:
        e, chunk, start_layer = unit
        runner = runner_for(e)
        target = torch.tensor(prepared[e].target, device=runner.baseline.device)
        if chunk is None:
            return [{"example": e, "baseline": float(score(runner.baseline, target, 1)[0])}]
        spans = list(prepared[e].prompt.spans)
        stacked = BiasPlan.stack([plan(spans, layer, head, len(prepared[e].prompt)) for layer, head in chunk])
        with apply_bias(model, stacked):
            logits = runner(len(chunk), start_layer)
        bar.update(len(chunk))
        return [{"example": e, "layer": layer, "head": head, "score": float(v)}
                for (layer, head), v in zip(chunk, score(logits, target, len(chunk)))]

    if out is None:
        rows = [row for unit in units for row in compute(unit)]
    else:
        rows = run_sweep(units, _unit_key, compute, out / "profile.jsonl", workers=workers)
    for row in rows:
        if "baseline" in row:
            baseline[row["example"]] = row["baseline"]
        else:
            per_example[row["layer"], row["head"], row["example"]] = row["score"]


__all__ = [
    "SCORERS", "HeadProfile", "HeadScore", "ProfileExample", "Scorer", "first_token_logprob",
    "json_format_examples", "load_examples", "mean_logprob", "profile_heads", "sum_logprob", "token_accuracy",
]
