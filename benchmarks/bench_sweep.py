"""Items per second of one sweep on 1 and on 2 workers (torchrun, gloo on CPU, nccl on GPUs).

The sweep is a batch of GUIDE-tagged pipeline prompts (``attnlens.api.pipeline.run_prompts``,
what ``attnlens batch`` runs): ``--prompts`` prompts, ``--batch-size`` per unit, greedy,
``--new-tokens`` new tokens each. Each configuration runs the same command from a fresh
output directory, launched with ``python -m torch.distributed.run --nproc-per-node W
--standalone``; every worker computes with ``--threads`` threads. Printed per configuration:

* end to end: wall time of the whole launch (process start, imports, model load, sweep, merge);
* sweep: from the first worker entering the sweep to the merged file being written, as rank 0
  sees it (after a barrier that waits for every worker's model load), and the merge alone;

then items per second for each and the 2-worker / 1-worker ratio. Both runs merge to the same
file (checked).

The model: ``--model DIR`` (a model directory), or ``--shape`` (every worker builds the embedded
model or the same seeded random LLaMA at that shape itself), by default a small random LLaMA
(4 layers, d_model 128) with the embedded tokenizer, saved to a temporary directory. It runs on
``--device`` in ``--dtype``; with ``--device cuda`` each worker takes ``cuda:LOCAL_RANK`` (nccl),
with ``cpu`` the workers join with gloo.

    python benchmarks/bench_sweep.py [--prompts 48] [--new-tokens 16] [--batch-size 4] [--threads 1]
        [--model DIR | --shape embedded|tiny|llama-1b|llama-8b] [--device cpu] [--dtype float32]
    python benchmarks/bench_sweep.py --shape llama-8b --device cuda --dtype bfloat16 --prompts 256 --batch-size 32
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _model import add_model_args, describe, load_bridge, torch_dtype

REPO = Path(__file__).resolve().parents[1]

SUBJECTS = ("bees", "rivers", "trains", "gardens", "winter", "music", "bread", "libraries", "mountains", "letters",
            "markets", "stars")


def make_prompts(n: int) -> list[dict]:
    return [{"id": f"q{i}", "prompt": f"<!!-> Answer in French. <-!!> Tell me something about "
                                      f"{SUBJECTS[i % len(SUBJECTS)]} number {i}."} for i in range(n)]


def make_model(directory: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from attnlens.runtime.models import load_embedded_tokenizer

    tokenizer = load_embedded_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id, tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(config).eval().save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def worker(args: argparse.Namespace) -> None:
    """One worker of the sweep (run by torchrun)."""
    import torch

    torch.set_num_threads(args.threads)
    from attnlens.api.pipeline import PayAttentionPipeline, run_prompts
    from attnlens.runtime import distributed
    from attnlens.runtime.models import load_model

    device = torch.device(args.device)
    if device.type == "cuda" and device.index is None:
        device = distributed.sweep_device()  # cuda:LOCAL_RANK
    if args.shape is not None:
        model = load_bridge(args.shape, device, args.dtype)
    else:
        model = load_model(args.model, device=device, dtype=torch_dtype(args.dtype))
    prompts = json.loads(Path(args.prompts_file).read_text())
    pipe = PayAttentionPipeline(model, batch_size=args.batch_size)
    merge_seconds = []
    merge = distributed.ShardedRows.merge

    def timed_merge(self, *a, **k):
        t = time.perf_counter()
        try:
            return merge(self, *a, **k)
        finally:
            merge_seconds.append(time.perf_counter() - t)

    distributed.ShardedRows.merge = timed_merge
    with distributed.worker_group("gloo" if device.type == "cpu" else None) as workers:
        workers.barrier()  # every model is loaded
        start = time.perf_counter()
        run_prompts(pipe, prompts, Path(args.out) / "results.jsonl", max_new_tokens=args.new_tokens)
        seconds = time.perf_counter() - start
    if workers.is_main:
        (Path(args.out) / "timing.json").write_text(json.dumps({"sweep": seconds, "merge": merge_seconds[-1]}))


def launch(n_workers: int, model: list[str], prompts_file: Path, out: Path, args: argparse.Namespace) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.update(OMP_NUM_THREADS=str(args.threads), TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(n_workers), "--standalone",
               __file__, "--worker", *model, "--prompts-file", str(prompts_file), "--out", str(out),
               "--threads", str(args.threads), "--batch-size", str(args.batch_size),
               "--new-tokens", str(args.new_tokens), "--device", args.device, "--dtype", args.dtype]
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    total = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{n_workers} worker(s) failed:\n{done.stderr[-3000:]}")
    timing = json.loads((out / "timing.json").read_text())
    return {"total": total, **timing}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="threads per worker")
    parser.add_argument("--model", default=None, help="a model directory (default: a tiny random LLaMA)")
    add_model_args(parser, shape=None, shape_help="instead of --model: the embedded model, or a random LLaMA at "
                   "that shape, built in every worker")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--prompts-file", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.model is not None and args.shape is not None:
        parser.error("give --model or --shape, not both")
    if args.worker:
        worker(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.shape is not None:
            model = ["--shape", args.shape]
        else:
            model = ["--model", args.model or str(root / "model")]
            if args.model is None:
                make_model(root / "model")
        prompts_file = root / "prompts.json"
        prompts_file.write_text(json.dumps(make_prompts(args.prompts)))
        results = {}
        for n in (1, 2):
            results[n] = launch(n, model, prompts_file, root / f"w{n}", args)
        same = (root / "w1" / "results.jsonl").read_bytes() == (root / "w2" / "results.jsonl").read_bytes()
    n = args.prompts
    name = (describe(args.shape, args.device, args.dtype) if args.shape else
            f"{args.model or 'random LLaMA, 4 layers, d_model 128'}, {args.device}, {args.dtype}")
    print(f"sweep: {n} pipeline prompts, {args.new_tokens} new tokens each, {args.batch_size} per unit, "
          f"{args.threads} thread(s) per worker; {name}; merged files identical: {same}")
    print(f"{'workers':>7}  {'end to end':>10}  {'items/s':>8}  {'sweep':>8}  {'items/s':>8}  {'merge':>8}")
    for w, r in results.items():
        print(f"{w:>7}  {r['total']:>9.2f}s  {n / r['total']:>8.2f}  {r['sweep']:>7.2f}s  {n / r['sweep']:>8.2f}  "
              f"{r['merge'] * 1000:>6.1f}ms")
    print(f"ratio (2 workers / 1 worker, items per second): end to end "
          f"{results[1]['total'] / results[2]['total']:.2f}, sweep {results[1]['sweep'] / results[2]['sweep']:.2f}")


if __name__ == "__main__":
    main()
