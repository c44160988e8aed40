"""The checks every layer shares: integers (not bools), layer and head selections.

One place for each: :func:`is_int`, :func:`resolve_layers`, :func:`resolve_heads`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Union

from .errors import AttnlensError

#: ``"all" | "none" | "first" | "last" | int | [ints] | "0,2 5" | None``
LayerSpec = Union[str, int, Iterable[int], None]


def plain_scalar(value: Any) -> Any:
    """A numpy scalar or a 0-d torch tensor as the Python number it holds; anything else unchanged.

    Every check below takes numpy and torch scalars as it takes Python numbers (a
    ``numpy.bool_`` is a bool, so it is refused where a number is asked for).
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    kind = type(value).__module__.split(".")[0]
    if kind == "numpy" and getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        return value.item()
    if kind == "torch" and getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        return value.item()
    return value


def is_int(value: Any) -> bool:
    """True for an ``int`` that is not a ``bool`` (``True`` is an int to Python, not to a user);
    numpy and torch integer scalars count."""
    value = plain_scalar(value)
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(value: Any, what: str, *, minimum: int | None = None, error: type[Exception] = AttnlensError) -> int:
    """``value`` when it is an integer (at least ``minimum``), else ``error`` naming ``what``."""
    value = plain_scalar(value)
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
        if not key:
            raise AttnlensError(f"layers={layers!r} selects no layer; pass 'none' to steer no layer")
        named = {"all": range(n_layers), "first": [0], "last": [n_layers - 1]}
        if key in named:
            return tuple(named[key])
        try:
            layers = [int(part) for part in key.replace(",", " ").split()]
        except ValueError:
            raise AttnlensError(
                f"layers={layers!r}: expected 'all', 'none', 'first', 'last' or layer indices"
            ) from None
    layers = plain_scalar(layers)
    if is_int(layers):
        layers = [layers]  # type: ignore[list-item]
    if not isinstance(layers, Iterable) or isinstance(layers, (bytes, dict)):
        raise AttnlensError(
            f"layers={layers!r}: expected 'all', 'none', 'first', 'last', a layer index or a list of them"
        )
    layers = list(layers)
    if not layers:
        raise AttnlensError("layers=[] selects no layer; pass 'none' to steer no layer")
    resolved = set()
    for layer in map(plain_scalar, layers):  # type: ignore[arg-type]
        if not is_int(layer):
            raise AttnlensError(f"layer {layer!r} is not an integer")
        if not -n_layers <= layer < n_layers:
            raise AttnlensError(f"layer {layer} out of range: the model has {n_layers} layers")
        resolved.add(layer % n_layers)
    return tuple(sorted(resolved))


def resolve_layer(layer: Any, n_layers: int) -> int:
    """One layer index (negative counts from the end)."""
    layer = plain_scalar(layer)
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
    heads = plain_scalar(heads)
    if is_int(heads):
        heads = [heads]  # type: ignore[list-item]
    low = -n_heads if negative else 0
    out = set()
    for head in map(plain_scalar, heads):  # type: ignore[arg-type]
        if not is_int(head):
            raise error(f"head {head!r}{where} is not an integer")
        if not low <= head < n_heads:
            raise error(f"head {head}{where} out of range: layers have {n_heads} heads (0..{n_heads - 1})")
        out.add(head % n_heads)
    if not out:
        raise error(f"empty head list{where}")
    return tuple(sorted(out))


#: The largest bias magnitude a plan takes: far past what saturates a softmax, far below
#: float32's overflow (3.4e38) even when many terms add up.
BIAS_LIMIT = 1e30


