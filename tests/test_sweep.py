"""Data-parallel sweeps (attnlens.runtime.distributed): shards, part files, the merge, and resuming.

The end-to-end tests launch two CPU worker processes with ``python -m
torch.distributed.run --standalone`` (gloo) on a tiny random model saved to a
temporary directory, and compare what they merge with a one-process run, file
for file and bit for bit: greedy generations and experiment rows, head-profiling
scores, AttentionData multiples and descriptions, and pipeline results. Every
process computes with one thread, so the comparison is of the same arithmetic.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from attnlens.core.errors import SweepError
from attnlens.runtime.distributed import ShardedRows, Workers, current_workers, run_sweep, worker_group

from conftest import make_tiny_hf

REPO = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("sweep_worker.py")
FILES = ("experiment/rows.jsonl", "experiment/summary.csv", "profile/profile.jsonl", "profile.json",
         "describe/descriptions.jsonl", "describe.json", "batch/results.jsonl")


def _worker_module():
    spec = importlib.util.spec_from_file_location("sweep_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                           "MASTER_PORT")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    return env


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
               str(WORKER), *args]
    return subprocess.run(command, env=_env(), cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, tokenizer):
    """A tiny model on disk and the one-process run of every sweep on it."""
    root = tmp_path_factory.mktemp("sweep")
    model_dir = root / "model"
    make_tiny_hf(tokenizer).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _worker_module().run(str(model_dir), str(root / "one"))
    finally:
        torch.set_num_threads(threads)
    return root


def _same_files(a: Path, b: Path, files=FILES) -> None:
    for name in files:
        assert (b / name).read_bytes() == (a / name).read_bytes(), name


def test_two_workers_merge_exactly_what_one_process_computes(sweep):
    done = _torchrun(str(sweep / "model"), str(sweep / "two"), "experiment", "profile", "describe", "batch")
    assert done.returncode == 0, done.stderr[-3000:]
    _same_files(sweep / "one", sweep / "two")
    assert not (sweep / "two" / "experiment" / "parts").exists()  # merged, then removed
    rows = [json.loads(line) for line in (sweep / "two" / "experiment" / "rows.jsonl").read_text().splitlines()]
    order = [["none", "guide@2", "emphatic"].index(r["condition"]) for r in rows]
    assert len(rows) == 9 and order == sorted(order)  # (condition, item, generation) order
    profile = json.loads((sweep / "two" / "profile.json").read_text())
    assert not any(v != v for layer in profile["per_example"] for head in layer for v in head)  # no NaN: all heads
    described = json.loads((sweep / "two" / "describe.json").read_text())
    assert len(described) == 3 * 4 and all(d["description"].startswith("head digest") for d in described)


def test_a_killed_worker_then_a_resumed_sweep_gives_the_one_process_rows(sweep):
    out = sweep / "killed"
    killed = _torchrun(str(sweep / "model"), str(out), "experiment", "--kill-rank", "1", "--kill-after", "1")
    assert killed.returncode != 0
    parts = out / "experiment" / "parts"
    assert not (out / "experiment" / "rows.jsonl").exists() and list(parts.glob("rows.rank*.jsonl"))
    written = sum(len(p.read_text().splitlines()) for p in parts.glob("*.jsonl"))
    assert 0 < written < 9  # stopped mid-run
    # resumed here in one process: the shard files of any number of workers count as done
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _worker_module().run(str(sweep / "model"), str(out), ("experiment",))
    finally:
        torch.set_num_threads(threads)
    _same_files(sweep / "one", out, ("experiment/rows.jsonl", "experiment/summary.csv"))
    assert not parts.exists()


# ----------------------------------------------------------------------------- units, shards, files


def test_workers_from_the_launcher_environment(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert current_workers() == Workers(0, 1, 0)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    workers = current_workers()
    assert (workers.rank, workers.world_size, workers.local_rank) == (3, 4, 1)
    assert workers.mine(list(range(10))) == [3, 7]
    assert workers.device == (torch.device("cuda", 1 % max(1, torch.cuda.device_count()))
                              if torch.cuda.is_available() else torch.device("cpu"))
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(SweepError, match="RANK=4"):
        current_workers()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(SweepError, match=r"\$RANK must be an integer"):
        current_workers()
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(SweepError, match="MASTER_ADDR is not set: launch with torchrun"):
        with worker_group():
            pass


def test_shards_cover_every_unit_once():
    units = list(range(23))
    for world in (1, 2, 3, 8):
        shards = [Workers(r, world).mine(units) for r in range(world)]
        assert sorted(u for s in shards for u in s) == units


def test_a_sweep_resumes_and_merges_parts_of_another_world_size(tmp_path):
    merged = tmp_path / "rows.jsonl"
    # an earlier run on 2 workers left unit 1 in rank 1's part (and a damaged last line in rank 0's)
    parts = tmp_path / "parts"
    parts.mkdir()
    (parts / "rows.rank1.jsonl").write_text(json.dumps({"unit": "u1", "part": 0, "value": 10}) + "\n")
    (parts / "rows.rank0.jsonl").write_text('{"unit": "u0", "par')
    calls = []

    def compute(u):
        calls.append(u)
        return [{"value": u * 10}, {"value": u * 10 + 1}]

    rows = run_sweep([0, 1, 2], lambda u: f"u{u}", compute, merged, workers=Workers())
    assert calls == [0, 2]
    assert [(r["unit"], r["part"], r["value"]) for r in rows] == [
        ("u0", 0, 0), ("u0", 1, 1), ("u1", 0, 10), ("u2", 0, 20), ("u2", 1, 21)]
    assert not parts.exists()
    assert run_sweep([0, 1, 2], lambda u: f"u{u}", compute, merged, workers=Workers()) == rows
    assert calls == [0, 2]


def test_own_part_file_is_repaired_before_appending(tmp_path):
    store = ShardedRows(tmp_path / "r.jsonl", Workers(1, 2))
    assert store.own == tmp_path / "parts" / "r.rank1.jsonl"
    store.own.parent.mkdir()
    store.own.write_text('{"unit": "a", "part": 0}\n{"unit": "b", "pa')
    with store.writer() as write:
        write([{"unit": "c", "part": 0}])
    assert [json.loads(line)["unit"] for line in store.own.read_text().splitlines()] == ["a", "c"]


# ----------------------------------------------------------------------------- in one process


def test_cli_batch_writes_results_and_resumes(tiny, tmp_path, monkeypatch, capsys):
    from attnlens import cli
    from attnlens.api.pipeline import PayAttentionPipeline

    monkeypatch.setattr(cli, "_load", lambda args: tiny)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"id": f"p{i}", "prompt": f"<!-> Be brief. <-!> Question {i}?"})
                                 for i in range(5)) + "\n")
    out = tmp_path / "results.jsonl"
    argv = ["batch", "--input", str(prompts), "--output", str(out), "--max-new-tokens", "3", "--batch-size", "2"]
    assert cli.main(argv) == 0
    assert "5 result(s) for 5 prompt(s)" in capsys.readouterr().out
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"p{i}" for i in range(5)] and [r["index"] for r in rows] == list(range(5))
    assert all(r["spans"][0]["text"].strip() == "Be brief." for r in rows)
    first = out.read_bytes()
    calls = []
    monkeypatch.setattr(PayAttentionPipeline, "__call__", lambda *a, **k: calls.append(a) or [])
    assert cli.main(argv) == 0 and calls == [] and out.read_bytes() == first  # everything on disk: nothing runs
    prompts.write_text('{"text": "no prompt"}\n')
    assert cli.main(argv) == 2
    assert "'prompt' must be a string or a chat" in capsys.readouterr().err


def test_profile_sweep_in_one_process_equals_the_plain_profile(tiny, tmp_path):
    from attnlens.api.profile import profile_heads

    worker = _worker_module()
    plain = profile_heads(tiny, worker.PROFILE_EXAMPLES, batch_size=3, progress=False)
    swept = profile_heads(tiny, worker.PROFILE_EXAMPLES, batch_size=3, progress=False, sweep_dir=tmp_path)
    assert plain.per_example.tobytes() == swept.per_example.tobytes()
    assert plain.baseline_per_example.tobytes() == swept.baseline_per_example.tobytes()
    with pytest.raises(Exception, match="other alpha"):
        profile_heads(tiny, worker.PROFILE_EXAMPLES, alpha=0.5, progress=False, sweep_dir=tmp_path)
