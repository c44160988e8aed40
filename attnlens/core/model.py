"""Facts about a model that every layer asks for: its shape, device, dtype, pad id and context window.

:class:`Model` names what attnlens needs from a "model": a TransformerLens
``TransformerBridge`` (or anything offering the same) with a ``cfg``, a
``tokenizer``, ``parameters()``, context-scoped ``hooks()``, ``run_with_hooks``
and ``generate``.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Iterator, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

from .errors import AttnlensError, ContextWindowError


@runtime_checkable
class Model(Protocol):
    """What attnlens calls on a model (TransformerLens' ``TransformerBridge`` offers all of it)."""

    cfg: Any
    tokenizer: Any

    def parameters(self) -> Iterator[torch.nn.Parameter]: ...

    def hooks(self, fwd_hooks: list = ..., **kwargs: Any) -> AbstractContextManager[Any]: ...

    def run_with_hooks(self, *args: Any, **kwargs: Any) -> Any: ...

    def generate(self, *args: Any, **kwargs: Any) -> Any: ...


def model_shape(model: Any) -> tuple[int, int]:
    """``(n_layers, n_heads)`` of a TransformerLens model or bridge."""
    cfg = getattr(model, "cfg", None)
    if cfg is None:
        raise AttnlensError(
            f"expected a TransformerLens model (with .cfg), got {type(model).__name__}"
        )
    return int(cfg.n_layers), int(cfg.n_heads)


def model_device(model: Any) -> torch.device:
    """Where the model's inputs go: the device of its first parameter (torch's default without any).

    A model placed across devices by accelerate (``load_model(..., device_map=...)``) takes its
    inputs on the first device of its map that computes ("disk" weights run on another one).
    """
    import torch  # here, not at the top: the command line imports this module before any model

    hf = getattr(model, "original_model", model)
    device_map = getattr(hf, "hf_device_map", None)
    if isinstance(device_map, dict) and device_map:
        for target in device_map.values():
            if str(target) not in ("disk", "meta"):
                return torch.device("cuda", target) if isinstance(target, int) else torch.device(target)
        return torch.device("cpu")
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError, TypeError):
        return torch.get_default_device()


def model_dtype(model: Any) -> torch.dtype:
    """The dtype of the model's first parameter (float32 for a model without any)."""
    try:
        return next(model.parameters()).dtype
    except (StopIteration, AttributeError, TypeError):
        import torch

        return torch.float32


def pad_id(tokenizer: Any) -> int:
    """The tokenizer's pad token, else its end-of-sequence token, else 0."""
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    return 0


def context_window(model: Any) -> int | None:
    """The model's context length in tokens (``cfg.n_ctx``), None when it does not say."""
    n_ctx = getattr(getattr(model, "cfg", None), "n_ctx", None)
    return int(n_ctx) if n_ctx else None


def check_window(model: Any, n_tokens: int, *, new_tokens: int = 0, what: str = "the prompt") -> None:
    """A :class:`ContextWindowError` when ``n_tokens`` (plus ``new_tokens`` to generate) exceed the model's window."""
    n_ctx = context_window(model)
    if n_ctx is None or n_tokens + new_tokens <= n_ctx:
        return
    if n_tokens > n_ctx:
        raise ContextWindowError(
            f"{what} has {n_tokens} tokens, more than the model's context window of {n_ctx} tokens; shorten it"
        )
    raise ContextWindowError(
        f"{what} has {n_tokens} tokens; with max_new_tokens={new_tokens} that is {n_tokens + new_tokens}, "
        f"more than the model's context window of {n_ctx} tokens (at most {n_ctx - n_tokens} new tokens fit)"
    )
