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


DTYPES = ("float32", "bfloat16", "float16")


def add_dtype_flag(parser: Any) -> None:
    """``--dtype``: the dtype the model's weights are loaded in (read by :func:`load_model_for`)."""
    parser.add_argument("--dtype", choices=DTYPES, default="float32",
                        help="the weights' dtype (default: float32; bfloat16 is faster on CPUs with AMX or AVX-512 "
                             "BF16 and on GPUs, and changes the numbers slightly: greedy outputs can differ)")


STEERING_HELP = ('the steering, as the server and the pipeline take it: JSON {"METHOD": {"PARAM": VALUE}} '
                 '(several methods add up), or @FILE of that JSON; e.g. \'{"instaboost": {"alpha": 8}}\'')


def add_steering_flag(parser: Any, help: str = STEERING_HELP) -> None:
    """``--steering JSON``: a steering description (:mod:`attnlens.steering.description`)."""
    parser.add_argument("--steering", default=None, metavar="JSON", help=help)


def steering_from(args: argparse.Namespace) -> dict[str, dict[str, Any]] | None:
    """``--steering`` as ``{method: settings}`` checked by each method (None when not given)."""
    from ..steering import description

    text = getattr(args, "steering", None)
    if text is None:
        return None
    try:
        return description.parse(text, "--steering")
    except description.DescriptionError as exc:
        raise CLIError(str(exc)) from None


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


# ----------------------------------------------------------------------------- help, suggestions, shape checks


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every option's default in ``--help`` (unless its help already says it); examples kept as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        # flags (help, version, switches) take no value: their default says nothing
        if "default" in help_text or action.default in (None, False, argparse.SUPPRESS) or action.nargs == 0:
            return help_text
        return super()._get_help_string(action)


def _suggest(word: str, known: Any) -> str:
    import difflib

    close = difflib.get_close_matches(word, [k for k in known if isinstance(k, str)], n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser that suggests the nearest command or option for a mistyped one, and reports an
    unknown option with the usage of the command it was given to. ``subcommands`` is its subcommands'
    action (``.choices``: name -> parser), or None."""

    subcommands: Any = None

    def add_subparsers(self, **kwargs: Any) -> Any:
        self.subcommands = super().add_subparsers(**kwargs)
        return self.subcommands

    def error(self, message: str) -> Any:  # type: ignore[override]
        import re

        match = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if match:
            choices = re.findall(r"'([^']*)'", match.group(2)) or [c.strip() for c in match.group(2).split(",")]
            message += _suggest(match.group(1), choices)
        return super().error(message)

    def parse_args(self, args: Any = None, namespace: Any = None) -> Any:  # type: ignore[override]
        import re

        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            target = self._chosen(parsed)
            options = re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", target.format_help())
            said = [f"{e}{_suggest(e.split('=', 1)[0], options)}" if e.startswith("-") else e for e in extras]
            target.error(f"unrecognized arguments: {' '.join(said)}")
        return parsed

    def _chosen(self, parsed: argparse.Namespace) -> "argparse.ArgumentParser":
        """The deepest (sub)command ``parsed`` ran."""
        parser: argparse.ArgumentParser = self
        while True:
            sub = getattr(parser, "subcommands", None)
            name = getattr(parsed, sub.dest, None) if sub is not None and sub.dest != argparse.SUPPRESS else None
            if name not in getattr(sub, "choices", {}):
                return parser
            parser = sub.choices[name]


def known_shape(model: str | None) -> tuple[int, int] | None:
    """``(n_layers, n_heads)`` of the model ``--model`` names, read from its ``config.json`` without loading
    weights (the embedded model's from attnlens' cache, a directory's, a hub name's cached config); None
    when no config is at hand (the library then checks after loading)."""
    import json
    from pathlib import Path

    config_path: Any = None
    try:
        if model is None:
            from ..runtime.models import _CACHE_SUBDIR, cache_dir

            config_path = cache_dir() / _CACHE_SUBDIR / "config.json"
        elif Path(model).expanduser().is_dir():
            config_path = Path(model).expanduser() / "config.json"
        elif not Path(model).expanduser().exists():
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(model, "config.json")
            config_path = Path(found) if isinstance(found, str) else None
        if config_path is None or not Path(config_path).is_file():
            return None
        config = json.loads(Path(config_path).read_text(encoding="utf-8"))
        config = config.get("text_config", config) if isinstance(config.get("text_config"), dict) else config
        layers = next(config[k] for k in ("num_hidden_layers", "n_layer", "num_layers") if k in config)
        heads = next(config[k] for k in ("num_attention_heads", "n_head", "num_heads") if k in config)
    except (StopIteration, OSError, ValueError, TypeError, AttributeError, ImportError):
        return None
    if not (isinstance(layers, int) and isinstance(heads, int) and layers > 0 and heads > 0):
        return None
    return layers, heads


def check_shape(args: argparse.Namespace, *, layer: str | None = None, head: str | None = None,
                layers: str | None = None, heads: str | None = None) -> None:
    """Check ``--layer``/``--head``/``--layers``/``--heads`` (the attributes named) against the model's shape
    from its config, before the model loads; nothing is checked when the config is not at hand."""
    shape = known_shape(getattr(args, "model", None))
    if shape is None:
        return
    n_layers, n_heads = shape
    which = "the embedded model" if getattr(args, "model", None) is None else repr(args.model)
    if layer is not None:
        value = getattr(args, layer)
        if not -n_layers <= value < n_layers:
            raise CLIError(f"--layer {value} is out of range: {which} has {n_layers} layers "
                           f"(0..{n_layers - 1}, or negative from the end)")
    if head is not None:
        value = getattr(args, head)
        if not 0 <= value < n_heads:
            raise CLIError(f"--head {value} is out of range: {which} has {n_heads} heads per layer (0..{n_heads - 1})")
    if layers is not None:
        from ..core.errors import AttnlensError
        from ..core.validate import resolve_layers

        spec = getattr(args, layers)
        try:
            resolve_layers(" ".join(spec) if isinstance(spec, list) else spec, n_layers)
        except AttnlensError as exc:
            raise CLIError(f"--layers: {exc}".replace("the model", which)) from None
    if heads is not None:
        spec = getattr(args, heads)
        if spec != "all":
            for part in str(spec).split(","):
                if part.strip().lstrip("-").isdigit() and not 0 <= int(part) < n_heads:
                    raise CLIError(f"--heads {spec}: head {int(part)} is out of range: {which} has {n_heads} "
                                   f"heads per layer (0..{n_heads - 1})")
