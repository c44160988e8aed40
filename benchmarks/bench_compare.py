"""Wall time of one ``attnlens compare STUDY``: each search generating in turn vs one stream of rows.

Both runs compare the same methods on the same study's items with the same settings, greedy, each
into a fresh output directory, on one loaded model (loading is not timed):

* one search at a time (``compare_methods(..., stream=False)``): every method's strength search
  generates its development part at each strength, then its held-out part, batch by batch, each
  batch to its longest row, and SPA's loop keeping its ended rows to the last step
  (``spa_method.DROP_ENDED_ROWS = False``), as ``attnlens compare`` did before the stream;
* one stream (the default): every output the searches need is scheduled as one stream of rows
  (unsteered rows shared; the strengths of a static bias in one continuous batch, each row its own
  plan, a row leaving at its end and the next joining; SpotLight in a continuous batch per strength;
  SPA in batches per strength, dropping ended rows), then the held-out part at each chosen strength
  as a second stream.

The benchmark checks that both give the same outputs (text by text), the same saved scores and the
same table, and prints the wall times and their ratio. PASTA uses the shipped heads of the
embedded model (clamped to a smaller shape's last layer and head).

``--also-dtype bfloat16`` adds a third run: the stream with the model loaded in that dtype
(``attnlens compare --dtype bfloat16``), timed against the first run, with how many of its outputs
equal the ``--dtype`` stream's and whether it chooses the same strengths (a lower precision changes
the numbers, so greedy outputs can differ: this run is a different setting, reported as such).

    python benchmarks/bench_compare.py [--study counterfact] [--limit 8] [--new-tokens 8]
        [--methods guide instaboost spotlight spa pasta] [--threads 1]
        [--shape embedded|tiny|llama-1b|llama-8b] [--device cpu] [--dtype float32] [--also-dtype bfloat16]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from _model import DTYPES, add_model_args, clamp_heads, describe, load_bridge, synchronize


def _saved_outputs(directory: Path) -> dict[str, str]:
    """A comparison's generated texts by their key, read back from its ``outputs.jsonl``."""
    from attnlens.core.resumable import RowFile

    return {row["key"]: row["text"] for row in RowFile(directory / "outputs.jsonl").read()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", default="counterfact", help="the study compared on (default: counterfact)")
    parser.add_argument("--limit", type=int, default=8, help="items (half development, half held out; default 8)")
    parser.add_argument("--new-tokens", type=int, default=8, help="new tokens per output (default 8)")
    parser.add_argument("--methods", nargs="+", default=["guide", "instaboost", "spotlight", "spa", "pasta"],
                        help="the methods compared (default: all five)")
    parser.add_argument("--batch-size", type=int, default=None, help="rows per batch of the stream (default: "
                        "compare's own)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--also-dtype", default=None, choices=DTYPES,
                        help="also time the stream with the model in this dtype (e.g. bfloat16)")
    add_model_args(parser)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from attnlens.experiments import CONFIGS
    from attnlens.experiments import tune
    from attnlens.experiments.compare import compare_methods
    from attnlens.experiments.schedule import output_key
    from attnlens.experiments.sources import data_file
    from attnlens.prompts.prompt import Prompt

    model = load_bridge(args.shape, args.device, args.dtype)
    heads_file = str(data_file("pasta_heads_smollm2.json"))
    root = Path(tempfile.mkdtemp(prefix="bench_compare_"))
    if args.shape != "embedded":  # the shipped heads, within the smaller model
        heads = clamp_heads(json.loads(Path(heads_file).read_text()), model.cfg.n_layers, model.cfg.n_heads)
        heads_file = str(root / "heads.json")
        Path(heads_file).write_text(json.dumps(heads))

    # every output the one-search-at-a-time path generates, by the stream's key
    seen: dict[str, str] = {}
    real = tune._outputs

    def recording(model, prompts, steer, *, max_new_tokens, chat, cache=None):
        texts = real(model, prompts, steer, max_new_tokens=max_new_tokens, chat=chat, cache=cache)
        for prompt, text in zip(prompts, texts):
            if isinstance(prompt, Prompt):
                seen[output_key(prompt, steer, max_new_tokens)] = text
        return texts

    def run(name: str, stream: bool, model=model):
        out = root / name
        config = CONFIGS[args.study](out=str(out), limit=args.limit, max_new_tokens=args.new_tokens, plots=False,
                                     influence=False, pasta_heads=heads_file)
        synchronize(args.device)
        start = time.perf_counter()
        table = compare_methods(args.study, config, args.methods, model=model, out=out, stream=stream,
                                batch_size=args.batch_size)
        synchronize(args.device)
        return table, time.perf_counter() - start, out

    print(f"attnlens compare {args.study}: {describe(args.shape, args.device, args.dtype)}, {args.threads} "
          f"thread(s), {args.limit} items, {args.new_tokens} new tokens, methods {' '.join(args.methods)}")
    from attnlens.steering import spa_method

    tune._outputs = recording
    spa_method.DROP_ENDED_ROWS = False
    try:
        old, old_s, old_dir = run("searches", stream=False)
    finally:
        tune._outputs = real
        spa_method.DROP_ENDED_ROWS = True
    new, new_s, new_dir = run("stream", stream=True)

    streamed = _saved_outputs(new_dir)
    shared = set(seen) & set(streamed)
    differ = [k for k in shared if seen[k] != streamed[k]]
    missing = set(seen) - set(streamed)
    assert not missing, f"{len(missing)} outputs of the old path were not generated by the stream"
    assert not differ, f"{len(differ)} of {len(shared)} outputs differ between the two paths"
    for method in args.methods:
        a = json.loads((old_dir / f"tune-{method}.json").read_text())
        b = json.loads((new_dir / f"tune-{method}.json").read_text())
        assert a["trials"] == b["trials"] and a["heldout_scores"] == b["heldout_scores"], method
    assert old.rows == new.rows and old.unsteered == new.unsteered, "the tables differ"
    print(f"outputs: {len(shared)} compared, all the same; saved scores and tables the same")
    print(f"one search at a time: {old_s:8.2f} s")
    print(f"one stream of rows:   {new_s:8.2f} s")
    print(f"speed-up (one search at a time / one stream): {old_s / new_s:.2f}x")
    if args.also_dtype:
        other_model = load_bridge(args.shape, args.device, args.also_dtype)
        fast, fast_s, fast_dir = run("stream-" + args.also_dtype, stream=True, model=other_model)
        texts = _saved_outputs(fast_dir)
        same = sum(texts.get(k) == v for k, v in streamed.items())
        chosen = [(r.method, r.strength) for r in new.rows if r.setting == "tuned"]
        chosen_fast = [(r.method, r.strength) for r in fast.rows if r.setting == "tuned"]
        agree = sum(a == b for a, b in zip(chosen, chosen_fast))
        print(f"one stream, {args.also_dtype}: {fast_s:8.2f} s; {same} of {len(streamed)} outputs equal the "
              f"{args.dtype} stream's; the same tuned strength for {agree} of {len(chosen)} methods")
        print(f"speed-up (one search at a time, {args.dtype} / one stream, {args.also_dtype}): {old_s / fast_s:.2f}x")


if __name__ == "__main__":
    main()
