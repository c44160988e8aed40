"""What a ``span=`` argument may be, read in one place.

Every call that takes a token span (``influence``, ``rollout``, ``trace_influence``,
``guide``, ``guide_plan``, the views) takes any of:

- the library's own spans: a :class:`~attnlens.prompts.prompt.TokenSpan` (``prompt.spans[0]``),
  or anything with integer ``start`` and ``end`` token positions;
- a ``(start, end)`` pair of token positions (a tuple, a list, a 2-element tensor), half-open;
- a substring (``"Paris"``): the tokens that overlap its first occurrence in the decoded
  tokens (the rule of :mod:`attnlens.prompts.spans`), or ``("Paris", occurrence)`` for another
  occurrence (0-based; negative counts from the end). A substring needs the call to know the
  tokens and a tokenizer (``influence`` has both; ``guide`` has no tokens and refuses one).

A :class:`~attnlens.prompts.tags.TagSpan` counts characters of the clean text, not tokens, and is
refused with a hint (``tokenize_prompt`` turns tags into token spans).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..core.errors import SpanError
from ..core.validate import is_int
from .spans import OffsetIndex, find_substring, pick_occurrence
from .tags import TagSpan


def is_span_like(item: Any) -> bool:
    """Whether ``item`` reads as one span (not a list of spans)."""
    if isinstance(item, str) or _has_bounds(item):
        return True
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
        return True
    if hasattr(item, "tolist") and not isinstance(item, (list, tuple)):
        item = item.tolist()
    return isinstance(item, (list, tuple)) and len(item) == 2 and all(is_int(v) for v in item)


def _has_bounds(item: Any) -> bool:
    return not isinstance(item, (str, bytes, list, tuple)) and hasattr(item, "start") and hasattr(item, "end")


def token_texts(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """Each token decoded alone (what a reader sees of it)."""
    return [tokenizer.decode([int(t)]) for t in ids]


def substring_span(pieces: Sequence[str], substring: str, occurrence: int = 0) -> tuple[int, int]:
    """The token range ``[start, end)`` overlapping one occurrence of ``substring`` in ``"".join(pieces)``."""
    if not isinstance(substring, str) or not substring:
        raise SpanError("a span given as text must be a non-empty substring")
    text = "".join(pieces)
    offsets, at = [], 0
    for piece in pieces:
        offsets.append((at, at + len(piece)))
        at += len(piece)
    found = find_substring(text, substring, None) if substring in text else []
    (c0, c1), = pick_occurrence(found, substring, occurrence, "the tokens")
    return OffsetIndex(offsets).token_span(c0, c1)


def one_span(
    item: Any, seq_len: int | None = None, *, pieces: Sequence[str] | None = None, what: str = "span"
) -> tuple[int, int]:
    """One span argument as a half-open ``(start, end)`` pair of token positions, checked.

    ``pieces``: the decoded tokens, for a substring; ``seq_len``: the sequence's length, for the
    range check (``None``: not checked beyond ``0 <= start < end``).
    """
    if isinstance(item, TagSpan):
        raise SpanError(
            f"{what} {item!r} is a TagSpan: it counts characters of the clean text, not tokens; "
            "tokenize the text (attnlens.tokenize_prompt) and pass prompt.spans[i]"
        )
    if isinstance(item, str) or (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)):
        substring, occurrence = (item, 0) if isinstance(item, str) else item
        if occurrence is not None and not is_int(occurrence):
            raise SpanError(f"{what} {item!r}: the occurrence must be an integer")
        if pieces is None:
            raise SpanError(
                f"{what} {substring!r} is a substring, but this call has no tokens to find it in; "
                "give token positions (start, end) or a TokenSpan"
            )
        start, end = substring_span(pieces, substring, 0 if occurrence is None else int(occurrence))
    elif _has_bounds(item):
        start, end = item.start, item.end
    else:
        if hasattr(item, "tolist") and not isinstance(item, (list, tuple)):
            item = item.tolist()
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            raise SpanError(
                f"{what} {item!r} must be a (start, end) pair of token positions, a TokenSpan or a substring"
            )
        start, end = item
    if any(not is_int(v) for v in (start, end)):
        raise SpanError(f"{what} {(start, end)!r}: start and end must be integers")
    start, end = int(start), int(end)
    if start < 0 or end <= start:
        raise SpanError(f"{what} [{start}, {end}) is empty or negative: need 0 <= start < end")
    if seq_len is not None and end > seq_len:
        raise SpanError(f"{what} [{start}, {end}) runs past the sequence of {seq_len} tokens")
    return start, end


def token_spans(
    items: Any, seq_len: int | None = None, *, pieces: Sequence[str] | None = None, what: str = "span"
) -> list[tuple[int, int]]:
    """A list of span arguments (or one) as ``[(start, end), ...]``, each read by :func:`one_span`."""
    if is_span_like(items):
        items = [items]
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
        raise SpanError(f"{what}s must be a list of spans, got {type(items).__name__}")
    return [one_span(item, seq_len, pieces=pieces, what=what) for item in items]
