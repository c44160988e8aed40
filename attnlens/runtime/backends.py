"""The runtime seam: how a model is steered, run forward and made to generate.

A :class:`Runtime` is one way of running a TransformerLens bridge. It says
whether it can run a model (:meth:`Runtime.reason`) and opens a run
(:meth:`Runtime.open`) whose :class:`Run` computes logits (``forward``) and new
tokens (``generate``). A runtime does not install steerings: a steering installs
itself (:meth:`attnlens.steering.kinds.Steering.install`, called by
:func:`~attnlens.runtime.generate.generate_batch` before the runtime is chosen,
since ``"auto"`` chooses by the hooks on the model) and records itself as active
in the call's context, which is where the direct run's fused attention reads it
(:func:`attnlens.steering.kinds.active_at`); a :class:`~attnlens.steering.kinds.DecodingOverride`
wraps the opened run. Two are registered:

- ``"bridge"``: the bridge's own forward and ``generate`` (every hook point runs);
- ``"direct"``: the wrapped Hugging Face model, run directly with the bridge's
  attention hook points routed through (:mod:`attnlens.runtime.direct`) and the
  fused long-context path for bias plans (:mod:`attnlens.runtime.fused`).

:func:`get` returns one by name, :func:`names` lists them, :func:`register`
adds another (a server, another engine; also from a plugin, :mod:`attnlens.core.plugins`), :func:`open_run` picks the runtime of
a ``backend`` argument (``"auto"``: direct when it computes what the bridge
does, else the bridge) for :func:`~attnlens.runtime.generate.generate_batch`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any, ContextManager, Protocol, runtime_checkable

import torch

from ..core.errors import AttnlensError, DirectUnavailable
from ..core.model import Model
from ..core.registry import Registry
from .direct import direct, direct_reason
from .upstream import check_kv_cache, quiet_cache_rename

logger = logging.getLogger(__name__)


@runtime_checkable
class Run(Protocol):
    """An open run of one model: what a runtime does while it is open."""

    name: str

    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[batch, pos, vocab]`` for ``tokens``."""

    def generate(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None, *, eos: int | None,
                 stop_at_eos: bool, pad: int, max_new_tokens: int, do_sample: bool, temperature: float, top_p: float | None,
                 top_k: int | None, repetition_penalty: float,
                 on_step: Callable[[list[int]], Sequence[bool] | None] | None = None) -> torch.Tensor:
        """``tokens`` followed by the new tokens, ``[batch, pos + new]`` (left-padded input).

        ``on_step`` is called with each row's new token after every step and may return one
        flag per row (a true flag finishes that row); see
        :func:`~attnlens.runtime.generate.generate_batch`."""


@runtime_checkable
class Runtime(Protocol):
    """One way of running a model: say whether it can, open a run (the steerings installed in the call's
    context apply to it)."""

    name: str

    def reason(self, model: Model) -> str | None:
        """Why this runtime cannot run ``model`` (None when it can)."""

    def open(self, model: Model) -> ContextManager[Run]:
        """Open a run of ``model`` for a ``with`` block."""


class _BridgeRun:
    name = "bridge"

    def __init__(self, model: Model) -> None:
        self.model = model

    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        kwargs = {} if attention_mask is None else {"attention_mask": attention_mask}
        return self.model(tokens, **kwargs)

    def generate(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None, *, eos: int | None,
                 stop_at_eos: bool, pad: int, max_new_tokens: int, do_sample: bool, temperature: float, top_p: float | None,
                 top_k: int | None, repetition_penalty: float,
                 on_step: Callable[[list[int]], Sequence[bool] | None] | None = None) -> torch.Tensor:
        check_kv_cache(self.model)
        with quiet_cache_rename():
            out = self.model.generate(
                tokens, attention_mask=attention_mask, max_new_tokens=max_new_tokens, do_sample=do_sample,
                temperature=temperature, top_p=top_p, top_k=top_k, repetition_penalty=repetition_penalty,
                stop_at_eos=stop_at_eos, verbose=False,
            )
        if on_step is not None:  # the bridge has no per-step callback: the steps are replayed (no early stop)
            for step in range(tokens.shape[1], out.shape[1]):
                on_step(out[:, step].tolist())
        return out


class BridgeRuntime:
    """The bridge's own forward and ``generate``."""

    name = "bridge"

    def reason(self, model: Model) -> str | None:
        return None if hasattr(model, "generate") else f"{type(model).__name__} has no generate()"

    @contextmanager
    def open(self, model: Model) -> Iterator[Run]:
        yield _BridgeRun(model)


class _DirectRun:
    name = "direct"

    def __init__(self, hf: Any) -> None:
        self.hf = hf

    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        kwargs = {} if attention_mask is None else {"attention_mask": attention_mask}
        return self.hf(tokens, use_cache=False, **kwargs).logits

    def generate(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None, *, eos: int | None,
                 stop_at_eos: bool, pad: int, max_new_tokens: int, do_sample: bool, temperature: float, top_p: float | None,
                 top_k: int | None, repetition_penalty: float,
                 on_step: Callable[[list[int]], Sequence[bool] | None] | None = None) -> torch.Tensor:
        return hf_generate(self.hf, tokens, attention_mask, eos if stop_at_eos else None, pad, max_new_tokens=max_new_tokens,
                           do_sample=do_sample, temperature=temperature, top_p=top_p, top_k=top_k,
                           repetition_penalty=repetition_penalty, on_step=on_step)


