"""Batched generation with per-row bias plans (left padding shifts every row's positions)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Int

from . import backends
from ..core.concurrency import exclusive, seeded
from ..core.model import Model
from ..core.errors import AttnlensError
from ..core.model import check_window, model_device, pad_id
from ..core.validate import check_bool, check_number, check_seed, check_token_ids, is_int
from ..steering.edits import decoder_of, install, shifted
from ..steering.kinds import Steering

logger = logging.getLogger(__name__)

#: the smallest sampling temperature (below it the scaled logits overflow; the server reads such a
#: temperature as greedy, as OpenAI-compatible servers do)
MIN_TEMPERATURE = 0.01

#: generation keywords accepted by :func:`generate_batch` (and the pipeline)
GENERATION_KWARGS = frozenset(
    {"max_new_tokens", "do_sample", "temperature", "top_p", "top_k", "repetition_penalty", "seed", "stop_at_eos"}
)


@dataclass(frozen=True)
class Batch:
    """Left-padded token rows."""

    tokens: Int[torch.Tensor, "batch pos"]
    attention_mask: Int[torch.Tensor, "batch pos"] | None  # None when nothing is padded
    offsets: list[int]  # padding added before each row

    @property
    def length(self) -> int:
        return int(self.tokens.shape[1])


def left_pad(rows: Sequence[Sequence[int]], pad_id: int, device: Any = None) -> Batch:
    """Left-pad token rows into one tensor (the layout generation needs)."""
    if not rows:
        raise AttnlensError("empty batch")
    if any(len(r) == 0 for r in rows):
        raise AttnlensError("a prompt in the batch has no tokens")
    width = max(len(r) for r in rows)
    offsets = [width - len(r) for r in rows]
    tokens = torch.tensor([[pad_id] * o + list(r) for o, r in zip(offsets, rows)], dtype=torch.long, device=device)
    mask = None
    if any(offsets):
        mask = torch.tensor([[0] * o + [1] * len(r) for o, r in zip(offsets, rows)], dtype=torch.long, device=device)
    return Batch(tokens, mask, offsets)


def check_generation_kwargs(kwargs: dict[str, Any]) -> None:
    """Every generation argument by name: unknown names, wrong types and out-of-range values raise an error naming it."""
    unknown = sorted(set(kwargs) - GENERATION_KWARGS)
    if unknown:
        raise AttnlensError(
            f"unknown generation argument(s) {', '.join(unknown)}; accepted: {', '.join(sorted(GENERATION_KWARGS))}"
        )
    n = kwargs.get("max_new_tokens", 1)
    if not is_int(n) or n < 1:
        raise AttnlensError(f"max_new_tokens must be a positive integer, got {n!r}")
    for name in ("do_sample", "stop_at_eos"):
        if name in kwargs:
            check_bool(kwargs[name], name)
    if "temperature" in kwargs:
        check_number(kwargs["temperature"], "temperature", positive=True)
        if kwargs.get("do_sample") and kwargs["temperature"] < MIN_TEMPERATURE:
            raise AttnlensError(f"temperature {kwargs['temperature']!r} is too small to sample with (at least "
                                f"{MIN_TEMPERATURE:g}); for the most likely tokens, generate greedily "
                                "(do_sample=False)")
    if "repetition_penalty" in kwargs:
        check_number(kwargs["repetition_penalty"], "repetition_penalty", positive=True)
    p = kwargs.get("top_p")
    if p is not None and (check_number(p, "top_p") <= 0 or p > 1):
        raise AttnlensError(f"top_p must be in (0, 1], got {p!r}")
    k = kwargs.get("top_k")
    if k is not None and (not is_int(k) or k < 1):
        raise AttnlensError(f"top_k must be a positive integer, got {k!r}")
    check_seed(kwargs.get("seed"))


#: the runtimes :func:`generate_batch` can use (:mod:`attnlens.runtime.backends`)
BACKENDS = ("auto",) + backends.names()


class Generation(list):
    """New tokens per row (a list of lists) and the ``backend`` that produced them."""

    def __init__(self, rows: Sequence[list[int]] = (), *, backend: str) -> None:
        super().__init__(rows)
        self.backend = backend

    def __repr__(self) -> str:
        return f"Generation({list.__repr__(self)}, backend={self.backend!r})"


def resolve_backend(backend: Any, direct: bool | None = None) -> str:
    """Check ``backend`` (one of :data:`BACKENDS`); ``direct=True/False`` overrides it."""
    if direct is not None:
        return "direct" if direct else "bridge"
    if backend not in ("auto",) + backends.names():
        raise AttnlensError(f"backend must be one of {', '.join(('auto',) + backends.names())}; got {backend!r}")
    return backend


def generate_batch(
    model: Model,
    rows: Sequence[Sequence[int]],
    plans: Sequence[Steering] = (),
    *,
    max_new_tokens: int = 64,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float | None = None,
    top_k: int | None = None,
    repetition_penalty: float = 1.0,
    seed: int | None = None,
    stop_at_eos: bool = True,
    backend: str = "auto",
    direct: bool | None = None,
    on_step: Callable[[list[int]], Sequence[bool] | None] | None = None,
) -> "Generation":
    """Generate from token rows with bias plans built in unpadded positions.

    Every plan (a steering of any kind, :mod:`attnlens.steering.kinds`) is shifted to the padded layout and installed
    for the whole generation; plans add up. Returns each row's new tokens, cut after the first
    end-of-sequence token.

    ``backend``: ``"auto"`` runs the wrapped Hugging Face model directly (see
    :mod:`attnlens.runtime.direct`) when that computes what the bridge computes, else the
    bridge's own ``generate``; ``"direct"`` requires the direct run
    (:class:`~attnlens.core.errors.DirectUnavailable` naming why not);
    ``"bridge"`` always uses the bridge. ``direct=True/False`` is the same as
    ``backend="direct"/"bridge"``. The result is a list of token lists whose
    ``backend`` attribute says which ran. Greedy decoding gives the same tokens
    either way; sampling draws from the same distribution through a different
    sampler (Hugging Face's or the bridge's), so seeded samples differ between them.

    ``on_step``: called after every decoding step with each row's new token; it may
    return one flag per row, and a row whose flag is true is finished (with
    ``stop_at_eos``, its later tokens are pad tokens, as after an end token) and the
    run ends when every row is. The direct run calls it as each token is made; the
    bridge, which has no per-step callback, calls it for every step after its
    ``generate`` returns (and cannot stop a row early).

    Concurrent calls on one model take turns (different models run in parallel);
    sampling calls take turns process-wide, and a ``seed`` gives the same samples
    whatever else runs (it is drawn in its own random state, and the process's
    random state is left as it was).
    """
    backend = resolve_backend(backend, direct)
    if on_step is not None and not callable(on_step):
        raise AttnlensError(f"on_step must be a function of the step's tokens, got {type(on_step).__name__}")
    check_generation_kwargs(
        dict(max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature, top_p=top_p, top_k=top_k,
             repetition_penalty=repetition_penalty, seed=seed, stop_at_eos=stop_at_eos)
    )
    if isinstance(rows, (str, bytes)) or not isinstance(rows, Sequence):
        raise AttnlensError(f"rows must be a list of token-id lists, got {type(rows).__name__}")
    vocab = getattr(getattr(model, "cfg", None), "d_vocab", None)
    for i, row in enumerate(rows):
        if isinstance(row, (str, bytes)) or not hasattr(row, "__iter__"):
            raise AttnlensError(f"row {i} must be a list of token ids, got {type(row).__name__}")
        check_token_ids(row, vocab, f"row {i}")
    longest = max((len(r) for r in rows), default=0)
    check_window(model, longest, new_tokens=max_new_tokens,
                 what="the longest prompt" if len(rows) > 1 else "the prompt")
    tokenizer = model.tokenizer
    batch = left_pad(rows, pad_id(tokenizer), model_device(model))
    eos = getattr(tokenizer, "eos_token_id", None)
    # the model is held for the whole generation (other threads' runs of it wait); sampling runs
    # under the process-wide sampling lock, a seed in its own random state (attnlens.core.concurrency)
    with exclusive(model), seeded(seed, model_device(model), sampling=do_sample), ExitStack() as stack, \
            torch.no_grad():
        moved = [shifted(plan, batch.offsets) for plan in plans]
        for plan in moved:
            stack.enter_context(install(model, plan))
        run = backends.open_run(stack, model, backend, logger)
        decoder = decoder_of(moved)  # a steering that runs the decoding steps itself (SPA)
        out = (run if decoder is None else decoder.bind(run)).generate(
            batch.tokens, batch.attention_mask, eos=eos, stop_at_eos=stop_at_eos, pad=pad_id(tokenizer),
            max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature, top_p=top_p,
            top_k=top_k, repetition_penalty=repetition_penalty, on_step=on_step)
    new = out[:, batch.length :].tolist()
    result = Generation(backend=run.name)
    for row in new:
        if stop_at_eos and eos is not None and eos in row:
            row = row[: row.index(eos)]
        result.append(row)
    return result
