"""The resumable-run component (attnlens.core.resumable): rows files, run records, the folder lock, shards."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import threading
from dataclasses import dataclass

import pytest

from attnlens.core.errors import AttnlensError, ExperimentError
from attnlens.core.resumable import RowFile, RunRecord, ShardedRows, changed, exclusive, write_atomic


def _line(row: dict) -> bytes:
    return (json.dumps(row) + "\n").encode()


def _keyed(path, **kwargs) -> RowFile:
    return RowFile(path, key=lambda r: r["k"], **kwargs)


# ----------------------------------------------------------------------------- rows files


def test_appended_batches_read_back_in_order_and_a_missing_file_is_empty(tmp_path):
    rows = _keyed(tmp_path / "sub" / "rows.jsonl")
    assert rows.read() == []
    rows.append([{"k": "a", "text": "é\u2028x"}, {"k": "b"}])
    rows.append([])
    rows.append(iter([{"k": "c"}]))
    assert rows.read() == [{"k": "a", "text": "é\u2028x"}, {"k": "b"}, {"k": "c"}]
    assert rows.path.read_bytes().endswith(b"\n") and rows.path.read_bytes().count(b"\n") == 3
    assert rows.keys() == {"a", "b", "c"}


@pytest.mark.parametrize("content, words", [
    (_line({"k": "a"}) + b"\xff\xfe\n" + _line({"k": "b"}), "line 2: invalid UTF-8 at byte 0"),
    (_line({"k": "a"}) + b"[1, 2]\n" + _line({"k": "b"}), "line 2: not a JSON object (a list)"),
    (b"{oops\n" + _line({"k": "a"}), "line 1: not valid JSON (Expecting property name"),
    (_line({"k": "a"}) + _line({"k": "b"}) + _line({"k": "a"}), "line 3: repeats the row of line 1 (a)"),
    (b"[" * 100_000 + b"\n", "line 1: not valid JSON (nested too deeply)"),
    (b"1" * 5_000 + b"\n", "line 1: not valid JSON (Exceeds the limit"),
])
def test_a_damaged_middle_line_is_an_error_naming_file_and_line_and_nothing_changes(tmp_path, content, words):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(content)
    for repair in (False, True):
        with pytest.raises(ExperimentError, match="rows.jsonl") as info:
            _keyed(path, error=ExperimentError, advice="Fix it.").read(repair=repair)
        assert words in str(info.value) and str(info.value).endswith("Fix it.")
        assert path.read_bytes() == content


def test_a_cut_off_last_line_is_repaired_by_the_owner_left_out_by_others_and_reported_otherwise(tmp_path, caplog):
    path = tmp_path / "rows.jsonl"
    content = _line({"k": "a"}) + b'{"k": "b", "te'
    path.write_bytes(content)
    rows = _keyed(path)
    with pytest.raises(AttnlensError, match=r"line 2: not valid JSON \(.*\) \(cut off: no newline\)"):
        rows.read()
    assert rows.read(tolerate_torn=True) == [{"k": "a"}] and path.read_bytes() == content
    with caplog.at_level(logging.WARNING, logger="attnlens.core.resumable"):
        assert rows.read(repair=True) == [{"k": "a"}]
    assert "line 2" in caplog.text and "runs again" in caplog.text
    assert path.read_bytes() == _line({"k": "a"})
    rows.append([{"k": "b"}])
    assert rows.read() == [{"k": "a"}, {"k": "b"}]


def test_a_whole_last_row_without_its_newline_is_kept_and_finished(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(_line({"k": "a"}) + _line({"k": "b"})[:-1])
    rows = _keyed(path)
    assert rows.read() == [{"k": "a"}, {"k": "b"}]
    assert rows.read(repair=True) == [{"k": "a"}, {"k": "b"}]
    rows.append([{"k": "c"}])  # not glued onto the last row
    assert rows.read() == [{"k": "a"}, {"k": "b"}, {"k": "c"}]


def test_skipped_damaged_lines_are_left_out_and_removed_by_the_owner(tmp_path, caplog):
    path = tmp_path / "part.jsonl"
    content = _line({"k": "a"}) + b"garbage\n" + _line({"k": "b"}) + b'{"k": "c'
    path.write_bytes(content)
    rows = _keyed(path, damaged="skip")
    with caplog.at_level(logging.WARNING, logger="attnlens.core.resumable"):
        assert rows.read(tolerate_torn=True) == [{"k": "a"}, {"k": "b"}]
    assert "line 2" in caplog.text and path.read_bytes() == content  # a reader changes nothing
    assert rows.read(repair=True) == [{"k": "a"}, {"k": "b"}]
    assert path.read_bytes() == _line({"k": "a"}) + _line({"k": "b"})
    with pytest.raises(AttnlensError, match="damaged must be"):
        RowFile(path, damaged="ignore")


def test_a_custom_check_names_what_a_foreign_row_lacks(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(_line({"k": "a", "n": 1}) + _line({"k": "b"}))
    rows = RowFile(path, check=lambda r: None if isinstance(r, dict) and "n" in r else "not a row (no n)")
    with pytest.raises(AttnlensError, match=r"1 damaged or foreign line\(s\): line 2: not a row \(no n\)"):
        rows.read()


def test_a_check_sees_only_objects_the_shared_parser_refuses_other_lines(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(_line({"k": "a"}) + b'"text"\n' + b"[" * 100_000 + b"\n")
    seen = []
    rows = RowFile(path, check=lambda r: seen.append(r))  # accepts anything it is given
    with pytest.raises(AttnlensError) as info:
        rows.read()
    assert str(info.value).startswith(f"{str(path)!r} has 2 damaged or foreign line(s): "
                                      "line 2: not a JSON object (a str); line 3: not valid JSON (nested too deeply).")
    assert seen == [{"k": "a"}]


def test_threads_appending_to_one_file_never_interleave_lines(tmp_path):
    rows = _keyed(tmp_path / "rows.jsonl")
    text = "x" * 50_000  # batches far larger than a pipe's atomic write or a buffer

    def writer(w: int) -> None:
        for b in range(5):
            rows.append([{"k": f"{w}-{b}-{i}", "text": text} for i in range(4)])

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = rows.read()  # every line whole, every key once
    assert len(got) == 6 * 5 * 4 and all(r["text"] == text for r in got)


def _append_from_process(path: str, w: int) -> None:
    rows = RowFile(path, key=lambda r: r["k"])
    for b in range(10):
        rows.append([{"k": f"{w}-{b}-{i}", "text": "y" * 20_000} for i in range(3)])


def test_processes_appending_to_one_file_never_interleave_lines(tmp_path):
    path = str(tmp_path / "rows.jsonl")
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_append_from_process, args=(path, w)) for w in range(4)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(60)
        assert p.exitcode == 0
    assert len(_keyed(path).read()) == 4 * 10 * 3


# ----------------------------------------------------------------------------- whole files


def test_write_atomic_keeps_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "run.json"
    write_atomic(path, "old")
    real = os.fsync

    def failing(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing)
    with pytest.raises(ExperimentError, match="cannot write .*run.json.*No space left"):
        write_atomic(path, "new", error=ExperimentError)
    monkeypatch.setattr(os, "fsync", real)
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]


@pytest.mark.parametrize("content, words", [
    (b"{not json", "is damaged"), (b"\xff\xfe", "is damaged"), (b"[1]", "is not a run file (a JSON list)"),
])
def test_a_damaged_run_record_is_an_error_naming_it_and_is_never_replaced(tmp_path, content, words):
    path = tmp_path / "run.json"
    path.write_bytes(content)
    record = RunRecord(path, error=ExperimentError, advice="restore it")
    with pytest.raises(ExperimentError, match="run.json") as info:
        record.read()
    assert words in str(info.value) and str(info.value).endswith("restore it")
    assert path.read_bytes() == content


def test_a_run_record_round_trips_and_changed_names_what_differs(tmp_path):
    record = RunRecord(tmp_path / "new" / "run.json")
    assert record.read() is None and not record.exists()
    record.write({"model": "m", "delta": 1.0}, sort_keys=True)
    assert record.read() == {"delta": 1.0, "model": "m"}
    assert changed(record.read(), {"model": "m", "delta": 2.0, "seed": 0}) == ["delta", "seed"]
    assert changed(record.read(), {"model": "m", "delta": 2.0, "seed": 0}, keys=["model", "delta"]) == ["delta"]
    assert changed(record.read(), {"model": "m", "delta": 1.0}) == []


def test_a_second_run_on_a_folder_is_refused_until_the_first_ends(tmp_path):
    with exclusive(tmp_path, error=ExperimentError):
        with pytest.raises(ExperimentError, match="another run is writing to"):
            with exclusive(tmp_path, error=ExperimentError):
                pass
    with exclusive(tmp_path):  # released
        pass


# ----------------------------------------------------------------------------- shards


@dataclass(frozen=True)
class _Worker:
    rank: int
    world_size: int

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        pass


def test_each_worker_appends_to_its_own_part_and_rank_0_merges_them(tmp_path):
    merged = tmp_path / "rows.jsonl"
    stores = [ShardedRows(merged, _Worker(r, 2)) for r in range(2)]
    assert [s.own.name for s in stores] == ["rows.rank0.jsonl", "rows.rank1.jsonl"]
    for r, store in enumerate(stores):
        with store.writer() as write:
            write([{"unit": u, "worker": r} for u in range(r, 6, 2)])
    assert not merged.exists() and len(stores[0].read_all()) == 6
    # a row also in another part (a merge interrupted before the parts were removed) counts once
    (tmp_path / "parts" / "rows.rank1.jsonl").open("a").write(json.dumps({"unit": 0, "worker": 9}) + "\n")
    rows = stores[0].merge(key=lambda r: r["unit"], order=lambda r: -r["unit"],
                           fix=lambda r: None if r["unit"] == 3 else {**r, "fixed": True})
    assert [(r["unit"], r["worker"]) for r in rows] == [(5, 1), (4, 0), (2, 0), (1, 1), (0, 0)]
    assert all(r["fixed"] for r in rows) and not (tmp_path / "parts").exists()
    assert [json.loads(line)["unit"] for line in merged.read_text().splitlines()] == [5, 4, 2, 1, 0]


def test_one_process_writes_the_merged_file_and_resumes_parts_of_another_world_size(tmp_path):
    merged = tmp_path / "rows.jsonl"
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "rows.rank1.jsonl").write_bytes(_line({"unit": 1}) + b'{"unit": 3, "va')
    store = ShardedRows(merged)
    assert store.own == merged
    assert [r["unit"] for r in store.read_all()] == [1]  # a killed worker's cut-off row is left out
    with store.writer() as write:
        write([{"unit": 0}, {"unit": 3}])
    assert [r["unit"] for r in store.merge(key=lambda r: r["unit"], order=lambda r: r["unit"])] == [0, 1, 3]


def test_a_worker_repairs_its_own_part_before_appending(tmp_path):
    store = ShardedRows(tmp_path / "r.jsonl", _Worker(1, 2))
    store.own.parent.mkdir()
    store.own.write_bytes(_line({"unit": "a"}) + b'{"unit": "b", "pa')
    with store.writer() as write:
        write([{"unit": "c"}])
    assert [json.loads(line)["unit"] for line in store.own.read_text().splitlines()] == ["a", "c"]


def test_strict_shards_refuse_a_damaged_middle_line_in_any_part(tmp_path):
    store = ShardedRows(tmp_path / "rows.jsonl", _Worker(0, 2), damaged="error", error=ExperimentError,
                        key=lambda r: r["unit"])
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "rows.rank1.jsonl").write_bytes(b"oops\n" + _line({"unit": 1}))
    with pytest.raises(ExperimentError, match=r"rows.rank1.jsonl.*line 1: not valid JSON \(Expecting value\)"):
        store.read_all()