def check_number(
    value: Any, what: str, *, positive: bool = False, error: type[Exception] = AttnlensError
) -> float:
    """``value`` as a finite float (``> 0`` with ``positive``); bools, strings and NaN are errors naming ``what``."""
    value = plain_scalar(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise error(f"{what} must be a number, got {value!r}")
    try:
        number = float(value)
    except OverflowError:
        raise error(f"{what} must be a finite number, got {value!r}") from None
    if not math.isfinite(number):
        raise error(f"{what} must be a finite number, got {value!r}")
    if positive and number <= 0:
        raise error(f"{what} must be > 0, got {value!r}")
    return number


def check_bias(value: Any, what: str = "bias value") -> float:
    """A finite bias with ``|value| <= BIAS_LIMIT``, else an error naming ``what``."""
    number = check_number(value, what)
    if abs(number) > BIAS_LIMIT:
        raise AttnlensError(
            f"{what} {value!r} is too large: biases must be within ±{BIAS_LIMIT:g} "
            "(larger ones overflow float32 attention scores)"
        )
    return number


def check_bool(value: Any, what: str) -> bool:
    """``value`` when it is True or False (numpy and torch booleans too); strings such as ``"False"`` are errors."""
    value = plain_scalar(value)
    if not isinstance(value, bool):
        raise AttnlensError(f"{what} must be True or False, got {value!r}")
    return value


def check_seed(seed: Any, what: str = "seed") -> int | None:
    """None, or an integer in ``[0, 2**64)`` (what torch's generators take)."""
    if seed is None:
        return None
    if not is_int(seed) or not 0 <= seed < 2**64:
        raise AttnlensError(f"{what} must be None or an integer in [0, 2**64), got {seed!r}")
    return seed


def check_text(text: Any, what: str = "text") -> str:
    """``text`` when it is a str that UTF-8 can encode (no lone surrogates), else an error naming ``what``."""
    if not isinstance(text, str):
        raise AttnlensError(f"{what} must be a str, got {type(text).__name__} {_short(text)}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise AttnlensError(
            f"{what} has a lone surrogate {text[exc.start]!r} at character {exc.start}: not valid Unicode "
            "(decode bytes with errors='replace', or drop it)"
        ) from None
    return text


def check_token_ids(ids: Iterable[Any], vocab: int | None, what: str = "token ids") -> list[int]:
    """Integer ids in ``[0, vocab)``; the first one outside is named with its position."""
    out = []
    for position, token in enumerate(ids):
        if hasattr(token, "item") and getattr(token, "ndim", 0) == 0:
            token = token.item()
        if not is_int(token) or token < 0 or (vocab is not None and token >= vocab):
            limit = f"[0, {vocab})" if vocab is not None else "non-negative integers"
            raise AttnlensError(f"{what}: {token!r} at position {position} is not a token id of this model ({limit})")
        out.append(token)
    return out


def _short(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."


#: query parameters whose values are secrets (matched inside the name: ``api-key``, ``access_token``, ``sig``)
_SECRET_PARAMETER = ("key", "token", "secret", "password", "passwd", "pwd", "auth", "sig", "credential", "session",
                     "code")


def _secret_name(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_PARAMETER)


def url_secrets(url: Any) -> list[str]:
    """The secrets a URL carries: its user name and password, and the values of key-like query parameters
    (each as written and as decoded)."""
    from urllib.parse import parse_qsl, quote, unquote, urlsplit

    try:
        parts = urlsplit(str(url))
    except ValueError:
        return []
    found = []
    for value in (parts.username, parts.password):
        if value:
            found += [value, unquote(value)]
    for name, value in parse_qsl(parts.query, keep_blank_values=False):
        if _secret_name(name) and value:
            found += [value, quote(value, safe=""), quote(value)]
    return sorted({s for s in found if len(s) >= 3}, key=len, reverse=True)


def redact_url(url: Any) -> str:
    """``url`` for messages and logs: no user name or password, key-like query values replaced by ``***``."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    text = str(url)
    try:
        parts = urlsplit(text)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "an endpoint (its URL cannot be shown)"
    if ":" in host:  # IPv6
        host = f"[{host}]"
    netloc = ("***@" if parts.username or parts.password else "") + host + (f":{port}" if port else "")
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if _secret_name(k) and v else v) for k, v in pairs], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def redact(text: str, *secrets: Any) -> str:
    """``text`` with each secret (at least 4 characters) replaced by ``***``."""
    for secret in sorted({s for s in secrets if isinstance(s, str) and len(s) >= 4}, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text
