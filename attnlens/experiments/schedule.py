"""Many greedy generations under different steerings, scheduled as one stream of rows.

A strength search asks for the same prompts at many strengths, a comparison for
the same prompts under many methods. :func:`generate_stream` takes every request
at once and batches them so that the batches are full and their rows are of
similar length:

- rows are grouped by what can share a batch: a method whose steering is a
  static bias (:class:`~attnlens.steering.bias.BiasPlan`: GUIDE, InstABoost,
  PASTA) puts every strength in one group, each row with its own plan; a method
  whose steering runs during the run (a :class:`~attnlens.steering.edits.RunEdit`:
  SpotLight, SPA) forms one group per strength, as its edit takes one setting;
  unsteered rows form their own groups (no plan at all), so every row is computed
  as a batch of its own kind would compute it;
- unsteered rows, static biases and run-time edits of attention (SpotLight, one
  setting per group) run in one continuous batch per group
  (:class:`~attnlens.runtime.continuous.ContinuousBatch`): longest prompts first,
  a row leaves as soon as it ends (its end token or its budget) and the next one
  joins at the next step, under the row limit and the token limit, so no row
  waits for the slowest of a batch (greedy outputs end at 25 of 128 tokens in
  the median on the pronouns study, and one long row used to hold its whole
  batch to 128 steps);
- the other groups (SPA, which runs its own decoding steps, and every group where
  the model cannot run a continuous batch, a hook of the user's on it, say) are
  sorted by prompt length and cut
  into batches under a row limit and a token limit (rows x (longest prompt + new
  tokens)), each generated to its end;
- a request already answered (the same key) is generated once.

Every row sees the same bias terms, at the same positions, as when it is
generated with its own strength's batch, so greedy outputs are the same tokens up
to the rounding of a different batch (which ``benchmarks/bench_compare.py``
counts); only the grouping differs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import AttnlensError, ExperimentError
from ..core.resumable import RowFile
from ..prompts.prompt import Prompt

logger = logging.getLogger(__name__)


def output_key(prompt: Prompt, steer: Mapping[str, Any], max_new_tokens: int) -> str:
    """What identifies one greedy output: the prompt's tokens, its spans when steered, the steering, the budget.

    Without steering the spans change nothing: prompts that differ only in their tags share a key."""
    return json.dumps([list(map(int, prompt.input_ids)),
                       [(s.kind, s.start, s.end, s.level, s.delta) for s in prompt.spans] if steer else [],
                       dict(steer), max_new_tokens], default=str)


@dataclass(frozen=True)
class Request:
    """One greedy output to generate: ``prompt`` under ``steer`` (``{}``: unsteered, or one method's settings).

    ``group``: requests with different groups never share a batch (besides what the steering
    already keeps apart)."""

    prompt: Prompt
    steer: Mapping[str, Mapping[str, Any]]
    group: Hashable = None
    key: str = field(default="", compare=False)


def _method(steer: Mapping[str, Any]) -> str | None:
    if not steer:
        return None
    if len(steer) != 1:
        raise AttnlensError(f"a scheduled request takes one steering method, got {sorted(steer)}")
    return next(iter(steer))


def _row_plan(model: Any, prompt: Prompt, steer: Mapping[str, Any]) -> list[Any]:
    from ..api import chain

    return chain.plans_for(model, [prompt], steer=dict(steer))


def _static(plans: Sequence[Any]) -> bool:
    from ..steering.kinds import KeyBias

    return all(isinstance(p, KeyBias) for p in plans)


def _stacked(model: Any, per_row: Sequence[Sequence[Any]]) -> list[Any]:
    """One per-row BiasPlan from each row's own plans (built for that row alone); [] when no row has a term."""
    from ..steering.bias import BiasPlan, BiasTerm

    if not any(p.terms for plans in per_row for p in plans):
        return []
    out = BiasPlan.for_model(model)
    out.n_rows = len(per_row)
    for r, plans in enumerate(per_row):
        for plan in plans:
            for t in plan.terms:
                if t.row not in (None, 0):
                    raise AttnlensError(f"a one-row plan has a term for row {t.row}")
                out.terms.append(BiasTerm(t.start, t.end, t.value, t.layers, t.heads, r))
    return [out]


def batches(lengths: Sequence[int], batch_size: int, max_tokens: int, min_rows: int = 1) -> list[list[int]]:
    """Indices into ``lengths``, longest first, in batches of at most ``batch_size`` rows whose
    ``rows x longest`` stays within ``max_tokens`` once they hold ``min_rows`` rows (a row longer
    than the limit runs alone, or with ``min_rows - 1`` others)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    out: list[list[int]] = []
    current: list[int] = []
    for i in order:
        width = max([lengths[i]] + [lengths[j] for j in current])
        full = width * (len(current) + 1) > max_tokens and len(current) >= min_rows
        if current and (len(current) >= batch_size or full):
            out.append(current)
            current = []
        current.append(i)
    if current:
        out.append(current)
    return out


def generate_stream(
    model: Any,
    requests: Sequence[Request],
    *,
    max_new_tokens: int,
    batch_size: int = 64,
    max_batch_tokens: int = 16384,
    min_rows: int = 8,
    on_batch: Callable[[list[tuple[str, str]]], None] | None = None,
) -> dict[str, str]:
    """Greedy outputs (decoded text) of ``requests``, by :func:`output_key`, generated as one stream.

    A batch holds up to ``batch_size`` rows, within ``max_batch_tokens`` (rows x (longest prompt +
    new tokens)) once it has ``min_rows`` (the batch :func:`attnlens.api.chain.generate` forms by
    default, so long prompts are never batched more thinly than one steering at a time would be).
    ``on_batch(pairs)`` is called with each batch's ``(key, text)`` pairs as it finishes (to save them)."""
    from ..api import chain

    if batch_size < 1 or max_batch_tokens < 1:
        raise AttnlensError(f"batch_size and max_batch_tokens must be positive, got {batch_size}, {max_batch_tokens}")
    unique: dict[str, Request] = {}
    for req in requests:
        key = req.key or output_key(req.prompt, req.steer, max_new_tokens)
        unique.setdefault(key, req)
    by_method: dict[str | None, list[tuple[str, Request, list[Any]]]] = {}
    for key, req in unique.items():
        method = _method(req.steer)
        by_method.setdefault(method, []).append((key, req, [] if method is None else
                                                 _row_plan(model, req.prompt, req.steer)))
    groups: dict[Hashable, list[tuple[str, Request, list[Any]]]] = {}
    for method, members in by_method.items():
        static = method is not None and all(_static(plans) for _, _, plans in members)
        for key, req, plans in members:
            if method is None:
                name: Hashable = ("plain", req.group)
            elif static:  # every strength of a static bias shares the batches, each row its own plan
                name = ("static", method, req.group)
            else:
                name = ("edit", method, json.dumps(dict(req.steer[method]), sort_keys=True, default=str), req.group)
            groups.setdefault(name, []).append((key, req, plans))

    out: dict[str, str] = {}
    total = sum(len(g) for g in groups.values())
    logger.info("generating %d outputs in %d groups", total, len(groups))
    for name, members in groups.items():
        if _continuous(model, members, out, max_new_tokens=max_new_tokens, batch_size=batch_size,
                       max_tokens=max_batch_tokens, min_rows=min(min_rows, batch_size), on_batch=on_batch,
                       edits=name[0] == "edit"):
            continue
        lengths = [len(req.prompt.input_ids) + max_new_tokens for _, req, _ in members]
        for index in batches(lengths, batch_size, max_batch_tokens, min(min_rows, batch_size)):
            rows = [members[i] for i in index]
            prompts = [req.prompt for _, req, _ in rows]
            if name[0] == "plain":
                plans: list[Any] = []
            elif name[0] == "static":
                plans = _stacked(model, [p for _, _, p in rows])
            else:
                plans = chain.plans_for(model, prompts, steer=dict(rows[0][1].steer))
            tokens = chain.generate(model, prompts, plans, batch_size=len(prompts), progress=False,
                                    max_new_tokens=max_new_tokens)
            pairs = [(key, model.tokenizer.decode(t, skip_special_tokens=True)) for (key, _, _), t in zip(rows, tokens)]
            out.update(pairs)
            if on_batch is not None:
                on_batch(pairs)
            logger.debug("%s: a batch of %d rows", name, len(rows))
    return out


def _continuous(model: Any, members: Sequence[tuple[str, Request, list[Any]]], out: dict[str, str], *,
                max_new_tokens: int, batch_size: int, max_tokens: int, min_rows: int,
                on_batch: Callable[[list[tuple[str, str]]], None] | None, edits: bool = False) -> bool:
    """Greedy outputs of ``members`` (unsteered, static bias plans, or with ``edits`` one run-time edit
    setting, each for its own row) through one continuous batch
    (:func:`~attnlens.runtime.continuous.generate_rows`, longest prompt first), into ``out``; False
    (nothing generated) when they cannot join one (SPA's own decoding, say) or the model cannot run one
    now. ``on_batch`` gets the finished rows' ``(key, text)`` pairs every ``batch_size`` rows and at
    the end (also when generation stops with an error)."""
    from ..runtime.continuous import Row, continuous_reason, generate_rows, joinable

    if continuous_reason(model, busy_ok=True) is not None or \
            not all(joinable(p, edits=edits) for _, _, p in members):
        return False
    order = sorted(members, key=lambda m: -len(m[1].prompt.input_ids))
    rows = [Row(list(map(int, req.prompt.input_ids)), list(plans), key=key) for key, req, plans in order]
    finished: list[tuple[str, str]] = []
    try:
        for key, tokens in generate_rows(model, rows, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                         max_tokens=max_tokens, min_rows=min_rows, edits=edits):
            text = model.tokenizer.decode(tokens, skip_special_tokens=True)
            out[key] = text
            finished.append((key, text))
            if len(finished) >= batch_size and on_batch is not None:
                on_batch(list(finished))
                finished.clear()
    finally:  # also when generation fails or is interrupted: what finished is handed over to be saved
        if finished and on_batch is not None:
            on_batch(finished)
    return True


#: the most rows a batch of a comparison's stream holds (within ``config.max_batch_tokens``)
STREAM_BATCH = 64
#: the file of a comparison's generated outputs (one JSON line each), read back when it resumes
OUTPUTS_FILE = "outputs.jsonl"


def model_digest(model: Any) -> str:
    """The model's content digest (:func:`~attnlens.experiments.provenance.model_identity`: its config and
    weights), so outputs of one model are never read back for another."""
    from .provenance import model_identity

    return str(model_identity(model)["sha256"])[:32]


class SavedOutputs:
    """A comparison's (or a strength search's) generated outputs: the shared cache, filled as one stream and appended to
    ``outputs.jsonl`` batch by batch (a :class:`~attnlens.core.resumable.RowFile`), so an interrupted comparison
    resumes without generating again. A damaged line other than a cut-off last one is an error naming it."""

    def __init__(self, directory: Path, model: Any, cache: dict[str, str], name: str = OUTPUTS_FILE) -> None:
        self.file = RowFile(directory / name, error=ExperimentError,
                            advice="delete the file to generate them again")
        self.path = self.file.path
        self.model, self.cache = model, cache
        self.digest = model_digest(model)
        # a last line cut off by a crash is removed (its output is generated again); outputs of another
        # model are left in the file and never read back
        for row in self.file.read(repair=True):
            if row.get("model") == self.digest and isinstance(row.get("key"), str) \
                    and isinstance(row.get("text"), str):
                cache.setdefault(row["key"], row["text"])

    def fill(self, searches: Sequence[Any], config: Any, batch_size: int = STREAM_BATCH,
             chosen: bool = False) -> None:
        requests = []
        for search in searches:
            for part, prompts, steer in search.requests(chosen=chosen):
                for prompt in prompts:
                    key = output_key(prompt, steer, config.max_new_tokens)
                    if key not in self.cache:
                        requests.append(Request(prompt, steer, group=part if not steer else None, key=key))
        if not requests:
            return

        def save(pairs: list[tuple[str, str]]) -> None:
            self.file.append({"model": self.digest, "key": key, "text": text} for key, text in pairs)
            self.cache.update(pairs)

        generate_stream(self.model, requests, max_new_tokens=config.max_new_tokens, batch_size=batch_size,
                        max_batch_tokens=config.max_batch_tokens, on_batch=save)
