"""``attnlens attribute`` (token scores by one method) and ``attnlens faithfulness`` (methods scored by erasing)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..core.errors import CLIError
from ._common import LazyChoices, int_at_least, load_model_for, positive_int, writable

DEFAULT_METHODS = "influence,rollout,attention,attention_norm,grad_x_input,integrated_gradients,occlusion"


def _method_choices() -> tuple[str, ...]:
    from .. import attribution

    return attribution.methods()


def add_attribute(sub: Any) -> None:
    p = sub.add_parser(
        "attribute", help="score every prompt token toward the next token or a continuation (one method)",
        description="Score every token of a prompt toward a target: the log-probability of the model's next token, "
        "or of --target (a continuation).",
    )
    p.add_argument("prompt", help="the prompt (as written; special tokens are added by the tokenizer)")
    p.add_argument("--method", choices=LazyChoices(_method_choices), metavar="METHOD", default="influence",
                   help="a registered attribution method (influence, rollout, attention, attention_norm, "
                   "grad_x_input, integrated_gradients, occlusion, ...)")
    p.add_argument("--target", default=None, help="a continuation to score toward (default: the next token)")
    p.add_argument("--json", action="store_true", help="print the record as JSON")
    p.add_argument("--html", default=None, metavar="FILE", help="write the token view as an HTML page")
    p.add_argument("--model", default=None, help="a model name or path (default: the embedded SmolLM2-135M-Instruct)")
    p.set_defaults(run=_run_attribute)


def _run_attribute(args: argparse.Namespace) -> None:
    from ..attribution import attribute

    if args.html:
        writable(args.html, "--html")
    model = load_model_for(args)
    record = attribute(model, args.prompt, method=args.method, target=args.target)
    if args.html:
        record.save(args.html)
    print(record.to_json() if args.json else record.text())


def add_faithfulness(sub: Any) -> None:
    p = sub.add_parser(
        "faithfulness", help="score attribution methods by erasing tokens in their order (deletion, insertion, AOPC)",
        description="For each method, erase the prompt's tokens in the order the method ranks them and measure the "
        "target's log-probability: deletion and insertion areas, ERASER comprehensiveness and sufficiency (AOPC over "
        "1, 5, 10, 20 and 50%% of tokens), each beside the mean of random orders. Several prompts give means with "
        "95%% bootstrap intervals.",
    )
    p.add_argument("prompt", nargs="?", default=None, help="one prompt (or --input)")
    p.add_argument("--input", default=None, metavar="FILE", help="a text file, one prompt a line")
    p.add_argument("--methods", default=DEFAULT_METHODS, help=f"comma-separated methods (default: {DEFAULT_METHODS})")
    p.add_argument("--target", default=None, help="a continuation to score toward (default: each prompt's next token)")
    p.add_argument("--erase", choices=["replace", "drop"], default="replace",
                   help="replace an erased token by a neutral one (default) or drop it")
    p.add_argument("--seeds", type=positive_int, default=5, help="random orders in the baseline (default 5)")
    p.add_argument("--points", type=int_at_least(2, "at least 2"), default=11, help="points of the deletion and insertion curves")
    p.add_argument("--limit", type=positive_int, default=None, help="use the first N prompts of --input")
    p.add_argument("--json", action="store_true",
                   help="print JSON: one entry per method (and random) with its metrics and intervals")
    p.add_argument("--model", default=None, help="a model name or path (default: the embedded SmolLM2-135M-Instruct)")
    p.set_defaults(run=_run_faithfulness)


def _prompts(args: argparse.Namespace) -> list[str]:
    if (args.prompt is None) == (args.input is None):
        raise CLIError("give one prompt or --input FILE (not both)")
    if args.prompt is not None:
        return [args.prompt]
    with open(args.input, encoding="utf-8") as fh:
        prompts = [line.rstrip("\n") for line in fh if line.strip()]
    if args.limit:
        prompts = prompts[:args.limit]
    if not prompts:
        raise CLIError(f"--input {args.input!r} has no prompts")
    return prompts


def _run_faithfulness(args: argparse.Namespace) -> None:
    from .. import attribution
    from ..attribution.faithfulness import compare_faithfulness

    prompts = _prompts(args)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    known = attribution.aliases()
    unknown = [m for m in methods if m not in known]
    if unknown or not methods:
        raise CLIError(f"--methods: unknown {', '.join(unknown) or '(none given)'}; "
                       f"choose from {', '.join(attribution.methods())}")
    model = load_model_for(args)
    result = compare_faithfulness(model, prompts, methods=methods, target=args.target, erase=args.erase,
                                  seeds=args.seeds, points=args.points)
    if args.json:
        print(json.dumps({"erase": result.erase, "seeds": result.seeds, "prompts": len(prompts),
                          "methods": result.table()}))
    else:
        print(result.text())
