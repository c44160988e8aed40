"""Which scaled-dot-product attention kernels attnlens' runs call on this device, dtype and shape.

Usage::

    python benchmarks/which_kernels.py                                        # embedded model, CPU, float32
    python benchmarks/which_kernels.py --shape llama-8b --device cuda --dtype bfloat16

For each run (a plain Hugging Face sdpa forward, a GUIDE-steered forward on the fused path, PASTA
on 8 heads, Influence of one span, and the GUIDE-steered forward on the reference path) it lists
the attention kernels the PyTorch profiler saw (``aten::_scaled_dot_product_*``) and how many
times each ran, then, for the GUIDE-steered forward, whether it still runs when only the fused
kernels are allowed (flash, and memory-efficient on CUDA): a call that would need the math kernel
then raises ``No available kernel``. ``--length`` sets the prompt (random token ids, seeded).
"""

from __future__ import annotations

import argparse
import collections

from _model import add_model_args, describe, load_bridge, load_hf, synchronize


def _kernels(prof) -> dict[str, int]:
    counts: collections.Counter[str] = collections.Counter()
    for event in prof.events():
        if "scaled_dot_product" in event.name or "attention_math" in event.name:
            counts[event.name] += 1
    return dict(sorted(counts.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--length", type=int, default=512, help="prompt tokens (default: 512)")
    add_model_args(parser)
    args = parser.parse_args()

    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.profiler import profile

    import attnlens as al
    from attnlens.runtime import fused
    from attnlens.runtime.direct import direct
    from attnlens.steering.bias import apply_bias
    from attnlens.steering.pasta import pasta_plan

    device = torch.device(args.device)
    bridge = load_bridge(args.shape, device, args.dtype)
    hf = load_hf(args.shape, device, args.dtype)
    cfg = bridge.cfg
    tokens = torch.randint(100, hf.config.vocab_size - 100, (1, args.length),
                           generator=torch.Generator().manual_seed(0)).to(device)
    span = (1, min(33, args.length))
    heads = {(i * cfg.n_layers) // 8: [(i * 5) % cfg.n_heads] for i in range(8)}
    print(f"{describe(args.shape, device, args.dtype)}; {args.length} tokens; head size {cfg.d_head}; "
          f"torch {torch.__version__}")

    def steered(plan, use_fused: bool = True):
        def run():
            with fused.fused_attention(use_fused), apply_bias(bridge, plan), direct(bridge) as m:
                m(tokens, logits_to_keep=1)
        return run

    runs = {
        "plain HF sdpa forward": lambda: hf(tokens, logits_to_keep=1),
        "GUIDE, fused path": steered(al.guide_plan(bridge, [span], delta=2.0)),
        "PASTA 8 heads, fused path": steered(pasta_plan(bridge, spans=[span], head_config=heads, alpha=0.01)),
        "Influence of one span": lambda: al.trace_influence(bridge, tokens, [span], methods=("influence",),
                                                            progress=False),
        "GUIDE, reference path": steered(al.guide_plan(bridge, [span], delta=2.0), use_fused=False),
    }
    for name, run in runs.items():
        with torch.no_grad():
            run()  # warm-up
            synchronize(device)
            with profile() as prof:
                run()
                synchronize(device)
        kernels = _kernels(prof)
        listed = ", ".join(f"{k} x{v}" for k, v in kernels.items()) or "no sdpa call"
        print(f"{name:<28} {listed}")

    allowed = [SDPBackend.FLASH_ATTENTION] + ([SDPBackend.EFFICIENT_ATTENTION] if device.type == "cuda" else [])
    try:
        with torch.no_grad(), sdpa_kernel(allowed):
            runs["GUIDE, fused path"]()
            synchronize(device)
        verdict = "runs"
    except RuntimeError as exc:
        verdict = f"refused: {str(exc).splitlines()[0]}"
    print(f"GUIDE, fused path, only {', '.join(b.name for b in allowed)} allowed: {verdict}")


if __name__ == "__main__":
    main()
