"""Continuous batching: rows join and leave a running generation between decoding steps.

A :class:`ContinuousBatch` holds a direct run of the model (:mod:`attnlens.runtime.direct`)
and the key-value cache of every row it is generating. Between two decoding steps,

- :meth:`ContinuousBatch.admit` prefills new rows (left-padded among themselves, each
  with its own bias plans) and joins their cache to the running one, left-padding
  whichever is shorter;
- :meth:`ContinuousBatch.choose` picks each row's next token (greedy, or sampled from
  the row's own random generator with its own temperature and top-p);
- :meth:`ContinuousBatch.advance` drops the rows that are finished and runs one
  decoding step for the others.

No row waits for the slowest one, and a row that arrives while others run joins at
the next step. Each row's steering is a list of static per-key bias plans
(:class:`~attnlens.steering.bias.BiasPlan`, built in the row's unpadded positions);
the plans of all rows are stacked into one per-row plan, shifted by each row's
padding, and installed again whenever the batch changes. A steering that edits the
run while it goes (a :class:`~attnlens.steering.edits.RunEdit`: SpotLight) joins only
a batch opened with ``edits=True``, whose caller puts rows of one edit setting in it
(comparisons and studies do, per strength; the server, whose requests each bring their
own, does not); one that runs its own decoding steps (SPA) never joins.
:func:`joinable` says which, and such a request runs in its own generation
(:func:`attnlens.runtime.generate.generate_batch`). :func:`generate_rows` runs a list
of rows through one batch and hands each row's tokens back as it ends.

Greedy rows make the tokens a batch of their own makes (up to the padding's
rounding, which the tests check does not change the tokens on the embedded model).
The model is held (:func:`attnlens.core.concurrency.exclusive`) while the batch is
open: close it (leave its ``with`` block) when no row is left.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F

from ..core import _internals as tl
from ..core.errors import AttnlensError
from ..core.model import model_device
from ..steering.bias import BiasPlan
from ..steering.kinds import KeyBias
from ..steering.edits import RunEdit, install
from . import backends
from .direct import in_use

logger = logging.getLogger(__name__)


@dataclass
class Row:
    """One prompt to generate from, and how.

    ``plans``: its steering as static bias plans in its own (unpadded) positions, each for all rows
    (as a method's ``steering`` builds them for one prompt). ``temperature`` 0 is greedy.
    ``key``: the caller's handle for the row (given back by :attr:`ContinuousBatch.keys`).
    """

    tokens: Sequence[int]
    plans: Sequence[BiasPlan] = ()
    temperature: float = 0.0
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    key: Any = None
    generator: torch.Generator | None = field(default=None, repr=False)


def joinable(steerings: Sequence[Any], *, edits: bool = False) -> bool:
    """Whether a row with these steerings can join a continuous batch: static key biases, and with
    ``edits`` also run-time edits of attention for the row's one prompt (SpotLight), where the caller
    puts only rows of one edit setting in the batch (their edits are stacked as the first row's
    edit with every row's spans)."""
    def one(s: Any) -> bool:
        if isinstance(s, KeyBias):
            return s.rows in (None, 1)
        return edits and isinstance(s, RunEdit) and s.rows == 1 and s.point != "logits"

    return all(one(s) for s in steerings)


def _stack(plans: Sequence[Any], model: Any) -> Any:
    """One steering for the rows whose own steerings are ``plans`` (None: the row has none in this slot)."""
    if all(plan is None or isinstance(plan, KeyBias) for plan in plans):
        empty = BiasPlan.for_model(model)
        stacked = [empty if plan is None else plan for plan in plans]
        return BiasPlan.stack(stacked) if any(plan.terms for plan in stacked) else None
    first = next(plan for plan in plans if plan is not None)
    if not all(plan is None or isinstance(plan, RunEdit) for plan in plans):
        raise AttnlensError("a continuous batch's rows mix static biases and run-time edits in one place")
    return replace(first, spans=tuple(() if plan is None else plan.spans[0] for plan in plans), per_row=True)


def for_all_rows(plan: Any) -> Any:
    """A one-row plan with its terms for every row (what :meth:`BiasPlan.stack` takes); an edit as it is."""
    if isinstance(plan, RunEdit) or plan.rows is None:
        return plan
    return BiasPlan(plan.n_layers, plan.n_heads, [replace(t, row=None) for t in plan.terms])


def continuous_reason(model: Any, *, busy_ok: bool = False) -> str | None:
    """Why ``model`` cannot generate in a continuous batch (None when it can).

    ``busy_ok``: a direct block that holds the model right now (another generation's) is no
    reason; the model is then asked again when a batch opens (a server's engine, made while
    another engine of the same model is generating, still batches continuously once it is free).
    """
    config = getattr(getattr(model, "original_model", None), "config", None)
    if getattr(config, "sliding_window", None) is not None or any(
            kind != "full_attention" for kind in (getattr(config, "layer_types", None) or ())):
        return "it has sliding-window layers, whose cache keeps only the last window"
    if busy_ok and in_use(model):
        return None
    reason = backends.get("direct").reason(model)
    if reason is not None:
        return f"the direct run cannot run it: {reason}"
    return None


def _pad_left(tensor: torch.Tensor, width: int, dim: int, value: float = 0) -> torch.Tensor:
    """``tensor`` left-padded along ``dim`` (a dimension counted from the end) by ``width``."""
    if width == 0:
        return tensor
    pad = [0, 0] * (-dim - 1) + [width, 0]
    return F.pad(tensor, pad, value=value)


class ContinuousBatch:
    """The rows of a running generation, their cache and their steering; see the module docstring.

    Open it in a ``with`` block's ExitStack: ``ContinuousBatch(model, stack)`` holds the model
    (through the direct run) until the stack closes, and its bias hooks are removed then too.
    """

    def __init__(self, model: Any, stack: ExitStack, *, pad: int, edits: bool = False) -> None:
        reason = continuous_reason(model, busy_ok=True)  # a block of another thread: opening the run waits for it
        if reason is not None:
            raise AttnlensError(f"this model cannot generate in a continuous batch: {reason}")
        self.model = model
        self.pad = int(pad)
        self.edits = edits  # rows may carry run-time edits of one setting (see joinable)
        self.device = model_device(model)
        self.run = backends.open_run(stack, model, "direct", logger)
        self.hf = self.run.hf
        self._cache_argument = tl.kv_cache_argument(self.hf)
        self._hooks = ExitStack()
        stack.callback(self._hooks.close)
        self.rows: list[Row] = []
        self.offsets: list[int] = []
        self.mask: torch.Tensor | None = None  # [rows, width]: 1 on a row's tokens, 0 on its padding
        self.cache: Any = None
        self.logits: torch.Tensor | None = None  # [rows, vocab]: each row's next-token logits

    # ------------------------------------------------------------------ the rows

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def keys(self) -> list[Any]:
        return [row.key for row in self.rows]

    @property
    def width(self) -> int:
        return 0 if self.mask is None else int(self.mask.shape[1])

    def _install(self, rows: Sequence[Row], offsets: Sequence[int]) -> None:
        """Install the stacked plans of ``rows`` (in a batch padded by ``offsets``) in place of the last ones."""
        self._hooks.close()
        self._hooks = ExitStack()
        slots = max((len(row.plans) for row in rows), default=0)
        for k in range(slots):
            stacked = _stack([row.plans[k] if k < len(row.plans) else None for row in rows], self.model)
            if stacked is not None:
                self._hooks.enter_context(install(self.model, stacked.shifted(offsets)))

    def _forward(self, tokens: torch.Tensor, mask: torch.Tensor, cache: Any) -> torch.Tensor:
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -tokens.shape[1]:]
        out = self.hf(input_ids=tokens, attention_mask=mask, position_ids=positions, use_cache=True,
                      logits_to_keep=1, **{self._cache_argument: cache})
        return out.logits[:, -1, :]

    def admit(self, rows: Sequence[Row]) -> None:
        """Prefill ``rows`` and join them to the running batch (their first token is then chosen)."""
        rows = list(rows)
        if not rows:
            return
        for row in rows:
            if not row.tokens:
                raise AttnlensError("a row has no tokens")
            if not joinable(row.plans, edits=self.edits):
                raise AttnlensError("a row's steering must be static bias plans for its one prompt"
                                    + (" or run-time edits of it" if self.edits else ""))
            row.plans = [for_all_rows(plan) for plan in row.plans]
            if row.temperature > 0:
                row.generator = torch.Generator(device=self.device)
                if row.seed is None:
                    row.generator.seed()
                else:
                    row.generator.manual_seed(int(row.seed))
        width = max(len(row.tokens) for row in rows)
        offsets = [width - len(row.tokens) for row in rows]
        tokens = torch.tensor([[self.pad] * o + list(row.tokens) for o, row in zip(offsets, rows)],
                              dtype=torch.long, device=self.device)
        mask = torch.tensor([[0] * o + [1] * len(row.tokens) for o, row in zip(offsets, rows)],
                            dtype=torch.long, device=self.device)
        cache = tl.new_kv_cache()
        self._install(rows, offsets)
        try:
            logits = self._forward(tokens, mask, cache)
        finally:
            self._hooks.close()
        layers = tl.kv_cache_layers(cache)
        if layers is None:
            raise AttnlensError("the model's cache cannot be joined row by row (a sliding-window layer)")
        if not self.rows:
            self.rows, self.offsets, self.mask, self.cache, self.logits = rows, offsets, mask, cache, logits
        else:
            self._join(rows, offsets, mask, cache, layers, logits)
        self._install(self.rows, self.offsets)

    def _join(self, rows: list[Row], offsets: list[int], mask: torch.Tensor, cache: Any,
              layers: list[tuple[torch.Tensor, torch.Tensor]], logits: torch.Tensor) -> None:
        old = tl.kv_cache_layers(self.cache)
        if old is None:  # pragma: no cover - the running cache was joinable when it was made
            raise AttnlensError("the running cache cannot be joined row by row")
        width = max(self.width, mask.shape[1])
        grow_old, grow_new = width - self.width, width - int(mask.shape[1])
        joined = [
            (torch.cat([_pad_left(k0, grow_old, -2), _pad_left(k1, grow_new, -2)]),
             torch.cat([_pad_left(v0, grow_old, -2), _pad_left(v1, grow_new, -2)]))
            for (k0, v0), (k1, v1) in zip(old, layers)
        ]
        tl.set_kv_cache_layers(self.cache, joined)
        self.mask = torch.cat([_pad_left(self.mask, grow_old, -1), _pad_left(mask, grow_new, -1)])
        self.offsets = [o + grow_old for o in self.offsets] + [o + grow_new for o in offsets]
        self.rows = self.rows + rows
        self.logits = torch.cat([self.logits, logits])

    # ------------------------------------------------------------------ the steps

    def choose(self) -> list[int]:
        """Each row's next token from its logits: greedy, or sampled from the row's own generator."""
        if self.logits is None or not self.rows:
            return []
        chosen = self.logits.argmax(-1).tolist()
        for i, row in enumerate(self.rows):
            if row.temperature > 0:
                chosen[i] = _sample(self.logits[i].float(), row)
        return chosen

    def advance(self, tokens: Sequence[int], keep: Sequence[bool]) -> None:
        """Drop the rows not kept; run one decoding step for the others with their ``tokens``."""
        if len(tokens) != len(self.rows) or len(keep) != len(self.rows):
            raise AttnlensError(f"advance needs one token and one flag per row ({len(self.rows)} rows)")
        kept = [i for i, k in enumerate(keep) if k]
        if len(kept) < len(self.rows):
            self._select(kept)
        if not self.rows:
            return
        step = torch.tensor([[int(tokens[i])] for i in kept], dtype=torch.long, device=self.device)
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        self.logits = self._forward(step, self.mask, self.cache)

    def _select(self, kept: list[int]) -> None:
        """Keep only rows ``kept``; columns that are padding in every remaining row are dropped."""
        self.rows = [self.rows[i] for i in kept]
        if not kept:
            self.offsets, self.mask, self.cache, self.logits = [], None, None, None
            self._hooks.close()
            return
        index = torch.tensor(kept, dtype=torch.long, device=self.device)
        offsets = [self.offsets[i] for i in kept]
        trim = min(offsets)
        tl.select_kv_cache_rows(self.cache, index, trim)
        self.mask = self.mask.index_select(0, index)[:, trim:]
        self.offsets = [o - trim for o in offsets]
        self.logits = self.logits.index_select(0, index)
        self._install(self.rows, self.offsets)


def generate_rows(model: Any, rows: Sequence[Row], *, max_new_tokens: int, batch_size: int,
                  max_tokens: int | None = None, min_rows: int = 1,
                  edits: bool = False) -> Iterator[tuple[Any, list[int]]]:
    """Generate every row of ``rows`` through one continuous batch; yield ``(row.key, new tokens)`` as each ends.

    Rows join in the order given while the batch has fewer than ``batch_size`` rows and, with
    ``max_tokens``, its rows x (widest prompt + ``max_new_tokens``) stays within it (or it has fewer than
    ``min_rows``); a row leaves at its end token (not included in its tokens) or after ``max_new_tokens``
    tokens, as :func:`~attnlens.runtime.generate.generate_batch` counts them, and the next row joins at
    the next step. The model is held while the generator runs, with the rows' steering installed: run
    nothing else on it between two items (close the generator, or run it to its end, to let it go).
    Raises :class:`~attnlens.core.errors.AttnlensError` when the model cannot run a continuous batch now
    (:func:`continuous_reason`) or a row's steering cannot join (:func:`joinable`; ``edits``: run-time
    edits may join, all of one setting, which the caller guarantees).
    """
    from ..core.concurrency import exclusive
    from ..core.model import check_window, pad_id

    queue = list(rows)
    if not queue:
        return
    if max_new_tokens < 1 or batch_size < 1:
        raise AttnlensError(f"max_new_tokens and batch_size must be positive, got {max_new_tokens}, {batch_size}")
    check_window(model, max(len(r.tokens) for r in queue), new_tokens=max_new_tokens, what="the longest prompt")
    tokenizer = model.tokenizer
    eos = getattr(tokenizer, "eos_token_id", None)
    made: dict[int, list[int]] = {}
    with exclusive(model), torch.no_grad(), ExitStack() as stack:
        batch = ContinuousBatch(model, stack, pad=pad_id(tokenizer), edits=edits)
        widest = 0
        while queue or len(batch):
            admit: list[Row] = []
            while queue and len(batch) + len(admit) < batch_size:
                width = max(widest, len(queue[0].tokens), *(len(r.tokens) for r in admit)) + max_new_tokens
                count = len(batch) + len(admit) + 1
                if max_tokens is not None and count * width > max_tokens and count > min_rows:
                    break
                admit.append(queue.pop(0))
            if admit:
                widest = max([widest] + [len(r.tokens) for r in admit])
                batch.admit(admit)
                for row in admit:
                    made[id(row)] = []
            tokens = batch.choose()
            keep = []
            ended: list[tuple[Any, list[int]]] = []
            for row, token in zip(batch.rows, tokens):
                stop = eos is not None and token == eos
                if not stop:
                    made[id(row)].append(int(token))
                done = stop or len(made[id(row)]) >= max_new_tokens
                if done:
                    ended.append((row.key, made.pop(id(row))))
                keep.append(not done)
            batch.advance(tokens, keep)
            if not len(batch):
                widest = 0
            yield from ended


def _sample(logits: torch.Tensor, row: Row) -> int:
    """One token drawn from ``logits`` at the row's temperature, top-k and top-p."""
    logits = logits / row.temperature
    if row.top_k:
        kth = torch.topk(logits, min(int(row.top_k), logits.shape[-1])).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, -1)
    if row.top_p is not None and row.top_p < 1:
        ordered, order = torch.sort(probs, descending=True)
        before = ordered.cumsum(-1) - ordered  # the mass of the tokens ranked above each one
        ordered = ordered.masked_fill(before >= row.top_p, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, ordered)
        probs = probs / probs.sum()
    return int(torch.multinomial(probs, 1, generator=row.generator).item())
