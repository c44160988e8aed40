"""The ``attnlens`` command. The library logs; this package prints.

One module per command (:mod:`.generate`, :mod:`.heads`, :mod:`.experiment`,
:mod:`.influence`, :mod:`.pasta`, :mod:`.batch`); each parses its arguments, calls the library
and prints. Subcommands are registered in :data:`COMMANDS`: each entry adds its
parser and names the function that runs it. Every command turns a user error
into one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from ..core.errors import AttnlensError
from . import batch, experiment, generate, heads, influence, pasta
from . import attribute, serve
from . import tune as tune_cli
from ._common import HelpFormatter, Parser


def _load(args: argparse.Namespace) -> Any:
    """The model ``--model`` names (default: the embedded one). Commands load through this."""
    from ..runtime.distributed import sweep_device
    from ..runtime.models import load_model

    import torch

    # under torchrun each worker takes the GPU of its LOCAL_RANK (the CPU without CUDA)
    dtype = getattr(torch, getattr(args, "dtype", None) or "float32")
    return load_model(getattr(args, "model", None), device=sweep_device(), dtype=dtype)


COMMANDS: list[Callable[[Any], None]] = [
    generate.add_generate, generate.add_demo, heads.add_heads, experiment.add_experiment,
    influence.add_influence, pasta.add_pasta, batch.add_batch, tune_cli.add_tune, tune_cli.add_compare,
    attribute.add_attribute, attribute.add_faithfulness, serve.add_serve,
]


#: an example per command (its ``--help`` ends with it)
EXAMPLES: dict[str, str] = {
    "": 'attnlens generate "<!-> Answer in French. <-!> What is the capital of Italy?" --compare\n'
        "  attnlens COMMAND --help",
    "generate": 'attnlens generate "<!-> Rewrite in French: <-!> Paris is the most visited city." --compare\n'
                '  attnlens generate "Describe Paris." --raw --max-new-tokens 20',
    "demo": "attnlens demo --delta-mid 2",
    "heads": "attnlens heads rank --layer 3 --head 1 --texts texts.txt",
    "heads rank": "attnlens heads rank --layer 3 --head 1 --texts texts.txt --num 5",
    "heads describe": "attnlens heads describe --layer 3 --head 1 --texts texts.txt --openai-model gpt-4o-mini",
    "heads describe-all": "attnlens heads describe-all --layers 0,1 --texts texts.txt --openai-model gpt-4o-mini "
                          "--sweep-dir sweep/",
    "experiment": "attnlens experiment json --out runs/json --limit 10",
    "influence": 'attnlens influence "<?-> Rewrite in French <-?> Paris is the most visited city." --plot view.html',
    "pasta": "attnlens pasta profile --data demos/pasta_json_examples.jsonl --top-k 20 --out heads.json",
    "pasta profile": "attnlens pasta profile --data demos/pasta_json_examples.jsonl --top-k 20 --out heads.json",
    "batch": "attnlens batch --input prompts.jsonl --output results.jsonl --max-new-tokens 32",
    "tune": "attnlens tune json --method guide --out runs/tune --limit 20",
    "compare": "attnlens compare counterfact --methods guide instaboost spa --out runs/compare --limit 20",
    "attribute": 'attnlens attribute "The capital of France is" --method influence --html tokens.html',
    "faithfulness": 'attnlens faithfulness "The capital of France is" --methods influence,rollout',
    "serve": "attnlens serve --port 8000",
}
EXAMPLES["experiment faithfulness"] = ("attnlens experiment faithfulness --out runs/faithfulness "
                                      "--methods influence,rollout,attention --limit 10")


def _example(path: str) -> str | None:
    """A command's example: its own, else (a registered study) a small run of it."""
    if path in EXAMPLES:
        return EXAMPLES[path]
    if path.startswith("experiment "):
        study = path.split(" ", 1)[1]
        return f"attnlens experiment {study} --out runs/{study} --limit 10"
    return None


def _finish(parser: argparse.ArgumentParser, path: str = "") -> None:
    """Defaults in every ``--help`` and an example at the end of each, for the command and its subcommands."""
    parser.formatter_class = HelpFormatter
    example = _example(path)
    if example is not None and not parser.epilog:
        parser.epilog = "example:\n  " + example
    action = getattr(parser, "subcommands", None)  # Parser keeps its subcommands' action
    if action is not None:
        if not action.help:
            action.help = f"one of these (attnlens {path + ' ' if path else ''}{action.metavar} --help for its options)"
        for name, child in action.choices.items():
            _finish(child, f"{path} {name}".strip())


def build_parser() -> argparse.ArgumentParser:
    # the package above this one is imported before it, and holds the version
    version = getattr(sys.modules[__name__.rpartition(".")[0]], "__version__", "unknown")
    parser = Parser(
        prog="attnlens", description="Steer and explain where a language model's attention goes."
    )
    parser.add_argument("--version", action="version", version=f"attnlens {version}",
                        help="print attnlens' version and exit")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more (-vv for debug)")
    parser.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                        help="load a plugin first: import MODULE (or MODULE:NAME, registered in its registry), which may "
                        "register steering methods, attribution methods, studies or runtimes; repeatable. "
                        "Installed plugins (entry points of the attnlens.plugins group) load without it")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in COMMANDS:
        add(sub)
    _finish(parser)
    return parser


def _plugins(argv: list[str]) -> list[str]:
    """The modules ``--plugin`` names (read before the parser is built: they may add methods to its choices)."""
    out = []
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        if arg == "--plugin" and i + 1 < len(argv):
            out.append(argv[i + 1])
        elif arg.startswith("--plugin="):
            out.append(arg.split("=", 1)[1])
    return out


def main(argv: list[str] | None = None) -> int:
    from ..core.plugins import load_plugins

    argv = list(sys.argv[1:] if argv is None else argv)
    # before the parser: the installed plugins and those --plugin names may add methods (options, choices)
    # and studies (subcommands); logging is set first, so a plugin that fails to load is said on stderr
    ours = not logging.getLogger().handlers  # logging is the caller's when it already set it up
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        load_plugins(_plugins(argv))
    except AttnlensError as exc:
        return _fail(f"--plugin: {exc}")
    parser = build_parser()
    args = parser.parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    if ours:
        logging.getLogger().setLevel(level)
    if args.verbose == 0:
        try:
            import transformers

            transformers.logging.set_verbosity_error()
            transformers.logging.disable_progress_bar()
        except ImportError:  # pragma: no cover
            pass
    try:
        code = int(args.run(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here rather than at exit
        return code
    except AttnlensError as exc:
        return _fail(str(exc))
    except BrokenPipeError:
        # the reader went away (``attnlens ... | head``): stop writing, say so once
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):  # not a real file (captured output)
            pass
        return _fail("the output was closed before everything was written (broken pipe)")
    except OSError as exc:  # a file the user named cannot be read or written
        where = f"{exc.filename}: " if exc.filename else ""
        return _fail(f"{where}{exc.strerror or exc}")
    except UnicodeError as exc:
        return _fail(f"text that is not valid UTF-8 or cannot be encoded: {exc}")
    except KeyboardInterrupt:
        print("attnlens: interrupted", file=sys.stderr)
        return 130


def _fail(message: str) -> int:
    """One line on stderr, exit status 2."""
    message = " ".join(str(message).split())
    try:
        print(f"attnlens: error: {message}", file=sys.stderr)
    except (BrokenPipeError, OSError):  # pragma: no cover - stderr gone too
        pass
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
