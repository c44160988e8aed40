"""PASTA: steered generation against pastalib, and the cost of profiling every head.

(a) Steered generation: the same Hugging Face weights (the embedded SmolLM2-135M-Instruct),
    the same prompt tokens, the same heads and alpha, greedy decoding of a fixed number of
    new tokens (end-of-sequence ignored so every run does the same work):

    * pastalib: ``pastalib.pasta.PASTA.apply_steering`` around ``LlamaForCausalLM.generate``
      (eager attention, the kind pastalib edits);
    * attnlens: ``attnlens.PASTA.generate`` on the TransformerBridge wrapping the same weights
      (the wrapped model run directly, the bias added by hooks on the bridge's
      ``hook_attn_scores`` points; see ``attnlens.runtime.direct``).

    Timed in rounds (order alternating) in one process; prints medians and the ratio
    attnlens / pastalib. Goal: <= 1.0.

(b) Profiling: ``profile_heads`` over every (layer, head) of the embedded model (30 x 9 = 270)
    on the built-in JSON-format task, 16 examples, default settings. Goal: <= 120 s on the
    2-core development machine. Also prints the cost in unsteered forward passes of the same
    examples, a figure that does not depend on how busy the machine is.

Both sides run with the same torch thread count (``--threads``, default: the faster of 1
and 2, measured at start).

``--shape llama-1b`` or ``llama-8b`` builds both sides' model as the same randomly initialised
LLaMA at that shape (on ``--device``, in ``--dtype``); the prompt and the profiling task are the
same texts through the embedded tokenizer, and the steered heads (chosen for the embedded model)
are clamped to the model's last layer and head. On an accelerator the times are synchronised
wall times.

    python benchmarks/bench_pasta.py [--part a|b|both] [--new-tokens 32] [--rounds 5] [--threads auto]
                                     [--examples 16] [--save-heads FILE --top-k 20]
    python benchmarks/bench_pasta.py --shape llama-8b --device cuda --dtype bfloat16 --part a
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from _model import add_model_args, clamp_heads, clock, describe, load_bridge, load_hf

TEXT = (
    "Mary is a doctor. She obtains her bachelor degree from UCSD. "
    "Answer the occupation of Mary and generate the answer as json format."
)
EMPHASIZE = "Answer the occupation of Mary and generate the answer as json format"
HEADS = {"3": [1, 8], "5": [0, 4], "12": [6, 7], "14": [5], "15": [2, 3], "17": [4], "19": [6], "23": [8]}


def _load() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:  # pragma: no cover
        return float("nan")


def bench_generation(bridge, args: argparse.Namespace) -> None:
    import torch
    from pastalib.pasta import PASTA as PastalibPASTA

    import attnlens as al
    from attnlens.runtime.generate import generate_batch

    new_tokens, rounds = args.new_tokens, args.rounds
    hf = load_hf(args.shape, args.device, args.dtype, attn_implementation="eager")  # the weights of the bridge
    tokenizer = bridge.tokenizer  # both sides get the same token ids
    heads = clamp_heads(HEADS, bridge.cfg.n_layers, bridge.cfg.n_heads)
    theirs = PastalibPASTA(hf, tokenizer, head_config=heads, alpha=0.01, scale_position="exclude")
    inputs, offsets = theirs.inputs_from_batch([TEXT], tokenizer=tokenizer, device=args.device)
    ours = al.PASTA(bridge, heads, alpha=0.01, scale_position="exclude")
    assert ours.locate(TEXT, EMPHASIZE).input_ids == inputs["input_ids"][0].tolist()

    def run_pastalib() -> str:
        with torch.no_grad(), theirs.apply_steering(hf, strings=[TEXT], substrings=[EMPHASIZE], model_input=inputs,
                                                    offsets_mapping=offsets) as steered:
            out = steered.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                   pad_token_id=tokenizer.eos_token_id)
        return tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)

    def run_attnlens() -> str:
        return ours.generate(TEXT, EMPHASIZE, max_new_tokens=new_tokens, stop_at_eos=False)

    def run_hf_plain() -> None:  # the same generation without steering, for the overheads
        with torch.no_grad():
            hf.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                        pad_token_id=tokenizer.eos_token_id)

    def run_attnlens_plain() -> None:
        generate_batch(bridge, [inputs["input_ids"][0].tolist()], max_new_tokens=new_tokens, stop_at_eos=False)

    def run_bridge_plain() -> None:
        with torch.no_grad():
            bridge.generate(inputs["input_ids"], max_new_tokens=new_tokens, do_sample=False, stop_at_eos=False,
                            verbose=False)

    same = run_pastalib() == run_attnlens()  # also the warm-up
    runs = [("pastalib", run_pastalib), ("attnlens", run_attnlens), ("hf", run_hf_plain),
            ("attnlens_plain", run_attnlens_plain), ("bridge", run_bridge_plain)]
    times: dict[str, list[float]] = {name: [] for name, _ in runs}
    timer = clock(args.device, wall=True)
    for r in range(rounds):
        for name, fn in runs if r % 2 == 0 else runs[::-1]:
            start = timer()
            fn()
            times[name].append(timer() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"(a) steered generation, {new_tokens} new tokens, {len(inputs['input_ids'][0])} prompt tokens, "
          f"{sum(len(h) for h in heads.values())} heads, alpha=0.01, {rounds} rounds")
    print(f"    pastalib (HF eager generate): {med['pastalib']:.3f} s")
    print(f"    attnlens (PASTA.generate):    {med['attnlens']:.3f} s")
    print(f"    same text: {same}")
    print(f"    ratio attnlens / pastalib: {med['attnlens'] / med['pastalib']:.2f}  (goal <= 1.0)")
    print(f"    unsteered: HF eager {med['hf']:.3f} s, attnlens {med['attnlens_plain']:.3f} s, "
          f"TransformerBridge.generate {med['bridge']:.3f} s (bridge / HF {med['bridge'] / med['hf']:.2f})")
    print(f"    cost of steering: pastalib {med['pastalib'] / med['hf']:.2f}x its unsteered HF run, "
          f"attnlens {med['attnlens'] / med['attnlens_plain']:.2f}x its unsteered run")


def bench_profile(bridge, args: argparse.Namespace) -> None:
    import torch

    import attnlens as al
    from attnlens.api.profile import json_format_examples, profile_heads

    n_examples, save, top_k = args.examples, args.save_heads, args.top_k
    examples = json_format_examples(n_examples)
    load_before = _load()
    result = profile_heads(bridge, examples, alpha=0.01, chat=True)
    load_after = _load()
    # the unit of work: one unsteered forward pass of each example (prompt + target)
    tok = bridge.tokenizer
    rows = []
    for ex in examples:
        located = al.PASTA(bridge, [0]).locate(ex.prompt, list(ex.emphasize), chat=True)
        rows.append(located.input_ids + tok(ex.target, add_special_tokens=False)["input_ids"])
    timer = clock(args.device, wall=True)
    with torch.no_grad():
        bridge(torch.tensor([rows[0]], device=args.device))
        start = timer()
        for row in rows:
            bridge(torch.tensor([row], device=args.device))
        one_pass = timer() - start
    n_heads = len(result)
    print(f"(b) profile_heads: {n_heads} heads ({bridge.cfg.n_layers} layers x {bridge.cfg.n_heads} heads) on "
          f"{result.n_examples} examples (JSON-format task, chat template, mean target log-prob)")
    goal = "  (goal <= 120 s)" if args.shape == "embedded" else ""
    print(f"    time: {result.seconds:.1f} s{goal}  = {result.seconds / one_pass:.0f} unsteered forward "
          f"passes of the {result.n_examples} examples ({one_pass:.2f} s each), vs {n_heads + 1} without sharing")
    print(f"    load average during the run: {load_before:.1f} -> {load_after:.1f} (2 cores)")
    print(f"    baseline {result.baseline:.3f}; best head {result.ranking()[0]}")
    if save:
        result.save(save, top_k)
        print(f"    wrote the top {top_k} heads to {save}")


def choose_threads(bridge, requested: str, device) -> int:
    """``auto``: the faster of 1 and 2 torch threads on a small forward pass, measured now.

    On a busy 2-core machine a second thread mostly waits at barriers for a core, and one
    thread can be many times faster; on an idle one two threads win.
    """
    import torch

    if requested != "auto":
        torch.set_num_threads(int(requested))
        return int(requested)
    x = torch.randint(0, 1000, (8, 32), device=device)
    best: tuple[float, int] | None = None
    with torch.no_grad():
        for n in (1, 2):
            torch.set_num_threads(n)
            bridge(x)
            start = time.perf_counter()
            for _ in range(3):
                bridge(x)
            elapsed = time.perf_counter() - start
            if best is None or elapsed < best[0]:
                best = (elapsed, n)
    assert best is not None
    torch.set_num_threads(best[1])
    return best[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["a", "b", "both"], default="both")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--examples", type=int, default=16)
    parser.add_argument("--save-heads", default=None, help="write the profile's top heads (pastalib JSON)")
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--threads", default="auto", help="torch threads: a number, or auto (the faster of 1 and 2)")
    add_model_args(parser)
    args = parser.parse_args()

    import torch

    torch.manual_seed(0)
    bridge = load_bridge(args.shape, args.device, args.dtype)
    threads = choose_threads(bridge, args.threads, args.device)
    print(f"{describe(args.shape, args.device, args.dtype)}; torch threads: {threads} ({args.threads}); "
          f"load average at start: {_load():.1f}")
    if args.part in ("a", "both"):
        bench_generation(bridge, args)
    if args.part in ("b", "both"):
        bench_profile(bridge, args)


if __name__ == "__main__":
    main()
