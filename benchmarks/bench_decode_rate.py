"""How close a continuous batch's generation comes to this machine's arithmetic peak.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_decode_rate.py [--batch-sizes 16,32,64,128] [--prompt 105]
        [--new-tokens 24] [--shape embedded|tiny|llama-1b|llama-8b] [--device cpu] [--dtype float32]

Each batch size generates that many unsteered rows (prompts of ``--prompt`` tokens, plus up to 9 to
vary their lengths; greedy, end token ignored) through one continuous batch
(:func:`attnlens.runtime.continuous.generate_rows`, as comparisons and studies run), and prints the
new tokens per second and the arithmetic rate it reached: 2 x the weights of the matrix products
(every parameter but the input embedding) per token position the model ran (prompt and new tokens),
plus the output layer's once per new token, over the wall time. Beside it, the rate of a square
matrix product of the same dtype on the same threads (``torch.mm``, 2,048 wide) in the same run: the
ratio says how much of a speed-up is left to take from doing the same arithmetic faster. A short
generation first warms up what is done once (kernels, an accelerator's start-up).
"""

from __future__ import annotations

import argparse
import time

from _model import add_model_args, describe, load_bridge, synchronize, torch_dtype


def matmul_rate(device, dtype, size: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of a ``size`` x ``size`` matrix product on ``device`` in ``dtype``."""
    import torch

    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    torch.mm(a, b)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    synchronize(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", default="16,32,64,128", help="rows per continuous batch, comma-separated")
    parser.add_argument("--prompt", type=int, default=105, help="prompt tokens of the shortest row (default 105)")
    parser.add_argument("--new-tokens", type=int, default=24, help="new tokens per row (default 24)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    add_model_args(parser)
    args = parser.parse_args()

    import torch

    from attnlens.runtime.continuous import Row, generate_rows

    torch.set_num_threads(args.threads)
    model = load_bridge(args.shape, args.device, args.dtype)
    hf = model.original_model
    embed = hf.get_input_embeddings().weight
    head = hf.get_output_embeddings().weight
    per_position = 2 * (sum(p.numel() for p in hf.parameters()) - embed.numel()
                        - (0 if head is embed else head.numel()))
    per_new = 2 * head.numel()
    vocab = hf.config.vocab_size
    generator = torch.Generator().manual_seed(0)
    base = torch.randint(100, vocab - 100, (args.prompt + 9,), generator=generator).tolist()
    model.tokenizer.eos_token = None  # every row makes all its new tokens
    peak = matmul_rate(args.device, torch_dtype(args.dtype))
    for _ in generate_rows(model, [Row(base[:8], [], key=0)], max_new_tokens=2, batch_size=1):
        pass  # warm-up: one-time start-up (kernels, an accelerator's context) is not timed
    print(f"{describe(args.shape, args.device, args.dtype)}, {args.threads} thread(s), prompts of "
          f"{args.prompt}-{args.prompt + 9} tokens, {args.new_tokens} new tokens, greedy, wall time")
    print(f"  matrix product ({args.dtype}, 2,048 wide): {peak:.0f} GFLOP/s")
    print(f"  {'rows':>5} {'seconds':>8} {'new tok/s':>10} {'GFLOP/s':>8} {'of the product':>15}")
    for size in (int(s) for s in args.batch_sizes.split(",")):
        rows = [Row(base[: args.prompt + i % 10], [], key=i) for i in range(size)]
        positions = sum(len(r.tokens) for r in rows)
        synchronize(args.device)
        start = time.perf_counter()
        new = sum(len(t) for _, t in generate_rows(model, rows, max_new_tokens=args.new_tokens, batch_size=size))
        synchronize(args.device)
        seconds = time.perf_counter() - start
        rate = (per_position * (positions + new) + per_new * new) / seconds / 1e9
        print(f"  {size:>5} {seconds:>8.2f} {new / seconds:>10.1f} {rate:>8.0f} {rate / peak:>14.3f}x")


if __name__ == "__main__":
    main()
