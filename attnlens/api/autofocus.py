"""Automatic focus: the model names the sentences of a context that matter, and those are emphasised.

After AutoPASTA (Zhang et al., 2024, "Model Tells Itself Where to Attend"):
the model is first asked which sentences of the context matter for the
request; those sentences are then wrapped in GUIDE tags (``<!-> ... <-!>``),
which every method that steers the tags (GUIDE, InstABoost, SpotLight, SPA)
emphasises, or returned as substrings for a method that steers emphasised
substrings (PASTA's ``emphasize``).

The question numbers the sentences (``[1] ...``) and asks for the numbers;
the answer is read robustly (``2, 3``, ``[2] and [3]``, ``sentences two and
three``, or a sentence quoted word for word). An answer that names no sentence
raises :class:`~attnlens.core.errors.AttnlensError` (``fallback="error"``), or
emphasises every sentence (``"all"``) or none (``"none"``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..core.errors import AttnlensError
from ..core.records import Showable

logger = logging.getLogger(__name__)

FALLBACKS = ("error", "all", "none")
_WORDS = {w: i + 1 for i, w in enumerate(
    "one two three four five six seven eight nine ten eleven twelve".split())}
_ORDINALS = {w: i + 1 for i, w in enumerate(
    "first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth".split())}
_SENTENCE = re.compile(r"[^.!?\n]+(?:[.!?]+[\"')\]]*|\n|$)")


class FocusError(AttnlensError):
    """The model's answer named no sentence of the context (and the fallback is ``"error"``)."""


def sentences(text: str) -> list[tuple[int, int]]:
    """The ``(start, end)`` character ranges of ``text``'s sentences (surrounding spaces left out)."""
    out = []
    for m in _SENTENCE.finditer(text):
        start, end = m.start(), m.end()
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        if end > start:
            out.append((start, end))
    return out


def question(numbered: Sequence[str], request: str) -> str:
    """The question put to the model: the numbered sentences, the request, and what to answer."""
    lines = "\n".join(f"[{i}] {s}" for i, s in enumerate(numbered, 1))
    ask = f"Request: {request}\n" if request else ""
    return (f"Context, one sentence per line:\n{lines}\n{ask}"
            "Which of the numbered sentences matter most for the request? Answer with their numbers only, "
            "separated by commas.")


def parse_answer(answer: str, numbered: Sequence[str]) -> list[int]:
    """The 0-based indices of the sentences ``answer`` names, in order, each once (numbers out of range dropped)."""
    if not isinstance(answer, str):
        raise AttnlensError(f"the model's answer must be a string, got {type(answer).__name__}")
    n = len(numbered)
    found: list[int] = []
    lowered = answer.lower()
    for token in re.findall(r"\d+|[a-z]+", lowered):
        value = int(token) if token.isdigit() else _WORDS.get(token) or _ORDINALS.get(token)
        if value is not None and 1 <= value <= n and value - 1 not in found:
            found.append(value - 1)
    for i, s in enumerate(numbered):  # a sentence quoted word for word
        if len(s) > 12 and s.lower().strip(" .") in lowered and i not in found:
            found.append(i)
    return found


@dataclass(frozen=True)
class Focus(Showable):
    """What the model named: the sentences (text), the context with them tagged, and its answer.

    ``show()`` / ``view()``: the named sentences and the model's own answer as a table; ``to_json()``."""

    text: str
    sentences: tuple[str, ...]
    answer: str

    def view(self, **options: Any) -> Any:
        from ..viz import table_view

        rows = [{"": f"sentence {i + 1}", "text": sentence} for i, sentence in enumerate(self.sentences)]
        rows.append({"": "the model's answer", "text": self.answer})
        return table_view(rows, "Automatic focus", caption=f"{len(self.sentences)} sentence(s) named, tagged in "
                                                           "the context that is then steered")

    def as_dict(self) -> dict[str, Any]:
        return {"text": self.text, "sentences": list(self.sentences), "answer": self.answer}


def _default_ask(model: Any, max_new_tokens: int) -> Callable[[str], str]:
    def ask(text: str) -> str:
        from ..prompts.prompt import tokenize_prompt
        from ..prompts.tags import escape_tags
        from ..runtime.generate import generate_batch

        chat = getattr(model.tokenizer, "chat_template", None) is not None
        item: Any = [{"role": "user", "content": escape_tags(text)}] if chat else escape_tags(text)
        prompt = tokenize_prompt(model.tokenizer, item, chat=chat)
        tokens = generate_batch(model, [list(prompt.input_ids)], max_new_tokens=max_new_tokens)[0]
        return model.tokenizer.decode(tokens, skip_special_tokens=True)

    return ask


def auto_focus(
    model: Any,
    context: str,
    request: str = "",
    *,
    ask: Callable[[str], str] | None = None,
    fallback: str = "error",
    tags: tuple[str, str] = ("<!->", "<-!>"),
    max_new_tokens: int = 24,
) -> Focus:
    """Ask ``model`` which sentences of ``context`` matter for ``request``; tag them.

    ``ask``: how the question is answered (default: ``model`` generates greedily,
    through its chat template when it has one); ``fallback`` when the answer
    names no sentence: ``"error"`` (:class:`FocusError`), ``"all"`` or ``"none"``.
    Returns a :class:`Focus` whose ``text`` is ``context`` with the named
    sentences wrapped in ``tags``.
    """
    from ..prompts.tags import parse_tags

    if not isinstance(context, str) or not context.strip():
        raise AttnlensError("automatic focus needs a non-empty context string")
    if fallback not in FALLBACKS:
        raise AttnlensError(f"fallback must be one of {', '.join(FALLBACKS)}, got {fallback!r}")
    if parse_tags(context).spans:
        raise AttnlensError("the context already has tags; automatic focus chooses the spans itself")
    ranges = sentences(context)
    numbered = [context[s:e] for s, e in ranges]
    answer = (ask or _default_ask(model, max_new_tokens))(question(numbered, request))
    chosen = parse_answer(answer, numbered)
    if not chosen:
        if fallback == "error":
            raise FocusError(f"the model's answer names no sentence of the context (1..{len(numbered)}): {answer!r}")
        chosen = list(range(len(numbered))) if fallback == "all" else []
        logger.info("automatic focus: the answer %r names no sentence; fallback %s", answer, fallback)
    out, last = [], 0
    for i in sorted(chosen):
        s, e = ranges[i]
        out += [context[last:s], tags[0], " ", context[s:e], " ", tags[1]]
        last = e
    out.append(context[last:])
    return Focus("".join(out), tuple(numbered[i] for i in sorted(chosen)), answer)


def focus_input(model: Any, item: Any, *, ask: Callable[[str], str] | None = None, fallback: str = "error") -> Any:
    """A pipeline input (a string, or a chat whose last user message is the context) with its focus tagged."""
    if isinstance(item, str):
        return auto_focus(model, item, ask=ask, fallback=fallback).text
    messages = [dict(m) for m in item]
    users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
    if not users:
        raise AttnlensError("automatic focus needs a user message in the chat")
    last = users[-1]
    messages[last]["content"] = auto_focus(model, messages[last]["content"], ask=ask, fallback=fallback).text
    return messages


def check_focus(focus: Any) -> str | None:
    """``focus`` as given to the pipeline or the command line: None or ``"auto"``."""
    if focus not in (None, "auto"):
        raise AttnlensError(f"focus must be 'auto' (the model names the sentences that matter) or None, got {focus!r}")
    return focus
