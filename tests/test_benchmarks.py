"""The model benchmarks: each takes ``--device``, ``--dtype`` and ``--shape``, and runs at ``--shape tiny``.

Every benchmark runs once as a subprocess on the tiny random LLaMA (CPU, one thread) at the
smallest sizes its flags allow, and the ratio it prints is read back as a positive finite number.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
ROW = r"[ \t]+"

# benchmark: (smallest arguments, a regular expression whose group is a printed ratio)
RUNS = {
    "bench_generate.py": (["--new-tokens", "2", "--rounds", "1", "--threads", "1"],
                          r"GUIDE-steered \(attnlens\) / plain HF = (\S+)"),
    "bench_pasta.py": (["--new-tokens", "2", "--rounds", "1", "--threads", "1", "--examples", "1"],
                       r"ratio attnlens / pastalib: (\S+)"),
    "bench_batch.py": (["--prompts", "2", "--new-tokens", "2", "--rounds", "1"],
                       r"throughput ratio \(batch / one by one\): (\S+)x"),
    "bench_heads.py": (["--texts", "2", "--rounds", "1"], r"time attnlens / cache all: (\S+)"),
    "bench_influence.py": (["--lengths", "40", "--repeats", "1", "--threads", "1"],
                           r"^ +40 \|[^|\n]*\]" + ROW + r"(\S+) \|"),
    "bench_long.py": (["--lengths", "40", "--modes", "guide", "--gen-length", "0", "--threads", "1"],
                      r"^ +40 guide" + ROW + r"\S+" + ROW + r"(\S+)"),
    "bench_sweep.py": (["--prompts", "2", "--new-tokens", "2", "--batch-size", "1", "--threads", "1"],
                       r"items per second\): end to end (\S+), sweep"),
    "bench_methods.py": (["--length", "40", "--new-tokens", "2", "--rounds", "1"], r"^spa +\S+ +(\S+)"),
    "bench_attribution.py": (["--length", "12", "--faith-length", "6", "--seeds", "1",
                              "--methods", "grad_x_input"], r"^grad_x_input +\S+ s CPU +\S+ s wall +(\S+) x forward"),
    "bench_serve.py": (["--requests", "2", "--max-tokens", "2", "--clients", "1"],
                       r"server \(continuous\), 1 client\(s\) +\S+ +\S+ +\S+ +(\S+)x"),
    "bench_compare.py": (["--limit", "4", "--new-tokens", "2", "--methods", "guide", "spotlight"],
                         r"speed-up \(one search at a time / one stream\): (\S+)x"),
    "bench_engines.py": (["--prompts", "2", "--new-tokens", "2", "--batch-sizes", "1", "--no-server"],
                         r"^  attnlens, GUIDE +1 +\S+ +\S+ +\S+ +(\S+)x"),
    "bench_decode_rate.py": (["--batch-sizes", "2", "--prompt", "8", "--new-tokens", "2"],
                             r"^ +2 +\S+ +\S+ +\S+ +(\S+)x$"),
}


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                           "MASTER_PORT")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(BENCH / script), *args], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=300)


def _model_module():
    spec = importlib.util.spec_from_file_location("_model", BENCH / "_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_model_benchmark_is_covered():
    assert set(RUNS) == {p.name for p in BENCH.glob("bench_*.py")} - {"bench_tags.py"}  # tags: no model


@pytest.mark.parametrize("script", sorted(RUNS))
def test_help_lists_the_model_flags(script):
    done = _run(script, "--help")
    assert done.returncode == 0, done.stderr
    for flag in ("--device", "--dtype", "--shape", "bfloat16", "llama-8b", "tiny"):
        assert flag in done.stdout, (flag, done.stdout)


@pytest.mark.parametrize("script", sorted(RUNS))
def test_runs_at_the_tiny_shape(script):
    args, pattern = RUNS[script]
    done = _run(script, "--shape", "tiny", "--device", "cpu", *args)
    assert done.returncode == 0, done.stderr[-3000:]
    match = re.search(pattern, done.stdout, re.MULTILINE)
    assert match, done.stdout
    ratio = float(match.group(1))
    assert math.isfinite(ratio) and ratio > 0, done.stdout


def test_tiny_bridge_in_bfloat16():
    model = _model_module()
    parser = argparse.ArgumentParser()
    model.add_model_args(parser)
    args = parser.parse_args(["--shape", "tiny", "--dtype", "bfloat16"])
    assert (args.device, args.dtype, args.shape) == ("cpu", "bfloat16", "tiny")
    bridge = model.load_bridge(args.shape, args.device, args.dtype)
    cfg = bridge.cfg
    assert (cfg.n_layers, cfg.n_heads, cfg.n_key_value_heads, cfg.d_model) == (2, 4, 2, 64)
    assert cfg.d_vocab == len(bridge.tokenizer)
    assert cfg.dtype == torch.bfloat16
    assert {p.dtype for p in bridge.parameters()} == {torch.bfloat16}
    assert {p.device.type for p in bridge.parameters()} == {"cpu"}
    # the plain Hugging Face model of the same shape has the same (seeded) weights, in sdpa
    hf = model.load_hf(args.shape, args.device, args.dtype)
    assert hf.config._attn_implementation == "sdpa"
    assert torch.equal(hf.lm_head.weight, bridge.original_model.lm_head.weight)


def test_clamp_heads_to_a_smaller_model():
    model = _model_module()
    heads = {"3": [1, 8], "5": [0, 4], "23": [8]}
    assert model.clamp_heads(heads, 30, 9) == heads
    assert model.clamp_heads(heads, 2, 4) == {"1": [0, 1, 3]}
    assert model.torch_dtype("float16") is torch.float16


def test_which_kernels_lists_the_fused_kernel_on_cpu():
    """benchmarks/which_kernels.py (the check docs/steering.md gives for a user's own device): on a CPU the
    fused runs call the CPU flash kernel, the reference path calls none, and the fused run needs no math kernel."""
    done = _run("which_kernels.py", "--shape", "tiny", "--length", "48")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = dict(re.findall(r"^(GUIDE, fused path|PASTA 8 heads, fused path|Influence of one span|"
                           r"GUIDE, reference path) +(.+)$", done.stdout, re.MULTILINE))
    assert set(rows) == {"GUIDE, fused path", "PASTA 8 heads, fused path", "Influence of one span",
                         "GUIDE, reference path"}, done.stdout
    for name in ("GUIDE, fused path", "PASTA 8 heads, fused path", "Influence of one span"):
        assert "aten::_scaled_dot_product_flash_attention_for_cpu x2" in rows[name], rows
        assert "math" not in rows[name], rows
    assert rows["GUIDE, reference path"] == "no sdpa call"
    assert re.search(r"^GUIDE, fused path, only FLASH_ATTENTION allowed: runs$", done.stdout, re.MULTILINE)
