"""Character spans → token spans, through a tokenizer's offsets.

The rule: a token belongs to a character span ``[c0, c1)`` when its own character
range ``[t0, t1)`` overlaps it (``t0 < c1 and t1 > c0``). A token that straddles a
span boundary (``" Rewrite"`` when the span starts at ``R``) therefore belongs to
the span; zero-width tokens (special tokens added by the tokenizer) never do.

For chats, the chat template is applied to the clean messages and the whole
rendered string is tokenized once, so positions are those the model sees,
system prompt and role markers included.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from ..core.errors import AttnlensError, SpanError
from ..core.validate import check_text

Message = Mapping[str, str]


@dataclass(frozen=True)
class Encoded:
    """A prompt as the model sees it: the rendered text, its token ids and offsets."""

    text: str
    input_ids: list[int]
    offsets: list[tuple[int, int]]
    # where each chat message's content starts in ``text`` (empty for plain text)
    message_starts: tuple[int, ...] = field(default=())

    def __len__(self) -> int:
        return len(self.input_ids)

    def token_span(self, start: int, end: int) -> tuple[int, int]:
        """Token range ``[t0, t1)`` covering the character span ``[start, end)`` of ``text``."""
        return self._index.token_span(start, end)

    @cached_property
    def _index(self) -> "OffsetIndex":
        return OffsetIndex(self.offsets)


class OffsetIndex:
    """Token offsets indexed for lookups in ``O(log n)``: many spans map in ``O(spans log tokens)``.

    Tokens with a width are searched by bisection when their starts and ends both
    never decrease (every tokenizer we know); other offsets fall back to a scan.
    """

    def __init__(self, offsets: Sequence[tuple[int, int]]) -> None:
        self.offsets = offsets
        self.positions = [i for i, (t0, t1) in enumerate(offsets) if t1 > t0]
        self.starts = [offsets[i][0] for i in self.positions]
        self.ends = [offsets[i][1] for i in self.positions]
        self.sorted = all(a <= b for a, b in zip(self.starts, self.starts[1:])) and all(
            a <= b for a, b in zip(self.ends, self.ends[1:]))

    def token_span(self, start: int, end: int) -> tuple[int, int]:
        if not 0 <= start < end:
            raise SpanError(f"character span [{start}, {end}) is empty or negative")
        if self.sorted:
            first = bisect_right(self.ends, start)  # the first token that ends after ``start``
            last = bisect_left(self.starts, end) - 1  # the last token that starts before ``end``
            if first <= last:
                return self.positions[first], self.positions[last] + 1
        else:
            hits = [i for i, (t0, t1) in enumerate(self.offsets) if t0 < end and t1 > start]
            if hits:
                return hits[0], hits[-1] + 1
        raise SpanError(f"character span [{start}, {end}) covers no token")


def char_span_to_tokens(
    offsets: Sequence[tuple[int, int]], start: int, end: int
) -> tuple[int, int]:
    """Map the character span ``[start, end)`` to the half-open token range that overlaps it."""
    return OffsetIndex(offsets).token_span(start, end)


def _tokenize(tokenizer: Any, text: str, add_special_tokens: bool) -> Encoded:
    if not getattr(tokenizer, "is_fast", False):
        raise SpanError(
            "mapping spans to tokens needs a fast tokenizer (one that returns offsets); "
            f"{type(tokenizer).__name__} does not"
        )
    enc = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    offsets = [(int(a), int(b)) for a, b in enc["offset_mapping"]]
    return Encoded(text, list(enc["input_ids"]), offsets)


def encode_text(tokenizer: Any, text: str, *, add_special_tokens: bool = True) -> Encoded:
    """Tokenize plain text with offsets (special tokens as the tokenizer adds them)."""
    return _tokenize(tokenizer, check_text(text), add_special_tokens)


def text_ids(tokenizer: Any, text: Any, what: str = "the text", *, add_special_tokens: bool = True) -> list[int]:
    """The token ids of plain text without offsets (special tokens as the tokenizer adds them).

    Text that attnlens tokenizes for a measurement (``attribute``, ``influence``, faithfulness) goes
    through here, checked first: a ``str``, valid Unicode (no lone surrogate such as ``"\\ud800"``,
    which a tokenizer refuses with a bare TypeError) and not empty (``""`` would leave only the
    tokens the tokenizer adds, a BOS). Each is an :class:`~attnlens.core.errors.AttnlensError`
    naming ``what``.
    """
    check_text(text, what)
    if not text:
        raise AttnlensError(f"{what} is empty: give some text (an empty text leaves only the tokens the "
                            "tokenizer adds, such as BOS)")
    try:
        encoded = tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]
    except (TypeError, ValueError) as exc:
        raise AttnlensError(f"{what} cannot be tokenized: {type(exc).__name__}: {exc}") from None
    return [int(t) for t in encoded]


#: the roles a chat message may have
CHAT_ROLES = ("system", "user", "assistant", "tool")


def check_role(role: Any, index: int) -> str:
    """A chat role from :data:`CHAT_ROLES`, else a SpanError naming the message and the role."""
    if not isinstance(role, str) or role not in CHAT_ROLES:
        raise SpanError(f"message {index} has the role {role!r}; a role is one of {', '.join(CHAT_ROLES)}")
    return role


def render_chat(
    tokenizer: Any, messages: Sequence[Message], *, add_generation_prompt: bool = True
) -> tuple[str, tuple[int, ...]]:
    """Apply the chat template; return the rendered text and where each message's content starts.

    Contents are located by rendering the template with unique placeholders and
    substituting the real contents back; a template that rewrites contents (say,
    strips them) falls back to a left-to-right search of each content.
    """
    if getattr(tokenizer, "chat_template", None) is None:
        raise SpanError("the tokenizer has no chat template; pass plain text instead of messages")
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or "content" not in message or "role" not in message:
            raise SpanError(f"message {i} must be a dict with 'role' and 'content'")
        check_role(message["role"], i)
        if not isinstance(message["content"], str):
            raise SpanError(f"message {i}: 'content' must be a string")
        check_text(message["content"], f"message {i} ({message['role']}) content")
    rendered = _apply_template(tokenizer, [dict(m) for m in messages], add_generation_prompt)
    marks = [f"\x00attnlens{i}\x00" for i in range(len(messages))]
    probe = _apply_template(tokenizer, [{**m, "content": mark} for m, mark in zip(messages, marks)],
                            add_generation_prompt)
    starts: list[int] = []
    pieces: list[str] = []
    cursor = 0
    length = 0
    ok = True
    for message, mark in zip(messages, marks):
        at = probe.find(mark, cursor)
        if at < 0 or probe.count(mark) != 1:
            ok = False
            break
        pieces.append(probe[cursor:at])
        length += at - cursor
        starts.append(length)
        pieces.append(message["content"])
        length += len(message["content"])
        cursor = at + len(mark)
    pieces.append(probe[cursor:])
    if ok and "".join(pieces) == rendered:
        return rendered, tuple(starts)
    # fallback: find each content in order
    starts = []
    cursor = 0
    for i, message in enumerate(messages):
        at = rendered.find(message["content"], cursor)
        if at < 0:
            raise SpanError(
                f"the chat template changes the content of message {i}; "
                "its spans cannot be located in the rendered prompt"
            )
        starts.append(at)
        cursor = at + len(message["content"])
    return rendered, tuple(starts)


def _apply_template(tokenizer: Any, messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
    """The tokenizer's chat template applied (rendered in jinja's sandbox, as transformers does); a template
    that fails, or tries to leave the sandbox, is a SpanError naming it."""
    from jinja2.exceptions import SecurityError, TemplateError

    try:
        rendered = tokenizer.apply_chat_template(messages, tokenize=False,
                                                 add_generation_prompt=add_generation_prompt)
    except SecurityError as exc:
        raise SpanError(
            f"the tokenizer's chat template tried to leave jinja's sandbox and was stopped ({exc}); "
            "use a trusted chat template (tokenizer.chat_template)"
        ) from None
    except TemplateError as exc:
        raise SpanError(f"the tokenizer's chat template failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(rendered, str):
        raise SpanError(f"the tokenizer's chat template gave {type(rendered).__name__}, not text")
    return rendered


def encode_chat(
    tokenizer: Any, messages: Sequence[Message], *, add_generation_prompt: bool = True
) -> Encoded:
    """Render a chat with its template and tokenize it with offsets."""
    rendered, starts = render_chat(tokenizer, messages, add_generation_prompt=add_generation_prompt)
    enc = _tokenize(tokenizer, rendered, add_special_tokens=False)
    return Encoded(enc.text, enc.input_ids, enc.offsets, starts)


def find_substring(text: str, substring: str, occurrence: int | None = 0) -> list[tuple[int, int]]:
    """Character spans of ``substring`` in ``text``: one occurrence (0-based) or all (``None``)."""
    if not substring:
        raise SpanError("cannot emphasise an empty substring")
    found = []
    at = text.find(substring)
    while at >= 0:
        found.append((at, at + len(substring)))
        at = text.find(substring, at + 1)
    return pick_occurrence(found, substring, occurrence, "the prompt")


def pick_occurrence(
    found: list[tuple[int, int]], substring: str, occurrence: int | None, where: str
) -> list[tuple[int, int]]:
    """One occurrence (0-based, negative from the end) of the spans ``found``, or all (``None``)."""
    if not found:
        shown = substring if len(substring) <= 60 else substring[:57] + "..."
        raise SpanError(f"substring {shown!r} does not occur in {where}")
    if occurrence is None:
        return found
    if not -len(found) <= occurrence < len(found):
        raise SpanError(
            f"substring {substring[:60]!r} occurs {len(found)} time(s); occurrence "
            f"{occurrence} does not exist"
        )
    return [found[occurrence]]
