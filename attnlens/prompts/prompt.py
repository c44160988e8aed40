"""The one prompt type: the tokens a model sees and the spans of them to steer or measure.

:func:`tokenize_prompt` reads GUIDE and influence tags (``<!-> ... <-!>``,
``<?-> ... <-?>``) from a string or a chat; :func:`locate_substrings` finds
given substrings (PASTA's emphasis). Both tokenize once and map character
spans to token spans (:mod:`attnlens.prompts.spans`). No steering strength is
fixed here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Union

from ..core.errors import AttnlensError, SpanError, TagError
from ..core.validate import check_text, is_int
from .spans import Encoded, check_role, encode_chat, encode_text, find_substring, pick_occurrence
from .tags import TagSpan, parse_tags
from .template import default_system_tokens

logger = logging.getLogger(__name__)

Chat = Sequence[Mapping[str, str]]
PromptInput = Union[str, Chat]
#: a substring to emphasise, optionally with the occurrence to use (None: every occurrence)
SubstringLike = Union[str, tuple[str, Union[int, None]]]


def _token_text(encoded: Encoded, start: int, end: int) -> str:
    return encoded.text[encoded.offsets[start][0] : encoded.offsets[end - 1][1]] if end > start else ""


@dataclass(frozen=True)
class TokenSpan:
    """A span of the prompt's tokens ``[start, end)``: a tagged span or a located substring."""

    start: int
    end: int
    kind: str  # "guide", "influence" (tags) or "emphasis" (a located substring)
    level: int  # the tag level (1-3 for GUIDE; 0 otherwise)
    text: str  # the tagged or located text
    message: int | None = None  # index of the chat message it came from
    #: the GUIDE bias, once a strength is chosen (:func:`attnlens.steering.guide.with_strength`)
    delta: float | None = None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["delta"] = self.delta if self.delta is not None else 0.0
        return out

    def __iter__(self) -> Iterator[int]:
        """``start, end = span``: a span unpacks as its half-open token range."""
        return iter((self.start, self.end))


@dataclass(frozen=True)
class Prompt:
    """A prepared input: the tokens the model sees and the spans in them.

    The one prompt type: tags (:func:`tokenize_prompt`) and substrings
    (:func:`locate_substrings`) both give one; GUIDE, PASTA and Influence read
    their spans from it.
    """

    input_ids: list[int]
    text: str
    spans: tuple[TokenSpan, ...]
    #: when the spans were located by :func:`locate_substrings`: the substring each span was located
    #: from, one per span (a substring found at several places labels each of them)
    substrings: tuple[str, ...] = ()
    #: how many leading tokens are a system message the chat template added unasked (views leave them out)
    system_tokens: int = 0
    #: how the model sees it: ``"chat"`` (through the tokenizer's chat template) or ``"raw"`` (as written)
    format: str = "raw"

    def __len__(self) -> int:
        return len(self.input_ids)

    def guide_spans(self) -> list[TokenSpan]:
        return [s for s in self.spans if s.kind == "guide"]

    def influence_spans(self) -> list[TokenSpan]:
        return [s for s in self.spans if s.kind == "influence"]

    def emphasis_spans(self) -> list[TokenSpan]:
        return [s for s in self.spans if s.kind == "emphasis"]


def has_chat_template(tokenizer: Any) -> bool:
    """Whether ``tokenizer`` has a chat template (an instruct model's tokenizer usually has)."""
    return getattr(tokenizer, "chat_template", None) is not None


#: the one rule for plain strings, said the same way everywhere
CHAT_RULE = (
    "a plain string goes through the model's chat template as a user message when the tokenizer has one, "
    "and as written (raw text) when it has none or when raw is asked for"
)


def resolve_chat(tokenizer: Any, chat: bool | None = None, raw: bool = False) -> bool:
    """The one rule for plain strings: whether a string prompt goes through the chat template.

    ``raw=True`` (``--raw`` on the command line) sends it as written; ``chat=True``
    asks for the template (an error without one), ``chat=False`` is ``raw=True``;
    otherwise (``chat=None``, the default everywhere) the template is used when the
    tokenizer has one. A chat (a list of messages) always goes through the template.
    """
    if chat is not None and not isinstance(chat, bool):
        raise AttnlensError(f"chat must be True, False or None, got {chat!r}")
    if not isinstance(raw, bool):
        raise AttnlensError(f"raw must be True or False, got {raw!r}")
    if raw and chat:
        raise AttnlensError("raw=True and chat=True disagree: give one (raw sends the string as written)")
    if raw or chat is False:
        return False
    if chat:
        return True
    return has_chat_template(tokenizer)


