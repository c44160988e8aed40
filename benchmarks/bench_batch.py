"""Batched vs one-by-one steered generation (the experiments' hot loop; the embedded model, or ``--shape``).

Sixteen summarisation prompts from the shipped data, each with its own GUIDE
span (a per-row plan, left padding), are generated

* as one batch: ``generate_batch(model, rows, [plan])`` with terms carrying ``row=``;
* one by one: the same call with a single row and its own plan, sixteen times.

Greedy decoding of a fixed number of new tokens (end-of-sequence ignored, so
both do the same work). Rounds alternate the order; the script prints median
throughput in generated tokens per second and the ratio. Goal: batch >= 3x.
Wall time; on an accelerator, synchronised.

``--shape llama-1b`` or ``llama-8b`` runs the same prompts (the embedded tokenizer's ids,
which every shape's vocabulary holds) through a randomly initialised LLaMA at that shape.

    python benchmarks/bench_batch.py [--prompts 16] [--new-tokens 32] [--rounds 3]
    python benchmarks/bench_batch.py --shape llama-8b --device cuda --dtype bfloat16 --new-tokens 64
"""

from __future__ import annotations

import argparse
import statistics

from _model import add_model_args, clock, describe, load_bridge


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--delta", type=float, default=2.0)
    add_model_args(parser)
    args = parser.parse_args()

    import torch

    import attnlens as al
    from attnlens.experiments import Condition, SummarizeConfig, SummarizeStudy, build_messages
    from attnlens.runtime.generate import generate_batch
    from attnlens.steering.bias import BiasPlan

    model = load_bridge(args.shape, args.device, args.dtype)
    tokenizer = model.tokenizer
    study, config = SummarizeStudy(), SummarizeConfig(out="unused")
    items = study.items(study.load_data(config), config, tokenizer)[: args.prompts]
    condition = Condition("guide", args.delta)
    prompts = [al.prepare(tokenizer, build_messages(study, item, condition, config), delta_mid=args.delta, chat=True)
               for item in items]
    rows = [p.input_ids for p in prompts]
    lengths = [len(r) for r in rows]
    n = args.new_tokens

    batch_plan = BiasPlan.for_model(model)
    single_plans = []
    for r, p in enumerate(prompts):
        (span,) = p.spans
        batch_plan.add(span.start, span.end, span.delta, row=r)
        single_plans.append(BiasPlan.for_model(model).add(span.start, span.end, span.delta))

    def batched() -> None:
        generate_batch(model, rows, [batch_plan], max_new_tokens=n, stop_at_eos=False)

    def one_by_one() -> None:
        for row, plan in zip(rows, single_plans):
            generate_batch(model, [row], [plan], max_new_tokens=n, stop_at_eos=False)

    runs = {"batch of %d" % len(rows): batched, "one by one": one_by_one}
    times: dict[str, list[float]] = {name: [] for name in runs}
    generate_batch(model, rows[:2], [], max_new_tokens=2, stop_at_eos=False)  # warm-up
    timer = clock(args.device, wall=True)
    for r in range(args.rounds):
        order = list(runs.items()) if r % 2 == 0 else list(reversed(runs.items()))
        for name, fn in order:
            start = timer()
            fn()
            times[name].append(timer() - start)

    tokens = len(rows) * n
    print(f"{describe(args.shape, args.device, args.dtype)}, {len(rows)} prompts of {min(lengths)}-{max(lengths)} "
          f"tokens, GUIDE delta {args.delta} per row, {n} new tokens each, {args.rounds} rounds, "
          f"torch threads {torch.get_num_threads()}")
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, t in medians.items():
        print(f"  {name:<12} {t:8.2f} s   {tokens / t:8.1f} tokens/s")
    batch_name, single_name = list(runs)
    print(f"throughput ratio (batch / one by one): {medians[single_name] / medians[batch_name]:.2f}x  (goal >= 3x)")


if __name__ == "__main__":
    main()
