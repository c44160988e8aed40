"""Direct execution: run a bridge's wrapped Hugging Face model without its per-module wrappers.

A TransformerBridge splices a wrapper component (with its hook points) in place
of every sub-module of the Hugging Face model it wraps: about 1,760 module calls
per decoding step on the embedded model, where the plain model makes about 400.
Steered generation needs only the attention hooks, so :func:`direct` puts each
wrapped module back in its place for the duration of a ``with`` block and routes
attention through a Hugging Face attention function that fires the bridge's own
``blocks.{l}.attn.hook_attn_scores`` and ``blocks.{l}.attn.hook_pattern``
hook points, with the same tensors the bridge gives them: the scaled, masked
pre-softmax scores ``[batch, head, query, key]`` and the pattern after the
softmax. Hooks installed on those points (every bias plan of attnlens is) act as
they do through the bridge; layers whose points have no hooks run Hugging
Face's fused ``sdpa`` attention.

It is used only when it computes what the bridge computes: :func:`direct_reason`
says why not otherwise (a hook on any other hook point or module, an
architecture whose equivalence is not tested, processed weights, accelerate
hooks that do more than place weights), and callers then run the bridge as it
is. A model placed across devices by accelerate (``load_model(...,
device_map=...)``) runs directly: the wrapped modules keep accelerate's hooks,
which load offloaded weights and move tensors to each module's device around
its forward, and the attention routing sees the tensors where they are.
Everything is restored on exit, also when the body raises: the wrappers, each
config's attention implementation and the attention function registered with
transformers (what was registered under its name before is put back).

Hooks added inside the block are checked on every forward call: one on a hook
point the direct run sets aside (it would never fire) raises
:class:`~attnlens.core.errors.DirectUnavailable`; hooks on the score and pattern
points take effect. The run's state (which attention module fires which hook
points) lives in the run itself; the model carries only its configs' attention
implementation, which is how a second direct block on the same model in one thread
is refused. A block holds the model (:func:`attnlens.core.concurrency.exclusive`), so
another thread's block or forward of the same model waits for it; one attention
function serves the blocks of every model, registered once while any block is open.
Everything it touches in TransformerLens and transformers goes through
:mod:`attnlens.core._internals`.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from jaxtyping import Float
from torch import nn

from ..core.model import Model
from ..core.concurrency import exclusive, guard_hook_ids
from ..core.errors import DirectUnavailable
from ..core import _internals as tl
from . import fused

logger = logging.getLogger(__name__)

#: the name registered with transformers' attention and mask interfaces
IMPLEMENTATION = "attnlens_hooked"

#: Hugging Face model types whose direct run is tested against the bridge
SUPPORTED_MODEL_TYPES = frozenset({"gemma", "gemma2", "gemma3_text", "gpt2", "llama", "mistral", "phi3", "qwen2",
                                   "qwen3"})

#: keyword arguments of an attention call that change the computation beyond
#: scores + mask -> softmax -> values (attention sinks, ...); soft-capped scores (Gemma 2's
#: ``softcap``) run on the reference path, which caps them as the bridge does
_UNSUPPORTED_ATTENTION_KWARGS = ("s_aux", "sinks", "position_bias")

Route = tuple["nn.Module | None", "nn.Module | None"]


def _register() -> None:
    """Raise ImportError when this transformers cannot take a custom attention function."""
    tl.attention_interfaces()


def hooked_attention(
    module: nn.Module,
    query: Float[torch.Tensor, "batch head query d_head"],
    key: Float[torch.Tensor, "batch kv_head key d_head"],
    value: Float[torch.Tensor, "batch kv_head key d_head"],
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    *,
    route: Route = (None, None),
    **kwargs: Any,
) -> tuple[Float[torch.Tensor, "batch query head d_head"], Float[torch.Tensor, "batch head query key"] | None]:
    """A Hugging Face attention function that fires a bridge's score and pattern hook points.

    ``route`` is ``(hook_attn_scores, hook_pattern)`` of the block ``module`` belongs to;
    without hooks on either, Hugging Face's fused ``sdpa`` attention runs.
    """
    for name in _UNSUPPORTED_ATTENTION_KWARGS:
        if kwargs.get(name) is not None:
            raise NotImplementedError(f"direct attention does not support {name!r}")
    scores_point, pattern_point = route
    softcap = kwargs.pop("softcap", None)
    # the fused long-context path (runtime.fused): bias plans and influence without a score matrix;
    # soft-capped scores are not a sum over keys, so they never fold (the reference path caps them)
    fused_out = None if softcap is not None else fused.attention(
        module, query, key, value, attention_mask, scaling, dropout, scores_point, pattern_point, **kwargs)
    if fused_out is not None:
        return fused_out
    if softcap is None and not (scores_point is not None and tl.has_hooks(scores_point)) and not (
        pattern_point is not None and tl.has_hooks(pattern_point)
    ):
        return tl.sdpa_attention(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                 **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    scores = torch.matmul(query, key.transpose(-2, -1)) * scaling
    if softcap is not None:  # Gemma 2: softcap * tanh(scores / softcap), before the mask (as the bridge does)
        scores = torch.tanh(scores / softcap) * softcap
    causal = kwargs.get("is_causal")
    if attention_mask is None and query.shape[-2] > 1 and (getattr(module, "is_causal", True) if causal is None
                                                          else causal):
        # sdpa's masks leave causality to the kernel; the reference path spells it out
        queries, keys = query.shape[-2], key.shape[-2]
        attention_mask = torch.ones(queries, keys, dtype=torch.bool, device=scores.device).tril(keys - queries)
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            attention_mask = torch.zeros((), dtype=scores.dtype, device=scores.device).masked_fill(
                ~attention_mask, torch.finfo(scores.dtype).min
            )
        scores = scores + attention_mask[..., : key.shape[-2]].to(scores.dtype)
    if scores_point is not None:
        scores = scores_point(scores)
    pattern = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    if dropout and module.training:
        pattern = nn.functional.dropout(pattern, p=dropout, training=True)
    if pattern_point is not None:
        pattern = pattern_point(pattern)
    out = torch.matmul(pattern, value).transpose(1, 2).contiguous()
    return out, pattern


def _routes(model: Model) -> dict[nn.Module, Route] | str:
    """``{Hugging Face attention module: (hook_attn_scores, hook_pattern)}``, or why there is none."""
    routes: dict[nn.Module, Route] = {}
    for block in model.blocks:
        attn = getattr(block, "attn", None)
        original = None if attn is None else tl.original_component(attn)
        if original is None:
            return "a block has no wrapped attention module"
        routes[original] = (getattr(attn, "hook_attn_scores", None), getattr(attn, "hook_pattern", None))
    return routes


def attention_output_module(block: nn.Module) -> nn.Module | None:
    """The wrapped module whose output is ``block``'s attention sub-layer output as the bridge's
    ``hook_attn_out`` reads it: the post-attention norm where the block has one (Gemma 2 and 3 add
    ``norm(attn(x))`` to the residual), else the attention module."""
    post = getattr(block, "ln1_post", None)
    return tl.original_component(post if post is not None else block.attn)


def _allowed_and_internal(model: Model, routes: dict[nn.Module, Route]) -> tuple[set[int], set[int]]:
    allowed = {id(point) for route in routes.values() for point in route if point is not None}
    internal: set[int] = guard_hook_ids()
    for block in model.blocks:
        internal |= tl.capture_hook_ids(block)
    for module in model.modules():  # transformers' own recorders run the same in the direct run
        internal |= tl.output_capturing_hook_ids(module)
    return allowed, internal


class HookReason(str):
    """A reason that is a hook of the user's: ``point`` is its public TransformerLens name."""

    point: str