def prompt_format(chat: bool) -> str:
    """``"chat"`` or ``"raw"``: the name records and the command line give the rule's outcome."""
    return "chat" if chat else "raw"


def is_chat(item: Any) -> bool:
    return isinstance(item, Sequence) and not isinstance(item, str) and len(item) > 0 and all(
        isinstance(m, Mapping) for m in item
    )


def _locate(encoded: Encoded, base: int, parsed_spans: Sequence[TagSpan], text: str,
            message: int | None) -> list[TokenSpan]:
    out = []
    for span in parsed_spans:
        start, end = encoded.token_span(base + span.start, base + span.end)
        out.append(TokenSpan(start, end, span.kind, span.level, text[span.start : span.end], message))
    _warn_shared_tokens(encoded, parsed_spans, out)
    return out


def _tag(span: TagSpan) -> str:
    return "<?->" if span.kind == "influence" else f"<{'!' * span.level}->"


def _warn_shared_tokens(encoded: Encoded, tags: Sequence[TagSpan], spans: Sequence[TokenSpan]) -> None:
    """A WARNING naming both tags when two tags whose texts do not overlap fall on one token
    (``Pa<!->r<-!><!!->is<-!!>``: both biases land on ``Paris``)."""
    order = sorted(range(len(spans)), key=lambda i: (spans[i].start, spans[i].end))
    reach = -1  # the previous span (in token order) that reaches furthest
    for i in order:
        if reach >= 0 and spans[i].start < spans[reach].end:
            a, b = tags[reach], tags[i]
            if a.end <= b.start or b.end <= a.start:  # their characters are apart: only the tokens are shared
                shared = _token_text(encoded, spans[i].start, min(spans[i].end, spans[reach].end))
                logger.warning(
                    "the %s tag on %r and the %s tag on %r fall on the same token(s) %r: both are applied "
                    "there; put tags at token boundaries (e.g. around whole words)",
                    _tag(a), spans[reach].text, _tag(b), spans[i].text, shared)
        if reach < 0 or spans[i].end > spans[reach].end:
            reach = i


def tokenize_prompt(
    tokenizer: Any,
    item: PromptInput,
    *,
    chat: bool | None = False,
    add_generation_prompt: bool = True,
    raw: bool = False,
    whitespace: str = "collapse",
) -> Prompt:
    """Parse the tags of a string or chat, tokenize it and locate the tagged spans in its tokens.

    A string is tokenized as written unless ``chat=True``; ``chat=None`` applies
    the one rule (:func:`resolve_chat`: the chat template when the tokenizer has
    one, unless ``raw=True``). ``whitespace``: how the padding inside tags is read
    (:mod:`attnlens.prompts.tags`). The result's ``format`` says which was used.

    The spans carry their tag level, not a bias: a steering strength is chosen
    later (:func:`attnlens.steering.guide.with_strength`, or the plan builder's
    ``delta_mid``).
    """
    if isinstance(item, str):
        if resolve_chat(tokenizer, chat, raw):
            item = [{"role": "user", "content": item}]
        else:
            parsed = parse_tags(check_text(item, "the prompt"), whitespace=whitespace)
            encoded = encode_text(tokenizer, parsed.text)
            spans = _locate(encoded, 0, parsed.spans, parsed.text, None)
            return Prompt(encoded.input_ids, encoded.text, tuple(spans), format="raw")
    if not is_chat(item):
        raise AttnlensError(
            "each input must be a string or a chat (a non-empty list of {'role', 'content'} dicts); "
            f"got {type(item).__name__}"
        )
    parsed_messages = []
    for i, message in enumerate(item):
        check_role(message.get("role"), i)
        if "content" not in message or not isinstance(message["content"], str):
            raise AttnlensError(f"message {i} has no string 'content'")
        check_text(message["content"], f"message {i} ({message['role']}) content")
        try:
            parsed_messages.append(parse_tags(message["content"], whitespace=whitespace))
        except TagError as exc:
            raise TagError(f"in message {i} ({message.get('role', '?')}): {exc.reason}", exc.position) from None
    clean = [{**dict(m), "content": p.text} for m, p in zip(item, parsed_messages)]
    encoded = encode_chat(tokenizer, clean, add_generation_prompt=add_generation_prompt)
    spans: list[TokenSpan] = []
    for i, (p, start) in enumerate(zip(parsed_messages, encoded.message_starts)):
        spans.extend(_locate(encoded, start, p.spans, p.text, i))
    return Prompt(encoded.input_ids, encoded.text, tuple(spans), format="chat",
                  system_tokens=default_system_tokens(tokenizer, clean, encoded,
                                                      add_generation_prompt=add_generation_prompt))


