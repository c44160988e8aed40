"""``attnlens generate`` and ``attnlens demo``: GUIDE tags (and PASTA heads) through the shared chain."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..core.errors import CLIError
from ._common import add_chat_flags, load_model_for, number, prompt_from, positive_int, side_by_side

DEMO_PROMPT = "<!!-> Rewrite in French: <-!!> Paris is the most visited city in the world."

def add_generate(sub: Any) -> None:
    p = sub.add_parser("generate", help="generate with GUIDE tags (and PASTA heads)")
    p.add_argument("prompt", help="the prompt; wrap text in <!-> ... <-!> (or <!!->, <!!!->) to emphasise it")
    p.add_argument("--system", default=None, help="a system message (tags allowed)")
    p.add_argument("--delta-mid", type=number, default=1.0, help="level-2 bias (level 1: half, level 3: double)")
    p.add_argument("--layers", default="all", help="all | none | first | last | comma-separated indices")
    p.add_argument("--max-new-tokens", type=positive_int, default=64)
    p.add_argument("--model", default=None, help="a model name or path (default: the embedded SmolLM2-135M-Instruct)")
    add_chat_flags(p)
    p.add_argument("--compare", action="store_true", help="show unsteered and steered output side by side")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    pasta = p.add_argument_group("PASTA", "steer chosen heads towards --emphasize substrings (adds up with GUIDE tags)")
    pasta.add_argument("--pasta-heads", default=None, metavar="FILE",
                       help="a head config: JSON {\"layer\": [heads]} (pastalib's format, or `attnlens pasta profile`)")
    pasta.add_argument("--emphasize", action="append", default=[], metavar="TEXT",
                       help="a substring of the prompt to emphasise (repeat for several)")
    pasta.add_argument("--alpha", type=number, default=0.01, help="PASTA's scaling coefficient (exclude: in (0, 1])")
    pasta.add_argument("--scale-position", choices=["exclude", "include"], default="exclude",
                       help="exclude: scale the rest of the prompt by alpha; include: scale the spans by 1/alpha")
    p.set_defaults(run=_run_generate)


def _generate_outputs(args: argparse.Namespace, model: Any) -> dict[str, Any]:
    from ..api.chain import PastaSettings, steered_generation
    from ..prompts.tags import escape_tags, parse_tags

    prompt: Any = prompt_from(args)
    pasta_heads, emphasize = getattr(args, "pasta_heads", None), getattr(args, "emphasize", None)
    pasta = None
    if pasta_heads or emphasize:
        if not pasta_heads:
            raise CLIError("--emphasize needs --pasta-heads FILE (a head config, JSON {\"layer\": [heads]})")
        if not emphasize:
            raise CLIError("--pasta-heads needs at least one --emphasize TEXT")
        pasta = PastaSettings(pasta_heads, alpha=args.alpha, scale_position=args.scale_position)
    steering = dict(delta_mid=args.delta_mid, layers=args.layers, max_new_tokens=args.max_new_tokens)
    result = steered_generation(model, prompt, emphasize=emphasize or (), pasta=pasta, **steering)
    if args.compare:
        # the same clean text, tags removed (and escaped), so nothing is steered
        def plain(text: str) -> str:
            return escape_tags(parse_tags(text).text)

        unsteered_prompt: Any = plain(args.prompt) if isinstance(prompt, str) else [
            {**m, "content": plain(m["content"])} for m in prompt
        ]
        result["unsteered"] = steered_generation(model, unsteered_prompt, **steering)["steered"]
    return result


def _run_generate(args: argparse.Namespace) -> int:
    model = load_model_for(args)
    result = _generate_outputs(args, model)
    if args.json:
        print(json.dumps(result, ensure_ascii=False, indent=2))
    elif args.compare:
        methods = [m for m, on in (("GUIDE", result["spans"]), ("PASTA", result.get("pasta_spans"))) if on]
        title = f"steered ({' + '.join(methods) or 'GUIDE'})"
        print(side_by_side("unsteered", result["unsteered"], title, result["steered"]))
    else:
        print(result["steered"])
    return 0


def add_demo(sub: Any) -> None:
    p = sub.add_parser("demo", help="the embedded model, unsteered vs GUIDE-steered, side by side")
    p.add_argument("--prompt", default=DEMO_PROMPT)
    p.add_argument("--max-new-tokens", type=positive_int, default=60)
    p.add_argument("--delta-mid", type=number, default=1.0)
    p.set_defaults(run=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from ..runtime.models import EMBEDDED_NAME

    print(f"attnlens demo: {EMBEDDED_NAME} (embedded), GUIDE delta_mid={args.delta_mid}")
    print(f"prompt: {args.prompt}\n")
    args.system, args.layers, args.model, args.raw, args.compare, args.json = None, "all", None, False, True, False
    args.chat = True  # the demo's prompt is an instruction to an instruct model: a user message
    return _run_generate(args)