def _hooked_module(model: Model, modules: Any, allowed: set[int], internal: set[int]) -> str | None:
    for module in modules:
        if id(module) not in allowed and tl.has_hooks(module, internal):
            names = sorted((k for k, v in getattr(model, "hook_dict", {}).items() if v is module),
                           # the alias a user writes first: the shortest, TransformerLens' own names (hook_z,
                           # hook_resid_pre) before the bridge's generic hook_in / hook_out of the same point
                           key=lambda k: (k.count("."), k.endswith((".hook_in", ".hook_out")), k))
            reason = HookReason(f"{names[0] if names else _name_of(model, module)} has a hook"
                                + (f" (the same hook point as {', '.join(names[1:])})" if names[1:] else ""))
            reason.point = names[0] if names else _name_of(model, module)
            return reason
    return None


def in_use(model: Model) -> bool:
    """Whether a direct block is running ``model`` right now (in this thread or another)."""
    config = getattr(getattr(model, "original_model", None), "config", None)
    return config is not None and tl.attention_implementation(config) == IMPLEMENTATION


def direct_reason(model: Model) -> str | None:
    """Why :func:`direct` cannot run ``model`` (None when it can)."""
    hf = getattr(model, "original_model", None)
    if hf is None or not isinstance(hf, nn.Module) or not hasattr(model, "blocks"):
        return f"{type(model).__name__} is not a TransformerBridge over a Hugging Face model"
    config = getattr(hf, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        return f"model type {model_type!r} is not among those tested for direct runs"
    if tl.processed_weights(model):
        return "the bridge runs in compatibility mode (processed weights)"
    if in_use(model):
        return "a direct block is already active on this model"
    try:
        _register()
    except ImportError as exc:  # a transformers without the attention interfaces
        return f"this transformers cannot take a custom attention function ({exc})"
    routes = _routes(model)
    if isinstance(routes, str):
        return routes
    allowed, internal = _allowed_and_internal(model, routes)
    for module in model.modules():
        kinds = tl.offload_hook_kinds(module)
        if kinds and not tl.moves_only(kinds):  # accelerate's placement hooks run inside the direct run too
            return (f"{_name_of(model, module)} carries accelerate hooks ({', '.join(sorted(kinds))}) that do more "
                    "than place weights; run it with backend='bridge'")
        if tl.is_wrapper(module) and tl.original_component(module) is None:
            return f"{_name_of(model, module)} ({type(module).__name__}) wraps no module"
    return _hooked_module(model, model.modules(), allowed, internal)


def _name_of(model: nn.Module, target: nn.Module) -> str:
    return next((name or "the model" for name, module in model.named_modules() if module is target), "a module")


class _Run:
    """One direct block's state: the attention routes and the hook check."""

    def __init__(self, model: Model, routes: dict[nn.Module, Route]) -> None:
        self.model = model
        self.routes = routes
        self.allowed, self.internal = _allowed_and_internal(model, routes)
        self.set_aside: list[nn.Module] = []
        self.hooks_seen = -1

    def check_hooks(self, *_: Any, **__: Any) -> None:
        """Before every forward: a hook registered since the last check must be one that fires."""
        if tl.hook_counter() == self.hooks_seen:
            return
        reason = _hooked_module(self.model, self.set_aside, self.allowed, self.internal | guard_hook_ids())
        if reason is not None:
            raise DirectUnavailable(f"{reason}, added inside the direct block, where it would not be called")
        self.hooks_seen = tl.hook_counter()


#: Hugging Face attention module -> the direct run routing it (every run of every model)
_runs: "weakref.WeakKeyDictionary[nn.Module, _Run]" = weakref.WeakKeyDictionary()
_runs_mutex = threading.Lock()


def _attention(module: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """The one attention function registered with transformers: the route of ``module``'s run."""
    run = _runs.get(module)
    route = run.routes.get(module) if run is not None else None
    return hooked_attention(module, *args, route=route or (None, None), **kwargs)


@contextmanager
def direct(model: Model) -> Iterator[nn.Module]:
    """Run ``model``'s wrapped Hugging Face model directly for the ``with`` block.

    Yields the Hugging Face model; call it or its ``generate`` inside the block.
    Raises :class:`~attnlens.core.errors.DirectUnavailable` naming the reason when
    :func:`direct_reason` gives one, and from a forward call inside the block when a
    hook was added to a module the direct run does not call.

    The block holds the model (:func:`attnlens.core.concurrency.exclusive`): a
    direct block or attnlens run of the same model in another thread waits for it,
    and so does a forward of the model another thread starts meanwhile; nobody else
    sees the swapped modules. Blocks on different models run at the same time.
    """
    with exclusive(model):
        reason = direct_reason(model)
        if reason is not None:
            raise DirectUnavailable(reason)
        routes = _routes(model)
        if isinstance(routes, str):  # a model that changed since the check
            raise DirectUnavailable(routes)
        with _running(model, routes) as hf:
            yield hf


@contextmanager
def _running(model: Model, routes: dict[nn.Module, Route]) -> Iterator[nn.Module]:
    hf: nn.Module = model.original_model
    run = _Run(model, routes)
    before = list(model.modules())
    swaps: list[tuple[nn.Module, str, nn.Module]] = []
    configs: dict[int, tuple[Any, str | None]] = {}  # id(config) -> (config, its implementation)
    with ExitStack() as stack:
        stack.enter_context(tl.registering_attention(IMPLEMENTATION, _attention))
        with _runs_mutex:
            for module in routes:
                _runs[module] = run

        def forget() -> None:
            with _runs_mutex:
                for module in routes:
                    if _runs.get(module) is run:
                        del _runs[module]

        stack.callback(forget)
        try:
            todo, seen = [hf], set()
            while todo:
                module = todo.pop()
                if id(module) in seen:
                    continue
                seen.add(id(module))
                for name, child in tl.children(module):
                    if child is not None and tl.is_wrapper(child):
                        original = tl.original_component(child)
                        tl.set_child(module, name, original)
                        swaps.append((module, name, child))
                        child = original
                    if child is not None:
                        todo.append(child)
            for module in hf.modules():
                config = getattr(module, "config", None)
                if tl.has_attention_implementation(config) and id(config) not in configs:
                    configs[id(config)] = (config, tl.attention_implementation(config))
                    tl.set_attention_implementation(config, IMPLEMENTATION)
            running = {id(m) for m in hf.modules()}
            run.set_aside = [m for m in before if id(m) not in running]
            handle = hf.register_forward_pre_hook(run.check_hooks)
            stack.callback(handle.remove)
            run.hooks_seen = tl.hook_counter()
            logger.debug("direct run: %d wrappers set aside", len(swaps))
            yield hf
        finally:
            for config, implementation in configs.values():
                tl.set_attention_implementation(config, implementation)
            for module, name, child in reversed(swaps):
                tl.set_child(module, name, child)
