"""Each steering method against plain generation on the same long prompt, in one run.

Greedy decoding of ``--new-tokens`` (32) new tokens, end-of-sequence ignored,
from one prompt of ``--length`` (2048) tokens whose first sentence is tagged;
every method through ``generate_batch`` (the path the pipeline runs):
``none`` (no steering), ``guide`` (delta 1), ``instaboost`` (alpha 5),
``spotlight`` (target 0.2), ``spa`` (omega 1.5). Each is timed in rounds (order
rotated each round); the script prints the median time and the peak memory
growth of each, and the ratios to ``none``. Goals: InstABoost <= 1.1x,
SpotLight <= 1.3x, SPA <= 2.2x (two rows per step by design).

Clock and memory: by default the process's CPU time with one torch thread; the
peak is the resident set's high-water mark (reset before each method where the
kernel allows it) on a CPU, torch's allocator peak on an accelerator.

    python benchmarks/bench_methods.py [--length 2048] [--new-tokens 32] [--rounds 3] [--methods ...]
"""

from __future__ import annotations

import argparse
import statistics

from _memory import reset_peak, status_kib
from _model import add_model_args, clock, describe, load_bridge

METHODS = {"none": {}, "guide": {"guide": {"delta_mid": 1.0}}, "instaboost": {"instaboost": {"alpha": 5.0}},
           "spotlight": {"spotlight": {"target": 0.2}}, "spa": {"spa": {"omega": 1.5}}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    add_model_args(parser)
    args = parser.parse_args()

    import torch

    import attnlens as al
    from attnlens.api import chain
    from attnlens.runtime.generate import generate_batch

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    timer = clock(args.device, wall=args.clock == "wall")
    model = load_bridge(args.shape, args.device, args.dtype)
    filler = " The river runs past the old mill and the bridge near the market square."
    text = "<!!-> Answer in French. <-!!>" + filler * (args.length // 12 + 1)
    prompt = al.prepare(model.tokenizer, text)
    ids = list(prompt.input_ids)[: args.length]
    prompt = al.prepare(model.tokenizer, model.tokenizer.decode(ids[1:]).replace(
        "Answer in French.", "<!!-> Answer in French. <-!!>", 1))
    rows = [list(prompt.input_ids)]
    plans = {m: chain.plans_for(model, [prompt], steer=s) for m, s in METHODS.items() if m in args.methods}
    cuda = torch.device(args.device).type == "cuda"

    def run(method: str) -> None:
        generate_batch(model, rows, plans[method], max_new_tokens=args.new_tokens, stop_at_eos=False)

    times: dict[str, list[float]] = {m: [] for m in plans}
    peaks: dict[str, float] = {}
    names = list(plans)
    for m in names:  # warm up, and the memory peak of each
        if cuda:
            torch.cuda.reset_peak_memory_stats(args.device)
            base = torch.cuda.memory_allocated(args.device)
        else:
            reset_peak()
            base = status_kib("VmRSS") or 0
        run(m)
        peak = torch.cuda.max_memory_allocated(args.device) if cuda else (status_kib("VmHWM") or 0)
        peaks[m] = max(peak - base, 1) / (2**20 if cuda else 2**10)
    for r in range(args.rounds):
        for m in names[r % len(names):] + names[: r % len(names)]:
            start = timer()
            run(m)
            times[m].append(timer() - start)
    print(f"{describe(args.shape, args.device, args.dtype)}; prompt {len(rows[0])} tokens, {args.new_tokens} new, "
          f"{args.rounds} rounds, {args.clock} clock")
    base_t = statistics.median(times["none"]) if "none" in times else None
    base_m = peaks.get("none")
    print(f"{'method':12s} {'time s':>9s} {'x none':>7s} {'peak MiB':>9s} {'x none':>7s}")
    for m in names:
        t = statistics.median(times[m])
        rt = f"{t / base_t:7.2f}" if base_t else "      -"
        rm = f"{peaks[m] / base_m:7.2f}" if base_m else "      -"
        print(f"{m:12s} {t:9.3f} {rt} {peaks[m]:9.1f} {rm}")


if __name__ == "__main__":
    main()
