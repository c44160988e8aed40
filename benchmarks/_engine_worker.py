"""Greedy generation on a foreign engine (vLLM or llama.cpp), run in that engine's own Python environment.

``bench_engines.py`` starts this script with the interpreter of the engine's
virtual environment (``--vllm-python``, ``--llamacpp-python``): it imports only
the engine and the standard library, never attnlens. It reads a JSON job

    {"engine": "vllm" | "llamacpp", "model": PATH, "prompts": [[token ids], ...],
     "new_tokens": N, "batch_sizes": [1, 16], "threads": T, "dtype": "float32"}

from the file named by its first argument, generates exactly ``new_tokens``
tokens per prompt (greedy, the end-of-sequence token ignored) at every batch
size, after one warm-up, and writes

    {"engine": ..., "version": ..., "runs": {"1": {"seconds": S, "tokens": [[...], ...]}, ...},
     "notes": {"16": "..."}}

to the file named by its second argument. Wall time, prompts in the given order
and in consecutive groups of the batch size; the engine's start is not timed.
"""

from __future__ import annotations

import json
import os
import sys
import time


def _load_backend(path: str):
    """attnlens/runtime/vllm_backend.py loaded by path: its vLLM half imports nothing from attnlens."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("attnlens_vllm_backend", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_vllm(job: dict) -> dict:
    """Plain vLLM, or with ``"backend"`` (the path of vllm_backend.py) its key-bias model.

    With the backend, ``prompts`` are already encoded (token + profile * vocab) and
    ``profiles`` lists the table's rows after the zero row, ``shape`` its [layers, heads].
    """
    threads = int(job["threads"])
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    import torch
    import vllm
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    torch.set_num_threads(threads)
    prompts = job["prompts"]
    n = int(job["new_tokens"])
    longest = max(len(p) for p in prompts) + n
    kwargs = {}
    if job.get("backend"):
        backend = _load_backend(job["backend"])
        backend.register()
        profiles = backend.table()
        profiles.reset(*job["shape"])
        for i, matrix in enumerate(job["profiles"], start=1):
            if profiles.add(torch.tensor(matrix)) != i:
                raise SystemExit("_engine_worker.py: the bias profiles are not distinct")
        kwargs = dict(skip_tokenizer_init=True, hf_overrides={"architectures": [backend.ARCHITECTURE]})
    llm = LLM(model=job["model"], dtype=job.get("dtype", "float32"), max_model_len=max(256, longest),
              max_num_seqs=max(job["batch_sizes"]), enforce_eager=True, seed=0,
              enable_prefix_caching=False, disable_log_stats=True, **kwargs)
    params = SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True,  # no min_tokens: it masks the end token
                            detokenize=not job.get("backend"))

    def generate(group: list[list[int]]) -> list[list[int]]:
        outs = llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in group], params, use_tqdm=False)
        return [list(o.outputs[0].token_ids) for o in outs]

    generate(prompts[:1])  # warm-up
    runs = {}
    for size in job["batch_sizes"]:
        tokens: list[list[int]] = []
        start = time.perf_counter()
        for i in range(0, len(prompts), size):
            tokens.extend(generate(prompts[i : i + size]))
        runs[str(size)] = {"seconds": time.perf_counter() - start, "tokens": tokens}
    return {"engine": "vllm", "version": vllm.__version__, "runs": runs, "notes": {}}


def run_llamacpp(job: dict) -> dict:
    import llama_cpp
    from llama_cpp import Llama

    prompts = job["prompts"]
    n = int(job["new_tokens"])
    longest = max(len(p) for p in prompts) + n
    llm = Llama(model_path=job["model"], n_ctx=max(256, longest), n_threads=int(job["threads"]),
                n_threads_batch=int(job["threads"]), n_batch=512, seed=0, verbose=False)

    def one(ids: list[int]) -> list[int]:
        llm.reset()
        out: list[int] = []
        for token in llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
            out.append(int(token))  # the end-of-sequence token is not a stop here: exactly n tokens
            if len(out) == n:
                break
        return out

    one(prompts[0])  # warm-up
    runs, notes = {}, {}
    for size in job["batch_sizes"]:
        if size != 1:
            notes[str(size)] = "llama-cpp-python's generate decodes one sequence at a time"
            continue
        start = time.perf_counter()
        tokens = [one(ids) for ids in prompts]
        runs[str(size)] = {"seconds": time.perf_counter() - start, "tokens": tokens}
    return {"engine": "llamacpp", "version": llama_cpp.__version__, "runs": runs, "notes": notes}


def main() -> None:
    src, dst = sys.argv[1], sys.argv[2]
    with open(src, encoding="utf-8") as f:
        job = json.load(f)
    runners = {"vllm": run_vllm, "llamacpp": run_llamacpp}
    if job.get("engine") not in runners:
        sys.exit(f"_engine_worker.py: unknown engine {job.get('engine')!r} (one of {', '.join(runners)})")
    result = runners[job["engine"]](job)
    with open(dst, "w", encoding="utf-8") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