def _substring_items(substrings: Any, occurrence: int | None) -> list[tuple[str, int | None]]:
    if isinstance(substrings, str):
        substrings = [substrings]
    if not isinstance(substrings, Sequence) or not substrings:
        raise SpanError("PASTA needs at least one substring to emphasise")
    items = []
    for sub in substrings:
        if isinstance(sub, str):
            items.append((sub, occurrence))
        elif isinstance(sub, (list, tuple)) and len(sub) == 2 and isinstance(sub[0], str) and (
            sub[1] is None or is_int(sub[1])
        ):
            items.append((sub[0], sub[1]))
        else:
            raise SpanError(f"a substring must be a string or (string, occurrence), got {sub!r}")
    return items


def _char_spans(
    pieces: Sequence[tuple[int, str]], substring: str, occurrence: int | None
) -> list[tuple[int, int]]:
    """Character spans of ``substring`` inside ``pieces`` (start, content) of a text, in order."""
    found: list[tuple[int, int]] = []
    for start, content in pieces:
        try:
            found.extend((start + a, start + b) for a, b in find_substring(content, substring, None))
        except SpanError:
            continue
    where = "the prompt" if len(pieces) == 1 else "any message of the chat"
    return pick_occurrence(found, substring, occurrence, where)


def locate_substrings(
    tokenizer: Any,
    prompt: str | Sequence[Mapping[str, str]],
    substrings: SubstringLike | Sequence[SubstringLike],
    *,
    occurrence: int | None = 0,
    chat: bool | None = False,
    add_generation_prompt: bool = True,
    raw: bool = False,
) -> Prompt:
    """Tokenize a prompt (text, or chat messages) and map the substrings to token spans.

    ``chat`` and ``raw`` as in :func:`tokenize_prompt` (``chat=None``: the one rule).

    In a chat, substrings are searched in the messages' contents (never in the
    template's own text), in message order; ``occurrence`` (0-based, negative
    from the end, ``None`` for all) counts across messages. A substring may be
    given as ``(substring, occurrence)`` to override ``occurrence`` for it.
    """
    items = _substring_items(substrings, occurrence)
    if isinstance(prompt, str) and resolve_chat(tokenizer, chat, raw):
        prompt = [{"role": "user", "content": prompt}]
    if isinstance(prompt, str):
        encoded: Encoded = encode_text(tokenizer, prompt)
        pieces = [(0, prompt)]
    elif is_chat(prompt):
        encoded = encode_chat(tokenizer, prompt, add_generation_prompt=add_generation_prompt)
        pieces = [(start, m["content"]) for start, m in zip(encoded.message_starts, prompt)]
    else:
        raise AttnlensError(
            "a prompt must be a string or a chat (a non-empty list of {'role', 'content'} dicts); "
            f"got {type(prompt).__name__}"
        )
    spans: list[tuple[int, int]] = []
    labels: list[str] = []  # the substring each span was located from (one substring may give several spans)
    for sub, occ in items:
        for c0, c1 in _char_spans(pieces, sub, occ):
            spans.append(encoded.token_span(c0, c1))
            labels.append(sub)
    subs = tuple(labels)
    located = tuple(TokenSpan(s, e, "emphasis", 0, _token_text(encoded, s, e)) for s, e in spans)
    return Prompt(list(encoded.input_ids), encoded.text, located, subs,
                  format="raw" if isinstance(prompt, str) else "chat")


# ----------------------------------------------------------------------------- the steerer
