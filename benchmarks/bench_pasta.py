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

    python benchmarks/bench_pasta.py [--part a|b|both] [--new-tokens 32] [--rounds 5] [--threads auto]
                                     [--examples 16] [--save-heads FILE --top-k 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

import attnlens as al
from attnlens.runtime.generate import generate_batch
from attnlens.runtime.models import load_embedded_hf
from attnlens.api.profile import json_format_examples, profile_heads

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


def bench_generation(bridge, new_tokens: int, rounds: int) -> None:
    from pastalib.pasta import PASTA as PastalibPASTA

    hf, _ = load_embedded_hf(attn_implementation="eager")
    tokenizer = bridge.tokenizer  # both sides get the same token ids
    theirs = PastalibPASTA(hf, tokenizer, head_config=HEADS, alpha=0.01, scale_position="exclude")
    inputs, offsets = theirs.inputs_from_batch([TEXT], tokenizer=tokenizer)
    ours = al.PASTA(bridge, HEADS, alpha=0.01, scale_position="exclude")
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
    for r in range(rounds):
        for name, fn in runs if r % 2 == 0 else runs[::-1]:
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"(a) steered generation, {new_tokens} new tokens, {len(inputs['input_ids'][0])} prompt tokens, "
          f"{sum(len(h) for h in HEADS.values())} heads, alpha=0.01, {rounds} rounds")
    print(f"    pastalib (HF eager generate): {med['pastalib']:.3f} s")
    print(f"    attnlens (PASTA.generate):    {med['attnlens']:.3f} s")
    print(f"    same text: {same}")
    print(f"    ratio attnlens / pastalib: {med['attnlens'] / med['pastalib']:.2f}  (goal <= 1.0)")
    print(f"    unsteered: HF eager {med['hf']:.3f} s, attnlens {med['attnlens_plain']:.3f} s, "
          f"TransformerBridge.generate {med['bridge']:.3f} s (bridge / HF {med['bridge'] / med['hf']:.2f})")
    print(f"    cost of steering: pastalib {med['pastalib'] / med['hf']:.2f}x its unsteered HF run, "
          f"attnlens {med['attnlens'] / med['attnlens_plain']:.2f}x its unsteered run")


def bench_profile(bridge, n_examples: int, save: str | None, top_k: int) -> None:
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
    with torch.no_grad():
        bridge(torch.tensor([rows[0]]))
        start = time.perf_counter()
        for row in rows:
            bridge(torch.tensor([row]))
        one_pass = time.perf_counter() - start
    n_heads = len(result)
    print(f"(b) profile_heads: {n_heads} heads ({bridge.cfg.n_layers} layers x {bridge.cfg.n_heads} heads) on "
          f"{result.n_examples} examples (JSON-format task, chat template, mean target log-prob)")
    print(f"    time: {result.seconds:.1f} s  (goal <= 120 s)  = {result.seconds / one_pass:.0f} unsteered forward "
          f"passes of the {result.n_examples} examples ({one_pass:.2f} s each), vs {n_heads + 1} without sharing")
    print(f"    load average during the run: {load_before:.1f} -> {load_after:.1f} (2 cores)")
    print(f"    baseline {result.baseline:.3f}; best head {result.ranking()[0]}")
    if save:
        result.save(save, top_k)
        print(f"    wrote the top {top_k} heads to {save}")


def choose_threads(bridge, requested: str) -> int:
    """``auto``: the faster of 1 and 2 torch threads on a small forward pass, measured now.

    On a busy 2-core machine a second thread mostly waits at barriers for a core, and one
    thread can be many times faster; on an idle one two threads win.
    """
    if requested != "auto":
        torch.set_num_threads(int(requested))
        return int(requested)
    x = torch.randint(0, 1000, (8, 32))
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
    args = parser.parse_args()
    torch.manual_seed(0)
    bridge = al.load_model()
    threads = choose_threads(bridge, args.threads)
    print(f"torch threads: {threads} ({args.threads}); load average at start: {_load():.1f}")
    if args.part in ("a", "both"):
        bench_generation(bridge, args.new_tokens, args.rounds)
    if args.part in ("b", "both"):
        bench_profile(bridge, args.examples, args.save_heads, args.top_k)


if __name__ == "__main__":
    main()
