"""``attnlens pasta profile``: rank the heads worth steering with PASTA."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..core.errors import CLIError
from ._common import add_chat_flags, check_shape, load_model_for, number, positive_int, writable

#: the names of ``attnlens.api.scorers.SCORERS`` (kept here so --help imports no torch; a test checks they agree)
SCORER_NAMES = ("first_token_logprob", "mean_logprob", "sum_logprob", "token_accuracy")


def add_pasta(sub: Any) -> None:
    p = sub.add_parser("pasta", help="PASTA: find which attention heads to steer")
    tasks = p.add_subparsers(dest="pasta_command", metavar="TASK")
    tasks.required = True
    prof = tasks.add_parser(
        "profile",
        help="steer each head alone on example data and rank the heads",
        description="For every (layer, head), steer that head alone towards each example's 'emphasize' "
        "substrings and score the log-probability of its 'target' completion; write the best heads as a "
        "head config for `attnlens generate --pasta-heads`.",
    )
    prof.add_argument("--data", default=None, help="JSONL examples: {\"prompt\", \"emphasize\", \"target\"} per line")
    prof.add_argument("--study", dest="studies", action="append", default=None, metavar="STUDY",
                      help="use an experiment study's items as examples (repeat for several; with --limit)")
    prof.add_argument("--limit", type=positive_int, default=None, help="with --study: the first N items of each")
    prof.add_argument("--top-k", type=positive_int, default=20, help="heads written to --out")
    prof.add_argument("--out", required=True, help="the head config to write (pastalib's JSON format)")
    prof.add_argument("--alpha", type=number, default=0.01,
                      help="PASTA's alpha: the attention kept outside the emphasised span (smaller is stronger)")
    prof.add_argument("--scale-position", choices=["exclude", "include"], default="exclude",
                      help="exclude: scale down attention outside the span; include: scale up the span")
    prof.add_argument("--scorer", choices=SCORER_NAMES, default="mean_logprob",
                      help="how a head's steered outputs are scored against the examples' targets")
    prof.add_argument("--layers", default="all", help="profile only these layers: all | comma-separated indices")
    prof.add_argument("--only-helpful", action="store_true", help="write only heads that beat the unsteered baseline")
    prof.add_argument("--batch-size", type=positive_int, default=None, help="heads per forward pass (default: auto)")
    prof.add_argument("--scores", default=None, metavar="FILE", help="also write every head's score as JSON")
    prof.add_argument("--model", default=None, help="a model name or path (default: the embedded SmolLM2-135M-Instruct)")
    add_chat_flags(prof, "string prompts")
    prof.add_argument("--threads", type=positive_int, default=None,
                      help="torch threads (default: the cores other work leaves free, so one on a busy machine)")
    prof.add_argument("--json", action="store_true", help="print machine-readable JSON")
    prof.add_argument("--sweep-dir", default=None, metavar="DIR",
                      help="run as a resumable sweep with its results in DIR (needed under torchrun)")
    prof.set_defaults(run=_run_pasta_profile)


def _run_pasta_profile(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..core.validate import resolve_layers
    from ..api.profile import load_examples, profile_heads

    writable(args.out, "--out")
    if args.scores:
        writable(args.scores, "--scores")
    if (args.data is None) == (args.studies is None):
        raise CLIError("give the examples as --data FILE or as --study NAME (not both)")
    if args.studies:
        from ..experiments.profiling import examples_of

        examples = examples_of(args.studies, args.limit)
        chat = True
    else:
        examples = load_examples(args.data)
        chat = True if args.chat else False if args.raw else None  # None: the one rule, once the model is known
    check_shape(args, layers="layers")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    model = load_model_for(args)
    if chat is None:
        from ..prompts.prompt import has_chat_template

        chat = has_chat_template(model.tokenizer)
    layers = resolve_layers(args.layers, model.cfg.n_layers)
    if not layers:
        raise CLIError("--layers selects no layer")
    result = profile_heads(
        model, examples, alpha=args.alpha, scale_position=args.scale_position, scorer=args.scorer,
        heads=list(layers), chat=chat, batch_size=args.batch_size, sweep_dir=args.sweep_dir, threads=args.threads,
    )
    from ..runtime.distributed import current_workers

    if not current_workers().is_main:  # every worker holds the profile; one writes and prints
        return 0
    out = result.save(args.out, args.top_k, only_helpful=args.only_helpful)
    if args.scores:
        Path(args.scores).expanduser().write_text(json.dumps(result.as_dict(), indent=1) + "\n")
    best = result.ranking()[: args.top_k]
    if args.only_helpful:
        best = [s for s in best if s.gain > 0]
    if args.json:
        print(json.dumps({"out": str(out), "baseline": result.baseline, "seconds": result.seconds,
                          "heads": len(result), "examples": result.n_examples,
                          "top": [{"layer": s.layer, "head": s.head, "score": s.score, "gain": s.gain} for s in best]},
                         indent=2))
        return 0
    print(f"profiled {len(result)} heads on {result.n_examples} example(s) in {result.seconds:.1f} s "
          f"(alpha={result.alpha}, {result.scale_position}, scorer {result.scorer})")
    print(f"unsteered baseline: {result.baseline:.4f}")
    print(f"{'rank':>4}  {'layer':>5}  {'head':>4}  {'score':>9}  {'gain':>8}")
    for rank, s in enumerate(best, 1):
        print(f"{rank:>4}  {s.layer:>5}  {s.head:>4}  {s.score:>9.4f}  {s.gain:>+8.4f}")
    print(f"wrote {len(best)} head(s) to {out}")
    return 0
