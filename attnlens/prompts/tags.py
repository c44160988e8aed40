"""Steering and influence tags: text ⇄ clean text plus character spans.

Tags:

==============================  =========  =====
``<!-> … <-!>``                 guide      1
``<!!-> … <-!!>``               guide      2
``<!!!-> … <-!!!>``             guide      3
``<?-> … <-?>``                 influence  0
==============================  =========  =====

The clean text (what the model sees) is the input with the tags removed, and
whitespace just inside a tag pair is the markup's padding, not text
(``whitespace="collapse"``, the default):

- a span never starts or ends with whitespace: ``<!-> Rewrite in French: <-!>``
  marks ``Rewrite in French:``;
- padding is dropped where whitespace the user wrote already stands beside it,
  and at the start or end of the text; elsewhere the first padding of the run
  stays as the one separator (``Paris<!-> is big<-!>`` reads ``Paris is big``);
- all other whitespace is kept as written.

So ``"<!-> Rewrite in French: <-!> Paris"`` reads ``"Rewrite in French: Paris"``
with the span ``[0, 18)``, and ``"<!->Be brief.<-!> Hi"`` reads ``"Be brief. Hi"``
with the span ``[0, 9)``. ``whitespace="keep"`` removes the tags and changes
nothing else (pay-attention-pipeline's reading: ``" Rewrite in French:  Paris"``,
the span with its spaces).

A tag preceded by an odd number of backslashes is literal text: ``\\<!->``
reads as ``<!->``; each pair of backslashes just before a tag reads as one
backslash. ``<!-->`` (a break) reads as nothing; it ends a run of
backslashes, so ``a\\\\<!--><!->`` reads as ``a\\`` and then a real tag.
:func:`escape_tags` applies these rules to untrusted text: its result reads
back unchanged alone, next to tags and next to other escaped text. Parsing,
escaping and :func:`has_tags` are linear in the length of the text.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import dataclass
from typing import Literal

from ..core.errors import TagError

Kind = Literal["guide", "influence"]

# A tag with the whole run of backslashes before it. The lookbehind makes a match
# start only where a run starts, so a long run is read once: linear time.
# ``<!-->`` is the break: it reads as nothing and only ends a run of backslashes
# (``escape_tags`` puts one after text that ends in backslashes).
_TAG = re.compile(r"(?<!\\)(\\*)<(?:(!{1,3}|\?)->|-(!{1,3}|\?)>|!-->)")
BREAK = "<!-->"


def _check_str(text: object, function: str) -> str:
    if not isinstance(text, str):
        raise TagError(f"{function} expects a str, got {type(text).__name__} {_preview(text)}")
    return text


def _preview(value: object) -> str:
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def _scan(text: str):
    """Each tag (a match; group 1 is the backslashes before it) with the number of those backslashes."""
    for match in _TAG.finditer(text):
        yield match, match.end(1) - match.start(1)


@dataclass(frozen=True)
class TagSpan:
    """A tagged character span ``[start, end)`` of the clean text."""

    start: int
    end: int
    kind: Kind
    level: int  # 1-3 for guide, 0 for influence

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.end:
            raise ValueError(f"invalid span [{self.start}, {self.end})")


@dataclass(frozen=True)
class ParsedText:
    """The result of :func:`parse_tags`: the clean text and its tagged spans, in order."""

    text: str
    spans: tuple[TagSpan, ...]

    def substring(self, span: TagSpan) -> str:
        return self.text[span.start : span.end]


_KINDS: dict[str, tuple[Kind, int]] = {"!": ("guide", 1), "!!": ("guide", 2), "!!!": ("guide", 3), "?": ("influence", 0)}


def _span(start: int, end: int, marker: str) -> TagSpan:
    """A TagSpan the parser has already checked (``0 <= start < end``), built without the dataclass' checks."""
    span = object.__new__(TagSpan)
    kind, level = _KINDS[marker]
    span.__dict__.update(start=start, end=end, kind=kind, level=level)
    return span


def _tag_name(marker: str, closing: bool) -> str:
    return f"<-{marker}>" if closing else f"<{marker}->"


WHITESPACE = ("collapse", "keep")


def check_whitespace(whitespace: object) -> str:
    """``"collapse"`` (the default) or ``"keep"``; see the module docstring."""
    if whitespace not in WHITESPACE:
        raise TagError(f"whitespace must be 'collapse' or 'keep', got {whitespace!r}")
    return whitespace  # type: ignore[return-value]


def parse_tags(text: str, *, whitespace: str = "collapse") -> ParsedText:
    """Remove tags from ``text`` and return the clean text with one span per tag pair.

    ``whitespace``: ``"collapse"`` (the default) treats whitespace just inside a tag
    pair as padding (see the module docstring); ``"keep"`` removes only the tags.

    Raises:
        TagError: unbalanced, nested, overlapping or empty spans, or a closing tag
            of another kind or level; the message names the character position in
            the input.
    """
    _check_str(text, "parse_tags")
    parsed = _parse_verbatim(text)
    return _collapse(parsed) if check_whitespace(whitespace) == "collapse" and parsed.spans else parsed


