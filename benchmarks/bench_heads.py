"""AttentionData's per-head patterns vs caching every head (the usual ``run_with_cache`` approach).

On the embedded model (or ``--shape``), for one head and a batch of texts:

* attnlens: ``AttentionData(...).head_data(layer, head)``: one hook on
  ``blocks.{layer}.attn.hook_pattern`` that keeps that head, the forward pass stopped
  after ``layer``, then the rows and multiples;
* cache all: ``run_with_cache`` over the same padded batch keeping the pattern of
  every head of every layer, then the one head taken out of it.

Timed in rounds (order alternated) in one process (wall time; on an accelerator,
synchronised); prints median times, the time ratio, and the bytes of attention patterns
each keeps.

``--shape llama-1b`` or ``llama-8b`` runs the same texts (through the embedded tokenizer)
on a randomly initialised LLaMA at that shape; ``--layer`` and ``--head`` are clamped to
the model's last layer and head.

    python benchmarks/bench_heads.py [--texts 32] [--layer 3] [--head 2] [--rounds 3]
    python benchmarks/bench_heads.py --shape llama-8b --device cuda --dtype bfloat16 --texts 256 --layer 20
"""

from __future__ import annotations

import argparse
import random
import statistics

from _model import add_model_args, clock, describe, load_bridge

WORDS = (
    "the a river city old new small large market people walked talked quickly slowly because after "
    "before while music science history garden winter summer light dark paper letter train station "
    "friend teacher student library bread water mountain valley story question answer morning evening"
).split()


def make_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(24, 34))).capitalize() + "." for _ in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=32)
    parser.add_argument("--layer", type=int, default=3)
    parser.add_argument("--head", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    add_model_args(parser)
    args = parser.parse_args()

    import torch

    import attnlens as al

    model = load_bridge(args.shape, args.device, args.dtype)
    layer, head = min(args.layer, model.cfg.n_layers - 1), min(args.head, model.cfg.n_heads - 1)
    texts = make_texts(args.texts)
    timer = clock(args.device, wall=True)

    def attnlens_run() -> tuple[float, int]:
        start = timer()
        ad = al.AttentionData(model, text_batch=texts, batch_size=args.texts)
        record = ad.head_data(layer, head)
        elapsed = timer() - start
        return elapsed, record.patterns.numel() * record.patterns.element_size()

    def cache_all_run() -> tuple[float, int]:
        start = timer()
        enc = model.tokenizer(texts, padding=True, truncation=True, max_length=30, return_tensors="pt")
        with torch.no_grad():
            _, cache = model.run_with_cache(
                enc["input_ids"].to(args.device), attention_mask=enc["attention_mask"].to(args.device),
                names_filter=lambda name: name.endswith("attn.hook_pattern"),
            )
        patterns = [cache[f"blocks.{i}.attn.hook_pattern"] for i in range(model.cfg.n_layers)]
        _ = patterns[layer][:, head].clone()
        elapsed = timer() - start
        return elapsed, sum(p.numel() * p.element_size() for p in patterns)

    attnlens_run(), cache_all_run()  # warm-up
    times: dict[str, list[float]] = {"attnlens": [], "cache all": []}
    sizes: dict[str, int] = {}
    for r in range(args.rounds):
        order = [("attnlens", attnlens_run), ("cache all", cache_all_run)]
        for name, run in order if r % 2 == 0 else order[::-1]:
            elapsed, size = run()
            times[name].append(elapsed)
            sizes[name] = size

    print(f"{describe(args.shape, args.device, args.dtype)}; {args.texts} texts, <= 30 tokens, "
          f"layer {layer} head {head}, {model.cfg.n_layers} layers x {model.cfg.n_heads} heads, {args.rounds} rounds")
    for name in times:
        print(f"  {name:<10} median {statistics.median(times[name]) * 1000:8.1f} ms   patterns kept {sizes[name] / 1e6:8.2f} MB")
    ratio = statistics.median(times["attnlens"]) / statistics.median(times["cache all"])
    print(f"time attnlens / cache all: {ratio:.2f}")
    print(f"memory attnlens / cache all: {sizes['attnlens'] / sizes['cache all']:.4f}")


if __name__ == "__main__":
    main()
