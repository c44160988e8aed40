"""``python -m attnlens.lm_eval ...``: lm-evaluation-harness's command line, with attnlens' backend registered.

lm-eval 0.4.13 finds a model only in its own registry, so this entry registers
``--model attnlens`` (:mod:`attnlens.api.lm_eval_backend`) and then runs lm-eval's own
command line with the same arguments (``--model attnlens`` is added when no model is named)::

    python -m attnlens.lm_eval --model attnlens --tasks TASK \\
        --model_args 'steer={"guide": {"delta_mid": 2}}'

``--model_args`` is read here as ``key=value`` pairs (separated by commas or spaces; a
comma inside braces, brackets or quotes belongs to the value), so a steering description
can be written as it is, and is handed to lm-eval as one JSON object; a JSON object for
the whole of it is passed on unchanged. A bad argument is one line on stderr
(``attnlens: error: ...``) and exit status 2.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from .core.errors import AttnlensError

_MODEL_ARGS = ("--model_args", "-a")
_MODEL = ("--model", "-M")
_NOT_RUN = ("ls", "validate", "-h", "--help")


def split_pairs(text: str) -> list[str]:
    """``text`` split at the commas outside braces, brackets and quotes."""
    parts: list[str] = []
    buf: list[str] = []
    depth = 0
    quote: str | None = None
    for char in text:
        if quote is not None:
            if char == quote:
                quote = None
        elif char in "\"'":
            quote = char
        elif char in "[({":
            depth += 1
        elif char in "])}":
            depth = max(depth - 1, 0)
        elif char == "," and depth == 0:
            parts.append("".join(buf))
            buf = []
            continue
        buf.append(char)
    parts.append("".join(buf))
    return [p for p in (p.strip() for p in parts) if p]


def read_model_args(values: list[str]) -> dict[str, Any]:
    """``--model_args`` values as a dict: one JSON object, or ``key=value`` pairs whose values stay text
    (the backend reads each: ``steer`` as a steering description, ``emphasize`` as a list or a string)."""
    if len(values) == 1 and values[0].lstrip().startswith("{"):
        try:
            whole = json.loads(values[0])
        except json.JSONDecodeError:
            whole = None
        if isinstance(whole, dict):
            return whole
    out: dict[str, Any] = {}
    for value in values:
        for pair in split_pairs(value):
            key, eq, rest = pair.partition("=")
            key = key.strip()
            if not eq or not key:
                raise AttnlensError(f"--model_args: expected key=value, got {pair!r} (e.g. "
                                    "steer='{\"guide\": {\"delta_mid\": 2}}')")
            if key in out:
                raise AttnlensError(f"--model_args: {key} is given twice")
            rest = rest.strip()
            if len(rest) >= 2 and rest[0] == rest[-1] and rest[0] in "\"'":
                rest = rest[1:-1]
            out[key] = rest
    return out


def lm_eval_argv(argv: list[str]) -> list[str]:
    """lm-eval's arguments: ``--model_args`` as one JSON object, and ``--model attnlens`` unless a model is named."""
    out: list[str] = []
    i = 0
    given: list[str] | None = None
    while i < len(argv):
        arg = argv[i]
        name, eq, inline = arg.partition("=")
        if name in _MODEL_ARGS and (eq or arg in _MODEL_ARGS):
            values = [inline] if eq else []
            i += 1
            while not eq and i < len(argv) and not argv[i].startswith("-"):
                values.append(argv[i])
                i += 1
            if not values:
                raise AttnlensError("--model_args needs key=value pairs")
            given = (given or []) + values
            continue
        out.append(arg)
        i += 1
    if given is not None:
        out += ["--model_args", json.dumps(read_model_args(given))]
    named = any(a in _MODEL or a.startswith(("--model=", "-M=")) for a in out)
    if out and out[0] not in _NOT_RUN and not named:
        out += ["--model", "attnlens"]
    return out


def main(argv: list[str] | None = None) -> int:
    """Register the backend, then run lm-eval's command line; an attnlens error is one line and exit status 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        from .api.lm_eval_backend import register

        register()
        args = lm_eval_argv(args)
        from lm_eval.__main__ import cli_evaluate

        sys.argv = ["lm-eval", *args]
        cli_evaluate()
    except AttnlensError as exc:
        print(f"attnlens: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
