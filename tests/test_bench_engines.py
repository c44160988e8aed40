"""benchmarks/bench_engines.py at the tiny shape, with the foreign engines (vLLM, llama.cpp) absent.

The script runs once as a subprocess (CPU, one thread, two prompts, two new tokens): its table
has a row per attnlens engine and batch size with a positive finite ratio to plain
transformers (the reference when vLLM is absent), and each foreign engine is skipped with
its reason. No timing is asserted.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks" / "bench_engines.py"
WORKER = REPO / "benchmarks" / "_engine_worker.py"
ENGINES = ["plain transformers", "attnlens, unsteered", "attnlens, GUIDE", "attnlens server, GUIDE"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                           "MASTER_PORT")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    return env


@pytest.fixture(scope="module")
def table() -> str:
    done = subprocess.run(
        [sys.executable, str(BENCH), "--shape", "tiny", "--prompts", "3", "--new-tokens", "2", "--batch-sizes", "1,2",
         "--threads", "1", "--vllm-python", "/nonexistent/bin/python", "--llamacpp-python", sys.executable],
        env=_env(), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.parametrize("size", [1, 2])
@pytest.mark.parametrize("engine", ENGINES)
def test_every_engine_has_a_row_with_a_ratio(table, engine, size):
    row = re.search(rf"^  {re.escape(engine)} +{size} +(\d+) +(\S+) +(\S+) +(\S+)x +(\S+)$", table, re.MULTILINE)
    assert row, table
    count, seconds, rate, ratio = int(row.group(1)), float(row.group(2)), float(row.group(3)), float(row.group(4))
    assert 0 < count <= 3 * 2, table  # at most 3 prompts x 2 new tokens (the server stops at an end token)
    for value in (seconds, rate, ratio):
        assert math.isfinite(value) and value > 0, table
    if engine != "attnlens server, GUIDE":
        assert count == 6, table  # the in-process engines make exactly the fixed number of new tokens
        assert row.group(5) == "3/3", table  # greedy: the same tokens as the reference at batch 1


def test_the_reference_is_plain_transformers_without_vllm(table):
    assert "vs plain transformers" in table, table
    for size in (1, 2):
        assert re.search(rf"^  plain transformers +{size} +.* 1\.00x", table, re.MULTILINE), table


def test_foreign_engines_are_skipped_with_a_reason(table):
    assert "vLLM: skipped (/nonexistent/bin/python does not exist)" in table, table
    # the project's own interpreter: the tiny shape is refused before the engine is looked for
    assert "llama.cpp: skipped (only the embedded model on the CPU)" in table, table
    assert not re.search(r"^  (vLLM|llama\.cpp) +\d", table, re.MULTILINE), table


def test_the_header_names_the_settings(table):
    assert "3 chat prompts" in table and "2 new tokens" in table and "1 thread(s) per engine" in table, table


def test_the_worker_refuses_an_unknown_engine(tmp_path):
    job, out = tmp_path / "job.json", tmp_path / "out.json"
    job.write_text(json.dumps({"engine": "nope"}))
    done = subprocess.run([sys.executable, str(WORKER), str(job), str(out)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode != 0 and not out.exists()
    assert "unknown engine 'nope'" in done.stderr, done.stderr
