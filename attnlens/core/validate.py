"""The checks every layer shares: integers (not bools), layer and head selections.

One place for each: :func:`is_int`, :func:`resolve_layers`, :func:`resolve_heads`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Union

from .errors import AttnlensError

#: ``"all" | "none" | "first" | "last" | int | [ints] | "0,2 5" | None``
LayerSpec = Union[str, int, Iterable[int], None]


def is_int(value: Any) -> bool:
    """True for an ``int`` that is not a ``bool`` (``True`` is an int to Python, not to a user)."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(value: Any, what: str, *, minimum: int | None = None, error: type[Exception] = AttnlensError) -> int:
    """``value`` when it is an integer (at least ``minimum``), else ``error`` naming ``what``."""
    if not is_int(value):
        raise error(f"{what} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise error(f"{what} must be at least {minimum}, got {value!r}")
    return value


def resolve_layers(layers: LayerSpec, n_layers: int) -> tuple[int, ...]:
    """Turn ``"all" | "none" | "first" | "last" | int | [ints]`` into sorted layer indices.

    Negative indices count from the end, as in Python.
    """
    if layers is None or (isinstance(layers, str) and layers.lower() == "none"):
        return ()
    if isinstance(layers, str):
        key = layers.strip().lower()
        named = {"all": range(n_layers), "first": [0], "last": [n_layers - 1]}
        if key in named:
            return tuple(named[key])
        try:
            layers = [int(part) for part in key.replace(",", " ").split()]
        except ValueError:
            raise AttnlensError(
                f"layers={layers!r}: expected 'all', 'none', 'first', 'last' or layer indices"
            ) from None
    if is_int(layers):
        layers = [layers]  # type: ignore[list-item]
    resolved = set()
    for layer in layers:  # type: ignore[union-attr]
        if not is_int(layer):
            raise AttnlensError(f"layer {layer!r} is not an integer")
        if not -n_layers <= layer < n_layers:
            raise AttnlensError(f"layer {layer} out of range: the model has {n_layers} layers")
        resolved.add(layer % n_layers)
    return tuple(sorted(resolved))


def resolve_layer(layer: Any, n_layers: int) -> int:
    """One layer index (negative counts from the end)."""
    if not is_int(layer):
        raise AttnlensError(f"layer must be an integer, got {layer!r}")
    if not -n_layers <= layer < n_layers:
        raise AttnlensError(f"layer {layer} out of range: the model has {n_layers} layers (0..{n_layers - 1})")
    return layer % n_layers


def resolve_heads(
    heads: Iterable[int] | int | str | None,
    n_heads: int,
    *,
    layer: int | None = None,
    negative: bool = True,
    error: type[Exception] = AttnlensError,
) -> tuple[int, ...] | None:
    """Validate head indices: one int, several, ``"all"`` or ``"0,2 3"``; ``None`` means every head.

    Negative indices count from the end (unless ``negative=False``); the result is
    sorted and unique. ``error`` is the exception class raised (a subclass of
    :class:`AttnlensError` names the caller's kind of input).
    """
    if heads is None:
        return None
    where = f" in layer {layer}" if layer is not None else ""
    if isinstance(heads, str):
        if heads.strip().lower() == "all":
            return tuple(range(n_heads))
        try:
            heads = [int(h) for h in heads.replace(",", " ").split()]
        except ValueError:
            raise error(f"heads={heads!r}{where}: expected 'all' or head indices") from None
    if is_int(heads):
        heads = [heads]  # type: ignore[list-item]
    low = -n_heads if negative else 0
    out = set()
    for head in heads:  # type: ignore[union-attr]
        if not is_int(head):
            raise error(f"head {head!r}{where} is not an integer")
        if not low <= head < n_heads:
            raise error(f"head {head}{where} out of range: layers have {n_heads} heads (0..{n_heads - 1})")
        out.add(head % n_heads)
    if not out:
        raise error(f"empty head list{where}")
    return tuple(sorted(out))
