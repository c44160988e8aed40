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
import sys
from collections.abc import Callable
from typing import Any

from ..core.errors import AttnlensError
from . import batch, experiment, generate, heads, influence, pasta


def _load(args: argparse.Namespace) -> Any:
    """The model ``--model`` names (default: the embedded one). Commands load through this."""
    from ..runtime.distributed import sweep_device
    from ..runtime.models import load_model

    # under torchrun each worker takes the GPU of its LOCAL_RANK (the CPU without CUDA)
    return load_model(getattr(args, "model", None), device=sweep_device())


COMMANDS: list[Callable[[Any], None]] = [
    generate.add_generate, generate.add_demo, heads.add_heads, experiment.add_experiment,
    influence.add_influence, pasta.add_pasta, batch.add_batch,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attnlens", description="Steer and explain where a language model's attention goes."
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if args.verbose == 0:
        try:
            import transformers

            transformers.logging.set_verbosity_error()
            transformers.logging.disable_progress_bar()
        except ImportError:  # pragma: no cover
            pass
    try:
        return int(args.run(args) or 0)
    except AttnlensError as exc:
        print(f"attnlens: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("attnlens: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
