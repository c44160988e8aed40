"""``attnlens batch``: the pipeline over a JSON Lines file of prompts, one results file out; runs under torchrun."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import add_dtype_flag, add_chat_flags, add_steering_flag, check_shape, load_model_for, number, positive_int, steering_from


def add_batch(sub: Any) -> None:
    p = sub.add_parser(
        "batch",
        help="run GUIDE-tagged prompts from a JSONL file into a JSONL of results (resumable; torchrun splits it)",
    )
    p.add_argument("--input", required=True, help='JSONL prompts: {"prompt": text or chat, "id": optional} per line')
    p.add_argument("--output", required=True, help="the JSONL results (rerunning continues an interrupted run)")
    p.add_argument("--delta-mid", type=number, default=1.0, help="level-2 bias (level 1: half, level 3: double)")
    p.add_argument("--layers", default="all", help="all | none | first | last | comma-separated indices")
    p.add_argument("--max-new-tokens", type=positive_int, default=64, help="tokens to generate at most per prompt")
    p.add_argument("--batch-size", type=positive_int, default=8, help="prompts per unit of work and per generate")
    add_steering_flag(p)
    add_chat_flags(p, "plain-string prompts")
    p.add_argument("--model", default=None, help="a model name or path (default: the embedded SmolLM2-135M-Instruct)")
    add_dtype_flag(p)
    p.set_defaults(run=_run_batch)


def _run_batch(args: argparse.Namespace) -> int:
    from ..api.pipeline import PayAttentionPipeline, read_prompts, run_prompts
    from ..runtime.distributed import current_workers

    prompts = read_prompts(args.input)  # a bad file fails before the model loads
    steer = steering_from(args)
    check_shape(args, layers="layers")
    model = load_model_for(args)
    pipe = PayAttentionPipeline(model, delta_mid=args.delta_mid, layers=args.layers, batch_size=args.batch_size,
                                chat=True if args.chat else None, raw=args.raw, steer=steer)
    rows = run_prompts(pipe, prompts, args.output, max_new_tokens=args.max_new_tokens)
    workers = current_workers()
    if workers.is_main:
        print(f"{len(rows)} result(s) for {len(prompts)} prompt(s) in {args.output} "
              f"({workers.world_size} worker(s))")
    return 0
