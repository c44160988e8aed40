"""Helpers every command shares: argument types, the model loader, chat messages, side-by-side text."""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import textwrap
from collections.abc import Callable
from typing import Any

from ..core.errors import CLIError

def load_model_for(args: argparse.Namespace) -> Any:
    """The model ``--model`` names (default: the embedded one), through ``attnlens.cli._load``."""
    from . import _load  # looked up on the package at call time, so it can be replaced

    return _load(args)


def side_by_side(left_title: str, left: str, right_title: str, right: str) -> str:
    width = max(40, min(shutil.get_terminal_size((120, 20)).columns, 160))
    col = (width - 3) // 2

    def wrap(text: str) -> list[str]:
        lines: list[str] = []
        for para in text.splitlines() or [""]:
            lines.extend(textwrap.wrap(para, col) or [""])
        return lines

    a, b = wrap(left), wrap(right)
    rows = [f"{left_title:<{col}} | {right_title}", f"{'-' * col}-+-{'-' * col}"]
    for i in range(max(len(a), len(b))):
        x = a[i] if i < len(a) else ""
        y = b[i] if i < len(b) else ""
        rows.append(f"{x:<{col}} | {y}")
    return "\n".join(rows)


#: the one rule for plain strings, shared with the pipeline and the experiments
CHAT_RULE = (
    "by default a plain string goes through the model's chat template as a user message when the tokenizer "
    "has one (an instruct model), as written otherwise"
)


def add_chat_flags(parser: Any, what: str = "the prompt") -> None:
    """``--raw`` (send ``what`` as written) and ``--chat`` (require the chat template); neither: the one rule."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--raw", action="store_true",
                       help=f"send {what} as written, without the chat template ({CHAT_RULE})")
    group.add_argument("--chat", action="store_true",
                       help=f"send {what} through the chat template, and fail if the model has none")


def chat_for(args: argparse.Namespace, tokenizer: Any) -> bool:
    """Whether string prompts go through the chat template under ``--raw`` / ``--chat`` / the one rule."""
    from ..prompts.prompt import resolve_chat

    system = getattr(args, "system", None)
    if getattr(args, "raw", False) and system:
        raise CLIError("--system needs the chat template; drop --raw")
    chat = True if (getattr(args, "chat", False) or system) else None
    return resolve_chat(tokenizer, chat, bool(getattr(args, "raw", False)))


def prompt_from(args: argparse.Namespace, tokenizer: Any = None) -> Any:
    """The prompt under the one rule: a chat (user message, ``--system`` first) or, with ``--raw`` or a
    tokenizer without a chat template, the string as written."""
    if chat_for(args, tokenizer):
        return messages(args.prompt, getattr(args, "system", None))
    return args.prompt


def check_tags(text: str, flag: str) -> Any:
    """Parse ``text``'s tags before the model loads (an unbalanced tag fails at once, naming ``flag``)."""
    from ..core.errors import TagError
    from ..prompts.tags import parse_tags

    try:
        return parse_tags(text)
    except TagError as exc:
        raise CLIError(f"{flag}: {exc}") from None


def warn(message: str) -> None:
    """A warning line on stderr (the command line prints; the library logs)."""
    print(f"attnlens: warning: {' '.join(message.split())}", file=sys.stderr)


def messages(prompt: str, system: str | None) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": prompt})
    return messages


def int_at_least(minimum: int, what: str) -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a {what} integer, got {text!r}")
        return value

    return parse


positive_int = int_at_least(1, "positive")
non_negative_int = int_at_least(0, "non-negative")


def number(text: str) -> float:
    """An argparse type: a finite number."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_number(text: str) -> float:
    """An argparse type: a finite number > 0 (seconds, scales)."""
    value = number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value



def writable(path: str, flag: str) -> str:
    """Check before a long run that ``path`` can be written (its folder exists, it is not a folder)."""
    from pathlib import Path

    target = Path(path).expanduser()
    if target.is_dir():
        raise CLIError(f"{flag} {path!r} is a directory, not a file")
    parent = target.parent
    if not parent.is_dir():
        raise CLIError(f"{flag} {path!r}: the folder {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise CLIError(f"{flag} {path!r}: permission denied")
    return path


def read_texts(path: str, flag: str = "--texts") -> list[str]:
    """One text per line (blank lines skipped); ``-`` reads standard input."""
    try:
        if path == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as handle:
                data = handle.read()
        lines = data.decode("utf-8").splitlines()
    except OSError as exc:
        raise CLIError(f"{flag} {path!r}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise CLIError(f"{flag} {path!r} is not UTF-8 text (invalid byte at offset {exc.start})") from None
    texts = [line for line in lines if line.strip()]
    if not texts:
        raise CLIError(f"{flag} {path!r} has no text (one text per line)")
    return texts


def add_later(parser: Any, add: Any) -> None:
    """Call ``add(parser)`` when ``parser`` first parses (or shows its help), not when it is built.

    Options read from the method registries import the libraries that run models;
    deferring them keeps ``attnlens --help`` and the other commands fast.
    """
    original = parser.parse_known_args
    pending = [add]

    def parse_known_args(args: Any = None, namespace: Any = None) -> Any:
        while pending:
            pending.pop()(parser)
        return original(args, namespace)

    parser.parse_known_args = parse_known_args


class LazyChoices:
    """``choices`` computed when argparse checks or lists them (give the argument a ``metavar``)."""

    def __init__(self, compute: Any) -> None:
        self.compute = compute

    def __contains__(self, value: Any) -> bool:
        return value in self.compute()

    def __iter__(self) -> Any:
        return iter(self.compute())
