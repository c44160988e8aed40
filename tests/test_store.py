"""Experiment output survives crashes, concurrent starts and hand edits."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from attnlens.core.errors import AttnlensError, ExperimentError
from attnlens.core.records import read_jsonl
from attnlens.experiments import JSONConfig, run_experiment
from attnlens.experiments.runner import _check_unique_ids
from attnlens.experiments.sources import check_unique_ids
from attnlens.experiments.store import _check_run_file, append_rows, read_rows, run_lock
from attnlens.experiments.study import Item

ROOT = Path(__file__).resolve().parent.parent
CHILD = Path(__file__).resolve().parent / "experiment_child.py"


def _row(item: str, generation: int = 0, condition: str = "none") -> dict:
    return {"condition": condition, "item": item, "generation": generation, "output": "x"}


def _line(row: dict) -> bytes:
    return (json.dumps(row) + "\n").encode()


@pytest.mark.parametrize(
    "content, words",
    [
        (_line(_row("a")) + b"\xff\xfe not utf-8\n", "line 2: invalid UTF-8"),
        (_line(_row("a")) + b"[1, 2]\n" + _line(_row("b")), "line 2: not a JSON object (a list)"),
        (b'{"item": "a"}\n', "line 1: not a row (no condition, generation)"),
        (b"{oops\n" + _line(_row("a")), "line 1: not valid JSON"),
        (_line(_row("a")) + _line(_row("a")), "line 2: repeats the row of line 1"),
        (_line(_row("a", generation=-1)), "line 1: not a row (generation -1)"),
        (b'{"condition": "none", "item": "a", "gen', "line 1: not valid JSON"),  # cut off, read without repair
    ],
)
def test_damaged_or_foreign_lines_are_reported_with_line_numbers(tmp_path, content, words):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(content)
    with pytest.raises(ExperimentError, match="rows.jsonl") as info:
        read_rows(path)
    assert words in str(info.value)
    assert path.read_bytes() == content  # nothing rewritten


def test_a_cut_off_last_line_is_removed_on_repair_and_a_whole_one_kept(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(_line(_row("a")) + b'{"condition": "none", "item": "b", "gen')
    assert [r["item"] for r in read_rows(path, repair=True)] == ["a"]
    assert path.read_bytes() == _line(_row("a"))
    path.write_bytes(_line(_row("a")) + _line(_row("b"))[:-1])  # only the newline missing
    assert [r["item"] for r in read_rows(path, repair=True)] == ["a", "b"]
    append_rows(path, [_row("c")])  # not glued onto the last row
    assert [r["item"] for r in read_rows(path)] == ["a", "b", "c"]


def test_corrupt_run_file_is_an_error_not_replaced(tmp_path):
    config = JSONConfig(out=tmp_path)
    for content in (b"{not json", b"[1]", b"\xff\xfe"):
        (tmp_path / "run.json").write_bytes(content)
        with pytest.raises(ExperimentError, match="run.json"):
            _check_run_file(tmp_path, config, "json")
        assert (tmp_path / "run.json").read_bytes() == content


def test_duplicate_item_ids_are_an_error_at_load(tmp_path):
    data = tmp_path / "records.jsonl"
    data.write_text("\n".join(json.dumps({"id": "r1", "text": t, "schema": "person"}) for t in ("a", "b")) + "\n")
    with pytest.raises(ExperimentError, match="repeated item ids: 'r1'"):
        run_experiment("json", JSONConfig(out=tmp_path / "out", dataset=str(data)))
    assert not (tmp_path / "out").exists()  # before any output or model
    with pytest.raises(ExperimentError, match="repeated item ids: 'x' \\(2 times\\)"):
        _check_unique_ids("json", [Item("x", {}), Item("x", {})])
    check_unique_ids([{"id": 1}, {"id": 2}], "data")


def test_a_second_writer_is_refused(tmp_path):
    with run_lock(tmp_path):
        with pytest.raises(ExperimentError, match="another run is writing to"):
            run_experiment("json", JSONConfig(out=tmp_path, limit=1, influence=False, plots=False))


@given(st.binary(max_size=200))
def test_the_jsonl_readers_never_crash(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("j") / "f.jsonl"
    path.write_bytes(content)
    for read in (read_rows, read_jsonl):
        try:
            read(path)
        except AttnlensError as exc:
            assert "line" in str(exc)


@given(st.lists(st.fixed_dictionaries({"item": st.text(max_size=5), "generation": st.integers(0, 3),
                                        "output": st.text(max_size=20)}), max_size=6, unique_by=lambda r: (r["item"], r["generation"])))
def test_appended_rows_read_back(tmp_path_factory, rows):
    path = tmp_path_factory.mktemp("r") / "rows.jsonl"
    rows = [{"condition": "c", **r} for r in rows]
    append_rows(path, rows[:2])
    append_rows(path, rows[2:])
    assert read_rows(path) == rows


def _start(out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, str(CHILD), str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env, cwd=ROOT)


def _sorted_rows(out: Path) -> list[str]:
    return sorted(json.dumps(r, sort_keys=True) for r in read_rows(out / "rows.jsonl"))


def test_sigkill_at_random_points_then_resume_gives_the_uninterrupted_rows(tmp_path):
    reference = _start(tmp_path / "reference")  # runs alongside the killed ones
    out = tmp_path / "killed"
    rng = random.Random(12)
    kills = 0
    for _ in range(2):
        child = _start(out)
        assert child.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.6))
        child.send_signal(signal.SIGKILL)
        child.wait()
        kills += child.returncode == -signal.SIGKILL
    final = _start(out)
    assert final.communicate(timeout=300)[0].splitlines()[-1].startswith("done")
    assert reference.communicate(timeout=300)[0].splitlines()[-1] == "done 12 0"
    assert kills >= 1
    assert _sorted_rows(out) == _sorted_rows(tmp_path / "reference")
    assert len(_sorted_rows(out)) == 12
