"""GUIDE-steered generation vs plain Hugging Face ``generate`` (the embedded model, or ``--shape``).

Greedy decoding of a fixed number of new tokens (48 by default, end-of-sequence
ignored so every run does the same work) from the same prompt tokens:

* plain HF: ``LlamaForCausalLM.generate`` with sdpa attention, no hooks;
* attnlens, GUIDE: ``generate_batch`` with a GUIDE plan on every layer (what the
  pipeline, the CLI and PASTA run: the wrapped model run directly, the bias
  added by hooks on the bridge's ``hook_attn_scores`` points; see ``attnlens.runtime.direct``);
* bridge, unsteered: ``TransformerBridge.generate``, no plan;
* bridge, GUIDE: ``TransformerBridge.generate`` inside ``attnlens.guide``, every
  call going through the bridge's wrapper modules.

The four are timed in rounds (order rotated each round) in one process, and the
script prints median times and the ratios against plain HF. Goal: GUIDE/HF <= 1.25
(attnlens' generation); the bridge rows show what the wrapper modules cost.

Clock: by default the process's CPU time with one torch thread, which other
processes on a shared machine barely disturb; ``--clock wall --threads N``
measures wall time instead (meaningful only on an otherwise idle machine). On an
accelerator it is always the wall time, synchronised.

``--shape llama-1b`` or ``llama-8b`` builds both models (the bridge and the plain
Hugging Face one) as the same randomly initialised LLaMA at that shape; the prompt is
the same text through the embedded tokenizer, whose ids every shape's vocabulary holds.

    python benchmarks/bench_generate.py [--new-tokens 48] [--rounds 7] [--clock cpu|wall] [--threads 1]
    python benchmarks/bench_generate.py --shape llama-8b --device cuda --dtype bfloat16 --new-tokens 128
"""

from __future__ import annotations

import argparse
import statistics

from _model import add_model_args, clock, describe, load_bridge, load_hf

PROMPT = [{"role": "user", "content": "<!!-> Rewrite in French: <-!!> Paris is the most visited city in the world. "
           "It is known for the Eiffel Tower, its museums and its cafés."}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    add_model_args(parser)
    args = parser.parse_args()

    import torch

    import attnlens as al
    from attnlens.runtime.generate import generate_batch
    from attnlens.steering.guide import guide_plan_for

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    timer = clock(args.device, wall=args.clock == "wall")

    bridge = load_bridge(args.shape, args.device, args.dtype)
    hf = load_hf(args.shape, args.device, args.dtype)
    tokenizer = bridge.tokenizer
    prompt = al.prepare(tokenizer, PROMPT, delta_mid=1.0)
    tokens = torch.tensor([prompt.input_ids], device=args.device)
    (span,) = prompt.spans
    n = args.new_tokens

    def run_hf() -> torch.Tensor:
        return hf.generate(tokens, attention_mask=torch.ones_like(tokens), max_new_tokens=n, min_new_tokens=n,
                           do_sample=False, pad_token_id=tokenizer.eos_token_id)

    def run_bridge() -> torch.Tensor:
        return bridge.generate(tokens, max_new_tokens=n, do_sample=False, stop_at_eos=False, verbose=False)

    def run_bridge_guide() -> torch.Tensor:
        with al.guide(bridge, [(span.start, span.end)], delta=span.delta):
            return run_bridge()

    plan = guide_plan_for(bridge, prompt)

    def run_attnlens() -> torch.Tensor:
        (new,) = generate_batch(bridge, [prompt.input_ids], [plan], max_new_tokens=n, stop_at_eos=False, direct=True)
        return torch.cat([tokens, torch.tensor([new], device=tokens.device)], dim=1)

    runs = {"plain HF (sdpa)": run_hf, "attnlens, GUIDE": run_attnlens, "bridge, unsteered": run_bridge,
            "bridge, GUIDE": run_bridge_guide}
    times: dict[str, list[float]] = {name: [] for name in runs}
    with torch.no_grad():
        same = torch.equal(run_attnlens(), run_bridge_guide())  # also the warm-up
        for fn in runs.values():
            fn()
        names = list(runs)
        for r in range(args.rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                t0 = timer()
                out = runs[name]()
                times[name].append(timer() - t0)
                assert out.shape[1] == tokens.shape[1] + n, (name, out.shape)

    base = statistics.median(times["plain HF (sdpa)"])
    kind = args.clock if torch.device(args.device).type == "cpu" else "wall (synchronised)"
    print(f"{describe(args.shape, args.device, args.dtype)}, prompt {tokens.shape[1]} tokens, {n} new tokens, "
          f"greedy, {args.rounds} rounds, {torch.get_num_threads()} thread(s), {kind} time")
    med = {name: statistics.median(ts) for name, ts in times.items()}
    for name, m in med.items():
        print(f"  {name:<18} median {m:6.3f} s  ({n / m:6.1f} tok/s)  ratio vs plain HF {m / base:5.2f}")
    guide_ratio = med["attnlens, GUIDE"] / base
    print(f"same tokens from attnlens and bridge GUIDE generation: {same}")
    print(f"GUIDE-steered (attnlens) / plain HF = {guide_ratio:.2f} "
          f"(goal <= 1.25: {'met' if guide_ratio <= 1.25 else 'missed'})")
    print(f"GUIDE-steered through bridge.generate / plain HF = {med['bridge, GUIDE'] / base:.2f}")
    print(f"unsteered bridge / plain HF = {med['bridge, unsteered'] / base:.2f}")
    print(f"GUIDE / unsteered, both through the bridge = {med['bridge, GUIDE'] / med['bridge, unsteered']:.2f}")


if __name__ == "__main__":
    main()
