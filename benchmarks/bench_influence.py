"""Influence and rollout vs a plain forward pass: time and peak memory at long contexts.

Usage::

    python benchmarks/bench_influence.py                      # 512, 1024, 2048, 4096 tokens
    python benchmarks/bench_influence.py --lengths 512 2048   # a subset
    python benchmarks/bench_influence.py --naive --lengths 512 1024   # also cache every layer
    python benchmarks/bench_influence.py --shape llama-8b --device cuda --dtype bfloat16 --lengths 8192 32768

For each length it measures, on the embedded SmolLM2-135M-Instruct (CPU, float32 by default;
``--shape llama-1b`` or ``llama-8b``: a randomly initialised LLaMA at that shape, on random token ids
as always):

* ``forward``   -- ``model(tokens)`` under ``torch.no_grad()``;
* ``influence`` -- ``attnlens.trace_influence`` with Influence and rollout together
  (one forward pass with the streaming hooks);
* ``naive``     -- (``--naive``) ``run_with_cache`` keeping every layer's pattern,
  residual and attention output, the obvious way to compute the same thing.

How peak memory is measured: every (mode, length) runs in a fresh Python
subprocess, so no allocation of one measurement survives into another. The
subprocess runs with ``MALLOC_MMAP_THRESHOLD_=65536`` and
``MALLOC_TRIM_THRESHOLD_=0``: glibc then maps every allocation of 64 KiB or
more (every tensor that matters) on its own and returns it to the system when
it is freed, so the resident set size (RSS) follows live tensor memory instead
of what the allocator keeps cached. The subprocess loads the model, runs one
warm-up pass of the measured mode at the measured length (one-time allocations
such as the causal mask and rotary tables), then resets the kernel's peak-RSS
counter of the process (``echo 5 > /proc/self/clear_refs`` resets ``VmHWM``)
and notes the current RSS. After the measured passes, the peak extra memory is
``VmHWM - RSS before``: the most memory a pass added on top of the loaded
model. Where ``clear_refs`` is unavailable ``VmHWM`` is the peak since the process
started, which can only overstate the peak (the model's loading counts too). On CUDA
the peak is ``torch.cuda.max_memory_allocated - torch.cuda.memory_allocated`` before, the
counter reset after the warm-up.

Time is the CPU time of the process (``time.process_time``) for the fastest of
``--repeats`` passes, with torch on ``--threads`` threads (default 1): on a
machine shared with other work, CPU time is what the pass itself costs, while
wall-clock time depends on what else runs (the wall time is printed as well). On an
accelerator both are the wall time, synchronised.
Ratios are influence over forward; "growth" is how a figure grows from one
length to the next.
"""

from __future__ import annotations

import argparse
import json
import time

from _memory import in_use_mib, measure_in_worker, peak_method, peak_mib, reset_device_peak
from _model import add_model_args, clock, describe, load_bridge

DEFAULT_LENGTHS = (512, 1024, 2048, 4096)
SPAN = (1, 33)  # the span followed: 32 tokens near the start


def worker(mode: str, length: int, args: argparse.Namespace) -> dict:
    """Run in a fresh process: load, warm up, measure one mode at one length."""
    import torch

    import attnlens as al

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = load_bridge(args.shape, args.device, args.dtype)
    vocab = model.cfg.d_vocab
    tokens = torch.randint(100, vocab - 100, (1, length)).to(args.device)
    n_layers = model.cfg.n_layers

    def run(toks: torch.Tensor) -> None:
        if mode == "forward":
            with torch.no_grad():
                model(toks)
        elif mode == "influence":
            al.trace_influence(model, toks, [SPAN if toks.shape[1] > SPAN[1] else (0, 1)],
                               methods=("influence", "rollout"), progress=False)
        elif mode == "naive":
            names = set()
            for layer in range(n_layers):
                names.update({f"blocks.{layer}.hook_resid_pre", f"blocks.{layer}.hook_attn_out",
                              f"blocks.{layer}.attn.hook_pattern"})
            with torch.no_grad():
                _, cache = model.run_with_cache(toks, names_filter=lambda name: name in names)
            del cache
        else:
            raise SystemExit(f"unknown mode {mode}")

    device = args.device
    run(tokens)  # warm-up at full length: one-time allocations are not the pass's cost
    exact = reset_device_peak(device)
    before = in_use_mib(device) or 0
    timer = clock(device)
    seconds, wall = [], []
    for _ in range(args.repeats):
        start, start_time = time.perf_counter(), timer()
        run(tokens)
        seconds.append(timer() - start_time)
        wall.append(time.perf_counter() - start)
    return {"mode": mode, "length": length, "seconds": min(seconds), "wall": min(wall),
            "peak_mib": (peak_mib(device) or 0) - before, "method": peak_method(device, exact)}


