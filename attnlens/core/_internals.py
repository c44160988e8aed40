"""Every place attnlens reaches into TransformerLens, transformers or torch beyond their documented API.

Checked against TransformerLens 4.3.0, transformers 5.23.0 and 5.24.0, torch 2.13.0.
When one of them changes, this module is what to read again; nothing else in
attnlens touches these internals.

- TransformerLens: a hook point's ``fwd_hooks`` list (:func:`remove_lens_hook`), ``AttentionBridge._update_kv_cache`` (wrapped by
  :func:`mend_kv_cache_argument` while TransformerLens ignores transformers 5.24's
  ``cache`` argument); ``GeneralizedComponent`` and its public ``original_component``
  (the wrapped Hugging Face module); a block's ``_capture_hook_handles`` (the
  bridge's own hooks, which a direct run may ignore); a bridge block's
  ``forward`` (replaced per instance by :func:`replace_forward`).
- transformers: ``AttentionInterface`` and ``AttentionMaskInterface`` (their
  ``register`` has no counterpart that removes an entry, so entries are removed
  from ``_global_mapping``), ``sdpa_mask``, ``sdpa_attention_forward``, the output-capturing
  hooks of ``transformers.utils.output_capturing`` (installed on a model's first forward), a
  config's ``_attn_implementation``.
- torch: a module's child table ``_modules``, its hook tables ``_forward_hooks``
  and ``_forward_pre_hooks``, ``RemovableHandle.next_id`` (incremented by every
  hook registration).
- accelerate (1.x): a dispatched module's ``_hf_hook`` and the class names of its
  hooks (``AlignDevicesHook``, chained in a ``SequentialHook``).
"""

from __future__ import annotations

import functools
import logging
import threading

from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- TransformerLens


def is_wrapper(module: nn.Module) -> bool:
    """Whether ``module`` is a TransformerLens bridge component wrapping a Hugging Face module."""
    from transformer_lens.model_bridge.generalized_components.base import GeneralizedComponent

    return isinstance(module, GeneralizedComponent)


def original_component(wrapper: nn.Module) -> nn.Module | None:
    """The Hugging Face module a bridge component wraps (TransformerLens' public accessor)."""
    return getattr(wrapper, "original_component", None)


def capture_hook_ids(block: nn.Module) -> set[int]:
    """Handle ids of the hooks a bridge block installs for itself."""
    return {handle.id for handle in getattr(block, "_capture_hook_handles", ())}


def output_capturing_hook_ids(module: nn.Module) -> set[int]:
    """Handle ids of transformers' output-capturing forward hooks on ``module`` (transformers 5:
    ``transformers.utils.output_capturing``, installed on a model's first forward; they record
    hidden states or attentions only while a caller asks for them, and change nothing else)."""
    return {k for k, hook in module._forward_hooks.items()
            if getattr(hook, "__module__", "") == "transformers.utils.output_capturing"}


@contextmanager
def replace_forward(modules: list[nn.Module], forward: Callable[..., Any]) -> Iterator[None]:
    """Give each module ``forward`` for the ``with`` block (on the instance; restored on exit).

    Bridge components forward attribute writes to the module they wrap, so the
    write goes to the instance's ``__dict__`` directly.
    """
    try:
        for module in modules:
            object.__setattr__(module, "forward", forward)
        yield
    finally:
        for module in modules:
            module.__dict__.pop("forward", None)


_workaround_applied = False


class _ProbeCache:
    """Stands in for a Hugging Face cache: records whether the bridge updated it."""

    def __init__(self) -> None:
        self.updated = False

    def update(self, k: torch.Tensor, v: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any):
        self.updated = True
        return k, v


class _ProbeAttention:
    _layer_idx = 0
    name = "probe"


def _bridge_reads_cache_kwarg(update_kv_cache: Any) -> bool:
    """Whether TransformerLens' cache update uses a cache passed as ``cache=``."""
    probe = _ProbeCache()
    k = v = torch.zeros(1, 1, 1, 1)
    try:
        update_kv_cache(_ProbeAttention(), k, v, cache=probe)
    except Exception as exc:  # an internal that changed shape: the guard decides
        logger.debug("could not probe TransformerLens' KV cache update: %r", exc)
        return True
    return probe.updated


def mend_kv_cache_argument() -> bool:
    """Let TransformerLens' attention bridge read the KV cache transformers passes as ``cache``.

    transformers 5.24 renamed the cache argument of its attention modules from
    ``past_key_values`` to ``cache``; TransformerLens 4.3.0's
    ``AttentionBridge._update_kv_cache`` reads only the old name, so cached
    decoding through the bridge ignores the cache. This wraps that method to hand
    the cache over under the old name, only when a probe shows the installed
    TransformerLens ignores ``cache`` (so it switches itself off once upstream reads
    the new name, and can then be deleted). Idempotent; returns whether it is in place.
    """
    global _workaround_applied
    if _workaround_applied:
        return True
    try:
        from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge
    except ImportError:  # a TransformerLens without this component: nothing to mend
        return False
    original = AttentionBridge._update_kv_cache
    if _bridge_reads_cache_kwarg(original):
        return False

    @functools.wraps(original)
    def _update_kv_cache(self: Any, k: torch.Tensor, v: torch.Tensor, **kwargs: Any):
        if kwargs.get("past_key_values") is None and kwargs.get("cache") is not None:
            kwargs["past_key_values"] = kwargs["cache"]
        return original(self, k, v, **kwargs)

    _update_kv_cache.__attnlens_original__ = original  # type: ignore[attr-defined]
    AttentionBridge._update_kv_cache = _update_kv_cache
    _workaround_applied = True
    logger.info("TransformerLens ignores the KV cache that transformers passes as 'cache': "
                "handing it over as 'past_key_values'")
    return True