def _collapse(parsed: ParsedText) -> ParsedText:
    """Drop the padding just inside each span (see the module docstring); touches only the runs of
    whitespace at the spans' edges, so it stays linear in the text."""
    text = parsed.text
    n = len(text)
    pad: dict[int, int] = {}  # position -> 1 (padding after an opening tag) or 2 (before a closing tag)
    cores = []
    runs: dict[int, int] = {}  # whitespace runs that hold padding: start -> end
    for span in parsed.spans:
        start, end = span.start, span.end
        while text[start].isspace():  # a span is never blank: both loops stop inside it
            pad[start] = 1
            start += 1
        while text[end - 1].isspace():
            end -= 1
            pad[end] = 2
        cores.append((start, end))
        for edge in (span.start, span.end - 1):
            if edge in pad:
                lo, hi = edge, edge + 1
                while lo > 0 and text[lo - 1].isspace():
                    lo -= 1
                while hi < n and text[hi].isspace():
                    hi += 1
                runs[lo] = hi
    cuts: list[tuple[int, int]] = []  # removed ranges, in order
    for i in sorted(runs):
        j = runs[i]
        own = [k for k in range(i, j) if k not in pad]  # whitespace the user wrote (one piece)
        if own:
            lo, hi = own[0], own[-1] + 1
        elif 0 < i and j < n:  # only padding, between two words: its first piece separates them
            lo, hi = i, i + 1
            while hi < j and pad[hi] == pad[i]:
                hi += 1
        else:  # only padding, at the start or end of the text
            lo = hi = i
        if lo > i:
            cuts.append((i, lo))
        if j > hi:
            cuts.append((max(hi, i), j))
    pieces, cursor = [], 0
    for c0, c1 in cuts:
        pieces.append(text[cursor:c0])
        cursor = c1
    pieces.append(text[cursor:])
    starts = [c0 for c0, _ in cuts]
    removed = [0]
    for c0, c1 in cuts:
        removed.append(removed[-1] + c1 - c0)

    def moved(position: int) -> int:  # a kept position's place in the new text
        return position - removed[bisect_right(starts, position)]

    spans = tuple(_span(moved(a), moved(b - 1) + 1, _marker(s)) for (a, b), s in zip(cores, parsed.spans))
    return ParsedText("".join(pieces), spans)


def _marker(span: TagSpan) -> str:
    return "?" if span.kind == "influence" else "!" * span.level


def _parse_verbatim(text: str) -> ParsedText:
    out: list[str] = []
    spans: list[TagSpan] = []
    cursor = 0  # position in the input
    clean_len = 0
    open_marker: str | None = None
    open_at = 0  # input position of the open tag
    open_clean = 0  # clean position where the span starts
    open_blank = True  # only whitespace since the open tag
    for match in _TAG.finditer(text):
        slashes, open_m, close_m = match.groups()
        run_start, tag_pos = match.span(1)
        n_slashes = tag_pos - run_start
        if n_slashes:
            piece = text[cursor:run_start] + "\\" * (n_slashes // 2)
            if n_slashes % 2:  # escaped: literal tag text
                piece += text[tag_pos : match.end()]
        else:
            piece = text[cursor:run_start]
        if piece:
            if open_blank and not piece.isspace():
                open_blank = False
            out.append(piece)
            clean_len += len(piece)
        cursor = match.end()
        if n_slashes % 2 or (open_m is None and close_m is None):  # literal, or a break
            continue
        if open_m is not None:
            if open_marker is not None:
                raise TagError(
                    f"nested or overlapping tag {text[tag_pos:cursor]!r}: {_tag_name(open_marker, False)!r} "
                    f"opened at character {open_at} is still open",
                    tag_pos,
                )
            open_marker, open_at, open_clean, open_blank = open_m, tag_pos, clean_len, True
            continue
        if open_marker is None:
            raise TagError(f"closing tag {text[tag_pos:cursor]!r} without an opening tag", tag_pos)
        if close_m != open_marker:
            raise TagError(
                f"closing tag {text[tag_pos:cursor]!r} does not match {_tag_name(open_marker, False)!r} "
                f"opened at character {open_at} (expected {_tag_name(open_marker, True)!r})",
                tag_pos,
            )
        if open_blank:
            raise TagError(
                f"empty span between {_tag_name(open_marker, False)!r} at character "
                f"{open_at} and {text[tag_pos:cursor]!r}",
                tag_pos,
            )
        spans.append(_span(open_clean, clean_len, open_marker))
        open_marker = None
    if open_marker is not None:
        raise TagError(
            f"unbalanced tag {_tag_name(open_marker, False)!r}: no "
            f"{_tag_name(open_marker, True)!r} follows",
            open_at,
        )
    out.append(text[cursor:])
    return ParsedText("".join(out), tuple(spans))


def escape_tags(text: str) -> str:
    """Make ``text`` inert: :func:`parse_tags` reads it back unchanged, alone or next to tags.

    Every tag (and break) in it becomes literal, and text that ends in backslashes
    gets a break after them, so a tag placed right after it is not escaped by them.
    Linear in the length of ``text``.
    """
    _check_str(text, "escape_tags")
    out: list[str] = []
    cursor = 0
    for match, n_slashes in _scan(text):
        out.append(text[cursor : match.start()])
        out.append("\\" * (2 * n_slashes + 1))
        out.append(text[match.end(1) : match.end()])
        cursor = match.end()
    tail = text[cursor:]
    out.append(tail)
    stripped = tail.rstrip("\\")
    if len(stripped) < len(tail):  # ends in backslashes: double them and close the run
        out.append("\\" * (len(tail) - len(stripped)) + BREAK)
    return "".join(out)


def has_tags(text: str) -> bool:
    """Whether ``text`` contains at least one (unescaped) tag; a break is not a tag."""
    _check_str(text, "has_tags")
    return any(n % 2 == 0 and (m.group(2) or m.group(3)) for m, n in _scan(text))