def measure(mode: str, length: int, args: argparse.Namespace) -> dict:
    return measure_in_worker(__file__, mode, length, args.threads,
                             ["--repeats", str(args.repeats), "--device", args.device, "--dtype", args.dtype,
                              "--shape", args.shape])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=list(DEFAULT_LENGTHS))
    parser.add_argument("--repeats", type=int, default=2, help="timed passes per measurement (the fastest counts)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in each measurement")
    parser.add_argument("--naive", action="store_true", help="also measure caching every layer (memory-hungry)")
    add_model_args(parser)
    parser.add_argument("--worker", nargs=2, metavar=("MODE", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args)))
        return

    from tqdm import tqdm

    modes = ["forward", "influence"] + (["naive"] if args.naive else [])
    jobs = [(length, mode) for length in args.lengths for mode in modes]
    results: dict[tuple[int, str], dict] = {}
    for length, mode in tqdm(jobs, desc="measuring", unit="run"):
        results[(length, mode)] = measure(mode, length, args)

    method = {r["method"] for r in results.values()}
    clock_name = "CPU seconds" if args.device == "cpu" else "wall seconds, synchronised"
    print(f"\nInfluence + rollout (one pass) vs a plain forward, {describe(args.shape, args.device, args.dtype)}, "
          f"{args.threads} thread(s) (peak memory: {', '.join(sorted(method))}; "
          f"time: {clock_name}, fastest of {args.repeats}; wall seconds in brackets)")
    header = f"{'tokens':>6} | {'forward s':>15} {'influence s':>15} {'time x':>7} | " \
             f"{'forward MiB':>11} {'influence MiB':>13} {'memory x':>8}"
    if args.naive:
        header += f" | {'naive MiB':>9} {'naive x':>7}"
    print(header)
    print("-" * len(header))
    for length in args.lengths:
        f, i = results[(length, "forward")], results[(length, "influence")]
        line = (f"{length:>6} | {f['seconds']:6.2f} [{f['wall']:6.2f}] {i['seconds']:6.2f} [{i['wall']:6.2f}] "
                f"{i['seconds'] / f['seconds']:7.2f} | "
                f"{f['peak_mib']:11.0f} {i['peak_mib']:13.0f} {i['peak_mib'] / max(f['peak_mib'], 1e-9):8.2f}")
        if args.naive:
            n = results[(length, "naive")]
            line += f" | {n['peak_mib']:9.0f} {n['peak_mib'] / max(f['peak_mib'], 1e-9):7.2f}"
        print(line)
    if len(args.lengths) > 1:
        print("\ngrowth from one length to the next (x tokens -> x time, x memory)")
        for a, b in zip(args.lengths, args.lengths[1:]):
            parts = []
            for mode in modes:
                ra, rb = results[(a, mode)], results[(b, mode)]
                parts.append(f"{mode}: x{rb['seconds'] / ra['seconds']:.2f} time, "
                             f"x{rb['peak_mib'] / max(ra['peak_mib'], 1e-9):.2f} memory")
            print(f"  {a:>5} -> {b:<5} (x{b / a:.1f} tokens): " + "; ".join(parts))


if __name__ == "__main__":
    main()
