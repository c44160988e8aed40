"""``attnlens influence``: follow tagged spans through the layers (Influence, rollout)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..core.errors import CLIError
from ._common import (LazyChoices, add_chat_flags, check_shape, check_tags, load_model_for, number, positive_int, prompt_from,
                      writable)

def _zero_or_more(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


def _method_choices() -> tuple[str, ...]:
    from .. import attribution

    return attribution.span_methods() + ("both",)


def add_influence(sub: Any) -> None:
    p = sub.add_parser(
        "influence",
        help="follow <?-> ... <-?> spans through the layers (Influence, attention rollout)",
        description="Measure how much each <?-> ... <-?> span reaches every position, layer by layer. "
        "GUIDE tags in the same prompt steer the measured pass.",
    )
    p.add_argument("prompt", help="the prompt; wrap the text to follow in <?-> ... <-?>")
    p.add_argument("--method", choices=LazyChoices(_method_choices), metavar="METHOD", default="influence",
                   help="a registered attribution method (influence, rollout, influence_heads, and any added with "
                   "--plugin), or both: influence and rollout")
    p.add_argument("--convention", choices=["stated", "pap"], default="stated",
                   help="stated: the residual stream entering each layer (default); pap: pay-attention-pipeline "
                   "0.2.0's numbers (the attention's normalised input, paired with the previous layer)")
    p.add_argument("--plot", default=None, metavar="FILE", help="write an HTML view (plot and token heat map)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON (every layer and position)")
    p.add_argument("--model", default=None, help="a model name or path (default: the embedded SmolLM2-135M-Instruct)")
    add_chat_flags(p)
    p.add_argument("--system", default=None, help="a system message (tags allowed)")
    p.add_argument("--delta-mid", type=number, default=1.0, help="level-2 GUIDE bias for <!-> tags in the prompt")
    p.add_argument("--layers", default="all", help="the layers GUIDE tags steer")
    p.add_argument("--use-values", action="store_true", help="weight keys by their value vectors' norms")
    p.add_argument("--max-new-tokens", type=_zero_or_more, default=0,
                   help="generate this many tokens first and cover them too (default 0: the prompt only)")
    p.add_argument("--top", type=positive_int, default=5, help="tokens listed per span in the text output")
    p.set_defaults(run=_run_influence)


def _influence_outputs(args: argparse.Namespace, model: Any) -> dict[str, Any]:
    from ..api.chain import influence_report

    methods = ("influence", "rollout") if args.method == "both" else (args.method,)
    prompt = prompt_from(args, model.tokenizer)
    result = influence_report(
        model, prompt, methods=methods,
        delta_mid=args.delta_mid, layers=args.layers, max_new_tokens=args.max_new_tokens, use_values=args.use_values,
        convention=args.convention,
    )
    result["prompt_format"] = "raw" if isinstance(prompt, str) else "chat"
    return result


def precheck(args: argparse.Namespace) -> None:
    """What needs no model: the tags parse and an influence tag is there."""
    parsed = [check_tags(args.prompt, "the prompt")]
    if args.system:
        parsed.append(check_tags(args.system, "--system"))
    if args.raw and args.system:
        raise CLIError("--system needs the chat template; drop --raw")
    check_shape(args, layers="layers")
    if not any(s.kind == "influence" for p in parsed for s in p.spans):
        raise CLIError("the prompt has no influence tag: wrap the text to follow in <?-> ... <-?>")


def _influence_plot(result: dict[str, Any], path: str) -> str:
    from ..viz import HTMLView, influence_view

    views = [
        influence_view(
            {m: span[m] for m in result["methods"]}, result["tokens"],
            prompt_length=result["prompt_length"], title=f"span {i + 1}: {span['text'].strip()!r}",
            include_plotlyjs=(i == 0),
        )
        for i, span in enumerate(result["spans"])
    ]
    page = HTMLView("\n<hr>\n".join(v.body for v in views), title="attnlens influence")
    try:
        return str(page.save(path))
    except OSError as exc:
        raise CLIError(f"--plot {path!r}: {exc.strerror or exc}") from None


def _run_influence(args: argparse.Namespace) -> int:
    precheck(args)
    if args.plot:
        writable(args.plot, "--plot")
    model = load_model_for(args)
    result = _influence_outputs(args, model)
    plot = _influence_plot(result, args.plot) if args.plot else None
    if args.json:
        out = {**result, "spans": [
            {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in span.items()} for span in result["spans"]
        ]}
        if plot:
            out["plot"] = plot
        print(json.dumps(out, ensure_ascii=False))
        return 0
    methods, tokens = result["methods"], result["tokens"]
    last = result["prompt_length"] - 1
    if result["generated_text"]:
        print(f"generated: {result['generated_text']}\n")
    for i, span in enumerate(result["spans"]):
        print(f"span {i + 1}: tokens [{span['start']}, {span['end']}) {span['text']!r}")
        print(f"  {', '.join(methods)} at the last token (position {last}, {tokens[last]!r}), by layer:")
        print("  layer  " + "  ".join(f"{m:>9}" for m in methods))
        n_rows = span[methods[0]].shape[0]
        for row in range(n_rows):
            label = "span" if row == 0 else str(row - 1)
            print(f"  {label:>5}  " + "  ".join(f"{float(span[m][row, last]):9.4f}" for m in methods))
        final = span[methods[0]][-1].clone()
        final[span["start"] : span["end"]] = -1.0  # rank the positions outside the span
        k = min(args.top, max(0, len(tokens) - (span["end"] - span["start"])))
        if k:
            top = final.topk(k).indices.tolist()
            shown = ", ".join(f"{tokens[j]!r} ({float(span[methods[0]][-1, j]):.3f})" for j in top)
            print(f"  most reached by the span in the final layer ({methods[0]}): {shown}")
        print()
    if plot:
        print(f"plot: {plot}")
    return 0