def add_lens_hook(point: nn.Module, fn: Callable[..., Any]) -> Any:
    """Add ``fn`` to a TransformerLens hook point (its public ``add_hook``); returns the handle
    that :func:`remove_lens_hook` takes. The caller removes it itself: no context level is
    involved, so another thread's ``hooks()`` block can neither remove it nor be disturbed."""
    with _lens_mutex:
        return point.add_hook(fn, dir="fwd")


def lens_hook_id(handle: Any) -> int:
    """The torch hook id behind a handle :func:`add_lens_hook` gave (the key of the function in the
    hook point's forward-hook table, which :func:`hook_entries` lists)."""
    return handle.hook.id


def hook_entries(module: nn.Module) -> tuple[list[tuple[int, Any]], list[tuple[int, Any]]]:
    """``(forward pre-hooks, forward hooks)`` registered on ``module``, as ``(hook id, function)`` pairs."""
    return list(module._forward_pre_hooks.items()), list(module._forward_hooks.items())


def converts_tensors(point: nn.Module) -> bool:
    """Whether a TransformerLens hook point converts the tensors its hooks see (``hook_conversion``)."""
    return getattr(point, "hook_conversion", None) is not None


def processed_weights(model: Any) -> bool:
    """Whether a bridge runs with processed weights (its ``compatibility_mode``)."""
    return bool(getattr(model, "compatibility_mode", False))


def remove_lens_hook(point: nn.Module, handle: Any) -> None:
    """Remove a handle :func:`add_lens_hook` gave (the hook point's ``fwd_hooks`` list, and torch's hook)."""
    with _lens_mutex:
        handle.hook.remove()
        hooks = getattr(point, "fwd_hooks", None)
        if hooks is not None:
            hooks[:] = [h for h in hooks if h is not handle]


_lens_mutex = threading.Lock()


# ----------------------------------------------------------------------------- torch


def children(module: nn.Module) -> list[tuple[str, nn.Module | None]]:
    return list(module._modules.items())


def set_child(parent: nn.Module, name: str, child: nn.Module | None) -> None:
    """Put ``child`` in ``parent``'s child table, bypassing any ``__setattr__`` of ``parent``."""
    parent._modules[name] = child


def has_hooks(module: nn.Module, ignore: Collection[int] = ()) -> bool:
    """Whether ``module`` has a forward or forward-pre hook whose handle id is not in ``ignore``.

    transformers' own output-capturing hooks (installed once, the first time anything
    asks a model for extra outputs) are part of the model and do not count.
    """
    return any(k not in ignore and not _transformers_hook(f) for k, f in module._forward_hooks.items()) or any(
        k not in ignore and not _transformers_hook(f) for k, f in module._forward_pre_hooks.items()
    )


def hook_functions(module: nn.Module) -> tuple[list[Any], list[Any]]:
    """``(forward pre-hooks, forward hooks)`` registered on ``module``, as the functions given."""
    return list(module._forward_pre_hooks.values()), list(module._forward_hooks.values())


def _transformers_hook(fn: Any) -> bool:
    return str(getattr(fn, "__module__", "")).startswith("transformers.utils.output_capturing")


def hook_counter() -> int:
    """A number that changes whenever any torch module hook is registered anywhere."""
    return RemovableHandle.next_id


#: accelerate's hooks that only move weights and tensors between devices (accelerate 1.x:
#: ``dispatch_model`` installs AlignDevicesHook, chained in a SequentialHook)
_MOVING_HOOKS = frozenset({"AlignDevicesHook", "SequentialHook"})


def offload_hook_kinds(module: nn.Module) -> set[str]:
    """The class names of the accelerate hooks on ``module`` (none when it is not dispatched)."""
    hook = module.__dict__.get("_hf_hook")
    if hook is None:
        return set()
    kinds = {type(hook).__name__}
    for inner in getattr(hook, "hooks", ()) or ():
        kinds.add(type(inner).__name__)
    return kinds


def moves_only(kinds: set[str]) -> bool:
    """Whether accelerate hooks of these kinds only place weights and tensors (results unchanged)."""
    return kinds <= _MOVING_HOOKS


# ----------------------------------------------------------------------------- transformers


def has_attention_implementation(config: Any) -> bool:
    return config is not None and hasattr(config, "_attn_implementation")


def registered_attention(name: str) -> Callable[..., Any] | None:
    """The attention function registered under ``name`` with transformers, if any."""
    return attention_interfaces()[0]._global_mapping.get(name)