class DirectRuntime:
    """The wrapped Hugging Face model run directly, with the fused path for bias plans."""

    name = "direct"

    def reason(self, model: Model) -> str | None:
        return direct_reason(model)

    @contextmanager
    def open(self, model: Model) -> Iterator[Run]:
        with direct(model) as hf:
            yield _DirectRun(hf)


def hf_generate(hf: Any, tokens: torch.Tensor, attention_mask: torch.Tensor | None, eos: int | None, pad: int, *,
                max_new_tokens: int, do_sample: bool, temperature: float, top_p: float | None, top_k: int | None,
                repetition_penalty: float,
                on_step: Callable[[list[int]], Sequence[bool] | None] | None = None) -> torch.Tensor:
    """Hugging Face ``generate`` with the bridge's meaning of each argument.

    ``generate`` fills every setting left unset from the model's own generation
    config, so a stop token it names would end the text even with ``eos=None``;
    the model's config is therefore replaced by this call's for its duration.
    Sampling uses no top-k unless asked for. ``on_step`` runs as a stopping criterion.
    """
    from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

    class _Steps(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
            stop = on_step(input_ids[:, -1].tolist())
            flags = [False] * input_ids.shape[0] if stop is None else [bool(f) for f in stop]
            if len(flags) != input_ids.shape[0]:
                raise AttnlensError(f"on_step returned {len(flags)} flags for {input_ids.shape[0]} rows")
            return torch.tensor(flags, dtype=torch.bool, device=input_ids.device)

    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        temperature=temperature if do_sample else None,
        top_p=(1.0 if top_p is None else top_p) if do_sample else None,
        top_k=(top_k or 0) if do_sample else None,
        repetition_penalty=repetition_penalty,
        eos_token_id=eos,
        pad_token_id=pad,
        bos_token_id=getattr(hf.generation_config, "bos_token_id", None),
    )
    mask = attention_mask if attention_mask is not None else torch.ones_like(tokens)
    own = hf.generation_config
    hf.generation_config = config
    try:
        criteria = StoppingCriteriaList([_Steps()]) if on_step is not None else None
        return hf.generate(tokens, attention_mask=mask, generation_config=config, stopping_criteria=criteria)
    finally:
        hf.generation_config = own


def _check(runtime: Runtime) -> None:
    if runtime.name == "auto":
        raise AttnlensError("'auto' chooses among the runtimes; it cannot name one")


def _unknown(name: Any, registered: tuple[str, ...]) -> str:
    return f"backend must be one of auto, {', '.join(registered)}; got {name!r}"


#: the runtimes by name (the one registry type, :class:`attnlens.core.registry.Registry`)
_RUNTIMES: Registry[Runtime] = Registry("runtime", Runtime, check=_check, aliases=lambda runtime: (),
                                        unknown=_unknown)


def register(runtime: Runtime, *, replace: bool = False) -> Runtime:
    """Add a runtime under its ``name`` (an object with ``name``, ``reason()`` and ``open()``)."""
    if not isinstance(runtime, Runtime):
        raise AttnlensError(f"a runtime needs name, reason() and open(); got {type(runtime).__name__}")
    return _RUNTIMES.register(runtime, replace=replace)


def unregister(name: str) -> None:
    """Remove a registered runtime."""
    _RUNTIMES.unregister(name)


def names() -> tuple[str, ...]:
    """The registered runtimes' names."""
    return _RUNTIMES.names()


def get(name: str) -> Runtime:
    """A registered runtime by name."""
    if not isinstance(name, str):
        raise AttnlensError(_unknown(name, names()))
    return _RUNTIMES.get(name)


#: the runtime ``"auto"`` tries first, then the one it falls back to
AUTO_ORDER = ("direct", "bridge")


def open_run(stack: ExitStack, model: Model, backend: str, log: logging.Logger | None = None) -> Run:
    """Open the run ``backend`` names on ``stack`` (``"auto"``: the first of :data:`AUTO_ORDER` that can run
    ``model``, saying on ``log`` why the ones before could not); a named runtime that cannot run the model
    raises naming why (:class:`~attnlens.core.errors.DirectUnavailable` for the direct run)."""
    if backend != "auto":
        return stack.enter_context(get(backend).open(model))
    reasons = []
    for name in AUTO_ORDER:
        runtime = get(name)
        reason = runtime.reason(model)
        if reason is None:
            try:
                run = stack.enter_context(runtime.open(model))
            except DirectUnavailable as exc:
                reason = exc.reason
            else:
                hooked = [r for r in reasons if hasattr(r, "point")]  # a hook of the user's (direct.HookReason)
                if hooked:  # said out loud: the run leaves the direct path, and it costs time
                    (log or logger).warning(
                        "a hook on %s makes this run leave the direct path: it runs through the TransformerLens "
                        "%s, which is slower (every hook point is called at every step); without the hook the "
                        "run takes the direct path again", hooked[0].point, name)
                elif reasons:
                    (log or logger).debug("generating through the %s: %s", name, "; ".join(reasons))
                return run
        reasons.append(reason)
    raise AttnlensError(f"no runtime can run this model: {'; '.join(reasons)}")


register(BridgeRuntime())
register(DirectRuntime())
