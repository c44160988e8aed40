"""The part of a chat the template adds unasked: a default system prompt.

Some chat templates (SmolLM2's among them) put a system message of their own before
the user's first message when the chat has none. Views leave it out unless asked
(``system_prompt=True``): it is about 20 tokens of the template, not of the prompt.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..core.errors import SpanError
from .spans import Encoded, _apply_template

_SENTINEL = "\x00attnlens-system\x00"


def default_system_tokens(
    tokenizer: Any, messages: Sequence[Mapping[str, str]], encoded: Encoded, *, add_generation_prompt: bool = True
) -> int:
    """How many leading tokens of ``encoded`` (a rendered chat) are a system message the template added.

    Found by rendering the chat again with a system message of known content: where the
    two renderings differ is the template's default. The count runs to the end of that
    message's turn: its closing special token and the whitespace after it. ``0`` when the
    chat has its own system message, or the template adds none.
    """
    if not messages or messages[0].get("role") == "system":
        return 0
    try:
        probe = _apply_template(tokenizer, [{"role": "system", "content": _SENTINEL}, *map(dict, messages)],
                                add_generation_prompt)
    except SpanError:
        return 0
    at = probe.find(_SENTINEL)
    if at < 0:
        return 0
    text, tail = encoded.text, probe[at + len(_SENTINEL):]
    cut = len(text) - len(tail)
    if not text.endswith(tail) or text[:at] != probe[:at] or cut <= at:
        return 0
    ids, offsets = encoded.input_ids, encoded.offsets
    n = next((i for i, (start, _) in enumerate(offsets) if start >= cut), len(ids))
    special = set(getattr(tokenizer, "all_special_ids", ()) or ())
    if n < len(ids) and ids[n] in special:  # the default message's closing token, and the whitespace after it
        n += 1
        while n < len(ids) and ids[n] not in special and text[offsets[n][0]:offsets[n][1]].isspace():
            n += 1
    return n
