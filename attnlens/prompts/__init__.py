"""Prompts: tags, tokenization, character-to-token spans, substring location and the one :class:`Prompt` type."""

from .prompt import (CHAT_RULE, Prompt, TokenSpan, has_chat_template, is_chat, locate_substrings, prompt_format,
                     resolve_chat, tokenize_prompt)
from .spans import char_span_to_tokens, encode_chat, encode_text, find_substring, render_chat
from .tags import ParsedText, TagSpan, escape_tags, has_tags, parse_tags

__all__ = [
    "CHAT_RULE", "ParsedText", "Prompt", "has_chat_template", "prompt_format", "resolve_chat", "TagSpan", "TokenSpan", "char_span_to_tokens", "encode_chat", "encode_text",
    "escape_tags", "find_substring", "has_tags", "is_chat", "locate_substrings", "parse_tags", "render_chat",
    "tokenize_prompt",
]
