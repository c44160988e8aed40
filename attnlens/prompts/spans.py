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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..core.errors import SpanError
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
        return char_span_to_tokens(self.offsets, start, end)


def char_span_to_tokens(
    offsets: Sequence[tuple[int, int]], start: int, end: int
) -> tuple[int, int]:
    """Map the character span ``[start, end)`` to the half-open token range that overlaps it."""
    if not 0 <= start < end:
        raise SpanError(f"character span [{start}, {end}) is empty or negative")
    hits = [i for i, (t0, t1) in enumerate(offsets) if t0 < end and t1 > start]
    if not hits:
        raise SpanError(f"character span [{start}, {end}) covers no token")
    return hits[0], hits[-1] + 1


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
    rendered = tokenizer.apply_chat_template(
        [dict(m) for m in messages], tokenize=False, add_generation_prompt=add_generation_prompt
    )
    marks = [f"\x00attnlens{i}\x00" for i in range(len(messages))]
    probe = tokenizer.apply_chat_template(
        [{**m, "content": mark} for m, mark in zip(messages, marks)],
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
    )
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
