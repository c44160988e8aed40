"""Prompts: tags, tokenization, character-to-token spans, substring location and the one :class:`Prompt` type."""

from .prompt import Prompt, TokenSpan, is_chat, locate_substrings, tokenize_prompt
from .spans import char_span_to_tokens, encode_chat, encode_text, find_substring, render_chat
from .tags import ParsedText, TagSpan, escape_tags, has_tags, parse_tags

__all__ = [
    "ParsedText", "Prompt", "TagSpan", "TokenSpan", "char_span_to_tokens", "encode_chat", "encode_text",
    "escape_tags", "find_substring", "has_tags", "is_chat", "locate_substrings", "parse_tags", "render_chat",
    "tokenize_prompt",
]