def attention_implementation(config: Any) -> str | None:
    return getattr(config, "_attn_implementation", None)


def set_attention_implementation(config: Any, name: str | None) -> None:
    config._attn_implementation = name


def attention_interfaces() -> tuple[Any, Any, Callable[..., Any]]:
    """``(AttentionInterface, AttentionMaskInterface, sdpa_mask)``; ImportError when this transformers lacks them."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    return AttentionInterface, AttentionMaskInterface, sdpa_mask


_registrations: dict[str, list[Any]] = {}  # name -> [users, what was registered before]
_registration_mutex = threading.Lock()


@contextmanager
def registering_attention(name: str, attention: Callable[..., Any]) -> Iterator[None]:
    """Register ``attention`` (with sdpa's masks) under ``name`` for the ``with`` block.

    Counted: nested and concurrent blocks share one registration (the first one's
    ``attention``; callers register one dispatching function), and what was
    registered under ``name`` before is put back when the last block ends (a name
    that was not registered is removed).
    """
    attention_interface, mask_interface, sdpa_mask = attention_interfaces()
    with _registration_mutex:
        entry = _registrations.get(name)
        if entry is None:
            missing = object()
            saved = [(iface, iface._global_mapping.get(name, missing), missing)
                     for iface in (attention_interface, mask_interface)]
            attention_interface.register(name, attention)
            # sdpa's masks: none where causality alone masks (the fused kernels' is_causal), else a
            # boolean mask; the reference path turns either into the bridge's additive eager mask
            mask_interface.register(name, sdpa_mask)
            entry = _registrations[name] = [0, saved]
        entry[0] += 1
    try:
        yield
    finally:
        with _registration_mutex:
            entry[0] -= 1
            if entry[0] == 0:
                del _registrations[name]
                for iface, previous, missing in entry[1]:
                    if previous is missing:
                        iface._global_mapping.pop(name, None)
                    else:
                        iface._global_mapping[name] = previous


def sdpa_attention(*args: Any, **kwargs: Any) -> Any:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(*args, **kwargs)


def can_start_at_layer(model: Any) -> bool:
    """Whether a bridge can start a forward pass at a middle block (TransformerLens' own set-up method)."""
    return hasattr(model, "blocks") and hasattr(model, "_setup_start_at_layer")


def name_or_path(hf_model: Any) -> str:
    """The name or path a Hugging Face model was loaded from ('' when unknown); its config keeps it privately."""
    return getattr(hf_model, "name_or_path", None) or getattr(getattr(hf_model, "config", None), "_name_or_path", "")


def hub_revision(hf_model: Any) -> str | None:
    """The hub commit a Hugging Face model was downloaded at (None for a local or built model); its config
    keeps it privately."""
    value = getattr(getattr(hf_model, "config", None), "_commit_hash", None)
    return value if isinstance(value, str) and value else None


# ----------------------------------------------------------------------------- the key-value cache
# Continuous batching (attnlens.runtime.continuous) joins and drops rows of a running generation's
# cache. Checked on transformers 5.24.0: DynamicCache holds one DynamicLayer per layer (``keys`` and
# ``values``: [batch, kv_head, position, d_head]), built lazily by ``update``; sliding-window layers
# (DynamicSlidingWindowLayer) keep only the last window and are not joined here.


def new_kv_cache() -> Any:
    """An empty Hugging Face DynamicCache (its layers are made by the first forward)."""
    from transformers import DynamicCache

    return DynamicCache()


def kv_cache_layers(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """Each layer's ``(keys, values)``; None when a layer is not a plain growing layer (sliding windows)."""
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    if not layers or any(type(layer) is not DynamicLayer or not layer.is_initialized for layer in layers):
        return None
    return [(layer.keys, layer.values) for layer in layers]


def set_kv_cache_layers(cache: Any, tensors: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Replace each layer's keys and values (same layer count)."""
    if len(cache.layers) != len(tensors):
        raise ValueError(f"the cache has {len(cache.layers)} layers; {len(tensors)} given")
    for layer, (keys, values) in zip(cache.layers, tensors):
        layer.keys, layer.values = keys, values


def select_kv_cache_rows(cache: Any, index: torch.Tensor, start: int = 0) -> bool:
    """Keep only the batch rows ``index`` of every layer's keys and values, and their positions from ``start``
    on; False, changing nothing, when a layer is not a plain growing one (:func:`kv_cache_layers`)."""
    layers = kv_cache_layers(cache)
    if layers is None:
        return False
    set_kv_cache_layers(cache, [(k.index_select(0, index)[..., start:, :], v.index_select(0, index)[..., start:, :])
                                for k, v in layers])
    return True


def kv_cache_argument(hf_model: Any) -> str:
    """The name under which the model's forward takes its key-value cache: ``cache`` (transformers 5.24
    renamed it) or ``past_key_values`` (earlier releases, and 5.24's deprecated spelling)."""
    import inspect

    try:
        parameters = inspect.signature(hf_model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - a forward without a signature
        return "past_key_values"
    return "cache" if "cache" in parameters else "past_key_values"
