"""Steering and influence tags: text ⇄ clean text plus character spans.

Tags:

==============================  =========  =====
``<!-> … <-!>``                 guide      1
``<!!-> … <-!!>``               guide      2
``<!!!-> … <-!!!>``             guide      3
``<?-> … <-?>``                 influence  0
==============================  =========  =====

The clean text is the input with the tags removed and nothing else changed
(whitespace around a tag is kept), so ``"<!->Be brief.<-!> Hi"`` becomes
``"Be brief. Hi"`` with the span ``[0, 9)``.

A tag preceded by an odd number of backslashes is literal text: ``\\<!->``
reads as ``<!->``; each pair of backslashes just before a tag reads as one
backslash. :func:`escape_tags` applies that rule to untrusted text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from ..core.errors import TagError

Kind = Literal["guide", "influence"]

_TAG = re.compile(r"(\\*)(<(!{1,3}|\?)->|<-(!{1,3}|\?)>)")


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


def _describe(marker: str) -> tuple[Kind, int]:
    if marker == "?":
        return "influence", 0
    return "guide", len(marker)


def _tag_name(marker: str, closing: bool) -> str:
    return f"<-{marker}>" if closing else f"<{marker}->"


def parse_tags(text: str) -> ParsedText:
    """Remove tags from ``text`` and return the clean text with one span per tag pair.

    Raises:
        TagError: unbalanced, nested, overlapping or empty spans, or a closing tag
            of another kind or level; the message names the character position in
            the input.
    """
    if not isinstance(text, str):
        raise TypeError(f"parse_tags expects a str, got {type(text).__name__}")
    out: list[str] = []
    spans: list[TagSpan] = []
    cursor = 0  # position in the input
    clean_len = 0
    open_marker: str | None = None
    open_at = 0  # input position of the open tag
    open_clean = 0  # clean position where the span starts
    for match in _TAG.finditer(text):
        slashes, tag, open_m, close_m = match.groups()
        tag_pos = match.start(2)
        piece = text[cursor : match.start()] + "\\" * (len(slashes) // 2)
        if len(slashes) % 2 == 1:  # escaped: literal tag text
            piece += tag
            out.append(piece)
            clean_len += len(piece)
            cursor = match.end()
            continue
        out.append(piece)
        clean_len += len(piece)
        cursor = match.end()
        if open_m is not None:
            if open_marker is not None:
                raise TagError(
                    f"nested or overlapping tag {tag!r}: {_tag_name(open_marker, False)!r} "
                    f"opened at character {open_at} is still open",
                    tag_pos,
                )
            open_marker, open_at, open_clean = open_m, tag_pos, clean_len
            continue
        if open_marker is None:
            raise TagError(f"closing tag {tag!r} without an opening tag", tag_pos)
        if close_m != open_marker:
            raise TagError(
                f"closing tag {tag!r} does not match {_tag_name(open_marker, False)!r} "
                f"opened at character {open_at} (expected {_tag_name(open_marker, True)!r})",
                tag_pos,
            )
        if clean_len == open_clean or not "".join(out)[open_clean:].strip():
            raise TagError(
                f"empty span between {_tag_name(open_marker, False)!r} at character "
                f"{open_at} and {tag!r}",
                tag_pos,
            )
        kind, level = _describe(open_marker)
        spans.append(TagSpan(open_clean, clean_len, kind, level))
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
    """Make every tag in ``text`` literal, so :func:`parse_tags` returns ``text`` unchanged."""
    return _TAG.sub(lambda m: m.group(1) * 2 + "\\" + m.group(2), text)


def has_tags(text: str) -> bool:
    """Whether ``text`` contains at least one (unescaped) tag."""
    return any(len(m.group(1)) % 2 == 0 for m in _TAG.finditer(text))
