"""Each token attribution method on one long prompt, and one prompt's full faithfulness evaluation.

Usage::

    python benchmarks/bench_attribution.py                   # 256 tokens, every registered method
    python benchmarks/bench_attribution.py --length 64 --methods influence rollout occlusion

On the embedded SmolLM2-135M-Instruct (CPU, float32), the prompt is sentences of the shipped
passages cut to ``--length`` tokens. For every method it prints the CPU time of the process
(``time.process_time``, torch on ``--threads`` threads; on a shared machine CPU time is what the
work itself costs) and the wall time, next to one plain forward pass of the same prompt and their
ratio. Then it times ``attnlens.faithfulness`` (the method's attribution, its deletion and
insertion curves, comprehensiveness and sufficiency, and ``--seeds`` random orders) on a
``--faith-length``-token prompt.
"""

from __future__ import annotations

import argparse
import json
import time
from importlib.resources import files

import torch
from _model import add_model_args, describe, load_bridge

# the passages the faithfulness prompts are drawn from: the first 61, so published tables reproduce
from attnlens.experiments.faithfulness import FAITHFULNESS_PASSAGES


def _text(model, n):
    passages = files("attnlens.experiments").joinpath("data/summarize_passages.jsonl").read_text(encoding="utf-8")
    lines = [line for line in passages.splitlines() if line.strip()][:FAITHFULNESS_PASSAGES]
    text = " ".join(json.loads(line)["text"] for line in lines)
    ids = model.tokenizer(text)["input_ids"][:n]
    return ids


def _timed(fn):
    c, w = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - c, time.perf_counter() - w


def main() -> None:
    import attnlens as al

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--faith-length", type=int, default=32)
    parser.add_argument("--methods", nargs="*", default=None)
    parser.add_argument("--faith-method", default="influence")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    add_model_args(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_bridge(args.shape, args.device, args.dtype)
    print(describe(args.shape, args.device, args.dtype))
    ids = _text(model, args.length)
    with torch.no_grad():
        model(torch.tensor([ids]), return_type="logits")  # warm-up
    fwd_cpu, fwd_wall = _timed(lambda: model(torch.tensor([ids]), return_type="logits"))
    print(f"{len(ids)} tokens; forward pass: {fwd_cpu:.2f} s CPU ({fwd_wall:.2f} s wall)")
    for method in args.methods or al.attribution.methods():
        cpu, wall = _timed(lambda: al.attribute(model, ids, method=method))
        print(f"{method:<22} {cpu:8.2f} s CPU {wall:8.2f} s wall  {cpu / fwd_cpu:7.1f} x forward")
    short = _text(model, args.faith_length)
    cpu, wall = _timed(lambda: al.faithfulness(model, short, method=args.faith_method, seeds=args.seeds))
    print(f"faithfulness of {args.faith_method} on {len(short)} tokens ({args.seeds} random orders): "
          f"{cpu:.2f} s CPU ({wall:.2f} s wall)")


if __name__ == "__main__":
    main()
