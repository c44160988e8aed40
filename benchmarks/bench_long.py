"""Long prompts: steering, Influence and steered generation against a plain Hugging Face sdpa forward.

Usage::

    python benchmarks/bench_long.py                                   # embedded model, 2,048 and 8,192 tokens
    python benchmarks/bench_long.py --lengths 2048 --modes plain guide
    python benchmarks/bench_long.py --shape llama-1b --device cuda --dtype bfloat16 --lengths 32768

Every run is one fresh subprocess, on the same random token ids (seeded):

* ``plain``      -- Hugging Face sdpa, ``model(ids, logits_to_keep=1)``: the reference of every ratio;
* ``guide``      -- the same call in a direct run (:mod:`attnlens.runtime.direct`) with GUIDE (delta 2) on
  the keys 1..32 in every head of every layer;
* ``pasta``      -- the same with PASTA (``exclude``, alpha 0.01) on 8 heads spread over the layers;
* ``influence``  -- ``attnlens.trace_influence`` of one span (keys 1..32), method ``influence``;
* ``rollout``    -- the same, method ``rollout``;
* ``reference``  -- (not by default) ``guide`` with the fused path turned off: the materialising
  hook path, for comparison;
* ``generate`` / ``generate_guide`` -- (at ``--gen-length``) greedy ``generate`` of
  ``--new-tokens`` tokens: plain Hugging Face sdpa, and ``attnlens.runtime.generate.generate_batch``
  with the GUIDE plan above. The prompt is ``--gen-length`` minus the new tokens, so prompt and
  generation fill the window exactly.

Time is the CPU time of the measured pass (``time.process_time``) with ``--threads`` torch threads
(1 by default) on a CPU, or the wall time (synchronised) on an accelerator. Memory on a CPU: the
peak resident set size of the process during the measured pass (``VmHWM``, reset after loading
and a short warm-up, so the loaded model counts and loading's own peak does not), with glibc
returning freed blocks of 64 KiB or more at once (``MALLOC_MMAP_THRESHOLD_``) so the RSS follows
live memory; on an accelerator, ``torch.cuda.max_memory_allocated``. ``--shape llama-1b`` or
``llama-8b`` builds a randomly initialised LLaMA at that real shape (no hub needed), so the same
command measures a large model on a GPU (``tiny``: a small random LLaMA for quick checks; see
``_model.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from _memory import measure_in_worker, peak_method, peak_mib, reset_device_peak
from _model import add_model_args, clock, load_bridge, load_hf, synchronize

SPAN = (1, 33)
GOALS = {"guide": (1.3, 1.15), "pasta": (1.3, 1.15), "influence": (1.6, 1.2), "rollout": (1.6, 1.2),
         "reference": (None, None), "generate_guide": (1.2, None)}
DEFAULT_MODES = ("plain", "guide", "pasta", "influence", "rollout")


def _pasta_heads(n_layers: int, n_heads: int, count: int = 8) -> dict[int, list[int]]:
    config: dict[int, list[int]] = {}
    for i in range(count):
        layer = (i * n_layers) // count
        config.setdefault(layer, []).append((i * 5) % n_heads)
    return {layer: sorted(set(heads)) for layer, heads in config.items()}


def worker(mode: str, length: int, args: argparse.Namespace) -> dict:
    import torch

    import attnlens as al
    from attnlens.runtime import fused
    from attnlens.runtime.direct import direct
    from attnlens.runtime.generate import generate_batch
    from attnlens.steering.bias import apply_bias
    from attnlens.steering.pasta import pasta_plan

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    plain = mode in ("plain", "generate")
    model = (load_hf if plain else load_bridge)(args.shape, device, args.dtype)
    hf = model if plain else model.original_model
    vocab = hf.config.vocab_size
    generator = torch.Generator().manual_seed(0)
    prompt_len = length - args.new_tokens if mode.startswith("generate") else length
    if prompt_len < 2:
        raise SystemExit(f"{mode} at {length} tokens: the prompt would have {prompt_len} tokens; give a longer length")
    tokens = torch.randint(100, vocab - 100, (1, prompt_len), generator=generator).to(device)
    span = (SPAN[0], min(SPAN[1], prompt_len))  # the steered keys, inside short prompts too

    def plans():
        if mode in ("guide", "reference", "generate_guide"):
            return [al.guide_plan(model, [span], delta=2.0)]
        if mode == "pasta":
            heads = _pasta_heads(model.cfg.n_layers, model.cfg.n_heads)
            return [pasta_plan(model, spans=[span], head_config=heads, alpha=0.01)]
        return []

    def run(toks: torch.Tensor) -> None:
        with torch.no_grad():
            if mode == "plain":
                hf(toks, logits_to_keep=1)
            elif mode in ("guide", "pasta", "reference"):
                with fused.fused_attention(mode != "reference"), apply_bias(model, plans()[0]), direct(model) as m:
                    m(toks, logits_to_keep=1)
            elif mode in ("influence", "rollout"):
                al.trace_influence(model, toks, [span if toks.shape[1] > span[1] else (0, 1)], methods=(mode,),
                                   progress=False)
            elif mode == "generate":
                from transformers import GenerationConfig

                config = GenerationConfig(max_new_tokens=args.new_tokens, do_sample=False, eos_token_id=None,
                                          pad_token_id=0)
                hf.generate(toks, attention_mask=torch.ones_like(toks), generation_config=config)
            elif mode == "generate_guide":
                generate_batch(model, toks.tolist(), plans(), max_new_tokens=args.new_tokens, stop_at_eos=False,
                               direct=True)
            else:
                raise SystemExit(f"unknown mode {mode}")

    run(tokens[:, :256])  # warm-up: kernels, one-time tables
    synchronize(device)
    exact = reset_device_peak(device)
    timer = clock(device)
    start, start_time = time.perf_counter(), timer()
    run(tokens)
    seconds = timer() - start_time
    wall = time.perf_counter() - start
    return {"mode": mode, "length": length, "seconds": seconds, "wall": wall, "peak_mib": peak_mib(device) or 0,
            "method": peak_method(device, exact)}


def measure(mode: str, length: int, args: argparse.Namespace) -> dict:
    return measure_in_worker(__file__, mode, length, args.threads,
                             ["--device", args.device, "--dtype", args.dtype, "--shape", args.shape,
                              "--new-tokens", str(args.new_tokens)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--modes", nargs="+", default=list(DEFAULT_MODES),
                        choices=["plain", "guide", "pasta", "influence", "rollout", "reference"])
    parser.add_argument("--gen-length", type=int, default=8192, help="prompt + new tokens of the generation runs "
                        "(0: none)")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    add_model_args(parser)
    parser.add_argument("--worker", nargs=2, metavar=("MODE", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args)))
        return
    modes = ["plain"] + [m for m in args.modes if m != "plain"]
    jobs = [(length, mode) for length in args.lengths for mode in modes]
    if args.gen_length:
        jobs += [(args.gen_length, "generate"), (args.gen_length, "generate_guide")]
    results = {}
    for length, mode in jobs:
        r = results[(length, mode)] = measure(mode, length, args)
        print(f"  measured {mode:<15} {length:>6} tokens: {r['seconds']:8.2f} s, {r['peak_mib']:8.0f} MiB",
              file=sys.stderr, flush=True)
    clock = "wall" if args.device != "cpu" else f"CPU, {args.threads} thread(s)"
    print(f"\n{args.shape}, {args.device}, {args.dtype}; time: {clock}; peak memory: "
          f"{next(iter(results.values()))['method']}")
    print(f"{'tokens':>6} {'run':<15} {'seconds':>9} {'time x':>7} {'goal':>6} {'peak MiB':>9} {'memory x':>8} "
          f"{'goal':>6}")
    for (length, mode), r in results.items():
        base = results[(length, "generate" if mode.startswith("generate") else "plain")]
        tx, mx = r["seconds"] / base["seconds"], r["peak_mib"] / base["peak_mib"]
        tg, mg = GOALS.get(mode, (None, None))
        mark = lambda x, g: "" if g is None else ("ok" if x <= g else "MISS")  # noqa: E731
        print(f"{length:>6} {mode:<15} {r['seconds']:9.2f} {tx:7.2f} {mark(tx, tg):>6} {r['peak_mib']:9.0f} "
              f"{mx:8.2f} {mark(mx, mg):>6}")


if __name__ == "__main__":
    main()
