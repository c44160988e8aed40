"""Resumes check what they resume: `attnlens batch` / run_prompts and the experiments' run.json."""

from __future__ import annotations

import json

import pytest

from attnlens.api.pipeline import PayAttentionPipeline, run_prompts
from attnlens.core.errors import AttnlensError, ExperimentError

PROMPTS = [{"id": f"p{i}", "prompt": f"<!-> Be brief. <-!> Question {i}?"} for i in range(6)]


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def counted(tiny, monkeypatch):
    """The pipeline, counting the prompts each call generates."""
    calls: list[list] = []
    real = PayAttentionPipeline.__call__

    def call(self, inputs, **kwargs):
        calls.append(list(inputs))
        return real(self, inputs, **kwargs)

    monkeypatch.setattr(PayAttentionPipeline, "__call__", call)
    return PayAttentionPipeline(tiny, batch_size=2), calls


def test_another_batch_size_does_not_double_rows(counted, tmp_path):
    pipe, calls = counted
    out = tmp_path / "r.jsonl"
    first = run_prompts(pipe, PROMPTS, out, max_new_tokens=2)
    assert len(first) == 6 and len(calls) == 3
    again = run_prompts(pipe, PROMPTS, out, batch_size=4, max_new_tokens=2)
    assert len(calls) == 3  # nothing ran
    assert [r["id"] for r in _rows(out)] == [f"p{i}" for i in range(6)]
    assert again == first


def test_an_edited_prompt_runs_again_alone_and_replaces_its_row(counted, tmp_path):
    pipe, calls = counted
    out = tmp_path / "r.jsonl"
    run_prompts(pipe, PROMPTS, out, max_new_tokens=2)
    edited = [dict(p) for p in PROMPTS]
    edited[3]["prompt"] = "<!!-> Answer in French. <-!!> Something else?"
    calls.clear()
    rows = run_prompts(pipe, edited, out, max_new_tokens=2)
    assert calls == [[edited[3]["prompt"]]]
    on_disk = _rows(out)
    assert [r["id"] for r in on_disk] == [f"p{i}" for i in range(6)]  # one row each, in order
    assert "Something else?" in on_disk[3]["prompt"] and "Question 3" not in out.read_text()
    assert rows == on_disk


def test_a_deleted_row_is_generated_again(counted, tmp_path):
    pipe, calls = counted
    out = tmp_path / "r.jsonl"
    run_prompts(pipe, PROMPTS, out, max_new_tokens=2)
    lines = out.read_text().splitlines()
    out.write_text("\n".join(lines[:2] + lines[3:]) + "\n")  # p2's row removed by hand
    calls.clear()
    rows = run_prompts(pipe, PROMPTS, out, max_new_tokens=2)
    assert calls == [[PROMPTS[2]["prompt"]]]
    assert [r["id"] for r in rows] == [r["id"] for r in _rows(out)] == [f"p{i}" for i in range(6)]


@pytest.mark.parametrize("kwargs, words", [
    ({"max_new_tokens": 3}, "call"),
    ({"max_new_tokens": 2, "delta_mid": 5.0}, "delta_mid"),
])
def test_other_settings_are_refused(counted, tmp_path, kwargs, words):
    pipe, calls = counted
    out = tmp_path / "r.jsonl"
    run_prompts(pipe, PROMPTS, out, max_new_tokens=2)
    before = out.read_bytes()
    calls.clear()
    with pytest.raises(AttnlensError, match=f"other settings .*{words}"):
        run_prompts(pipe, PROMPTS, out, **kwargs)
    assert calls == [] and out.read_bytes() == before


def test_the_pipelines_own_delta_is_part_of_the_identity(tiny, tmp_path):
    out = tmp_path / "r.jsonl"
    run_prompts(PayAttentionPipeline(tiny, delta_mid=1.0), PROMPTS[:2], out, max_new_tokens=2)
    with pytest.raises(AttnlensError, match="delta_mid: 1.0 there, 2.0 now"):
        run_prompts(PayAttentionPipeline(tiny, delta_mid=2.0), PROMPTS[:2], out, max_new_tokens=2)


def test_repeated_ids_are_an_error(counted, tmp_path):
    pipe, calls = counted
    prompts = PROMPTS[:3] + [{"id": "p1", "prompt": "again"}]
    with pytest.raises(AttnlensError, match=r"repeated prompt ids: 'p1' \(prompts 1 and 3\)"):
        run_prompts(pipe, prompts, tmp_path / "r.jsonl", max_new_tokens=2)
    assert calls == [] and not (tmp_path / "r.jsonl").exists()


@pytest.mark.parametrize("damage, line", [("this is not json", 3), ('{"id": "p9", "gen', 7)])
def test_a_damaged_line_is_named_and_never_deleted(counted, tmp_path, damage, line):
    pipe, calls = counted
    out = tmp_path / "r.jsonl"
    run_prompts(pipe, PROMPTS, out, max_new_tokens=2)
    lines = out.read_text().splitlines()
    if line == 3:
        lines.insert(2, damage)
        text = "\n".join(lines) + "\n"
    else:
        text = "\n".join(lines) + "\n" + damage  # a write cut off by a crash
    out.write_text(text)
    calls.clear()
    with pytest.raises(AttnlensError, match=f"line {line}: not valid JSON"):
        run_prompts(pipe, PROMPTS, out, max_new_tokens=2)
    assert out.read_text() == text and calls == []


def test_results_without_a_run_file_are_refused(counted, tmp_path):
    pipe, _ = counted
    out = tmp_path / "r.jsonl"
    run_prompts(pipe, PROMPTS[:2], out, max_new_tokens=2)
    (tmp_path / "r.jsonl.run.json").unlink()
    with pytest.raises(AttnlensError, match="no r.jsonl.run.json"):
        run_prompts(pipe, PROMPTS[:2], out, max_new_tokens=2)


# ----------------------------------------------------------------------------- experiments


def _record(out, study, config):
    """What a run records in run.json before it generates: its settings and its data's fingerprints."""
    from attnlens.experiments import get_study
    from attnlens.experiments.store import _check_run_file

    s = get_study(study)
    out.mkdir(exist_ok=True)
    _check_run_file(out, config, s.name, data=s.data_fingerprints(s.load_data(config)))


@pytest.mark.parametrize("change, words", [
    ({"instruction": "Summarize in German."}, "instruction='Summarize in French.' \\(now 'Summarize in German.'\\)"),
    ({"passage_words": 100}, "passage_words=250 \\(now 100\\)"),
])
def test_summarize_settings_are_in_the_identity(tmp_path, change, words):
    from attnlens.experiments import SummarizeConfig

    _record(tmp_path / "o", "summarize", SummarizeConfig(out=tmp_path / "o", limit=2))
    with pytest.raises(ExperimentError, match=words):
        _record(tmp_path / "o", "summarize", SummarizeConfig(out=tmp_path / "o", limit=2, **change))
    _record(tmp_path / "o", "summarize", SummarizeConfig(out=tmp_path / "o", limit=3))  # more items: fine


def test_an_older_run_file_without_the_new_fields_still_resumes(tmp_path):
    from attnlens.experiments import SummarizeConfig

    config = SummarizeConfig(out=tmp_path)
    old = {"study": "summarize", **{k: v for k, v in config.identity().items()
                                    if k not in ("instruction", "passage_words", "bertscore")}}
    (tmp_path / "run.json").write_text(json.dumps(old))
    _record(tmp_path, "summarize", config)  # the defaults: accepted, and recorded
    assert json.loads((tmp_path / "run.json").read_text())["instruction"] == "Summarize in French."
    with pytest.raises(ExperimentError, match="instruction"):
        _record(tmp_path, "summarize", SummarizeConfig(out=tmp_path, instruction="Summarize in German."))


def test_a_dataset_edited_in_place_is_refused(tmp_path):
    from attnlens.experiments import JSONConfig

    data = tmp_path / "records.jsonl"
    rows = [{"id": f"r{i}", "text": f"Ann is {20 + i}.", "schema": "person"} for i in range(3)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = JSONConfig(out=tmp_path / "o", dataset=str(data))
    _record(tmp_path / "o", "json", config)
    _record(tmp_path / "o", "json", config)  # unchanged: resumes
    rows[1]["text"] = "Bob is 40."
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ExperimentError, match="other data: item r1 changed"):
        _record(tmp_path / "o", "json", config)


def test_a_changed_haystack_is_refused(tmp_path):
    from attnlens.experiments import NeedleConfig

    hay = tmp_path / "hay.txt"
    hay.write_text("The sky is blue. Grass is green. Snow is white.\n")
    _record(tmp_path / "o", "needle", NeedleConfig(out=tmp_path / "o", dataset=str(hay), limit=1))
    hay.write_text("The sky is grey. Grass is green. Snow is white.\n")
    with pytest.raises(ExperimentError, match="other data: haystack changed"):
        _record(tmp_path / "o", "needle", NeedleConfig(out=tmp_path / "o", dataset=str(hay), limit=1))


def test_a_txt_dataset_with_crlf_and_a_bom_reads_like_lf(tmp_path):
    from attnlens.experiments import SummarizeConfig, get_study

    text = "First passage, line one.\nLine two.\n\nSecond passage.\n \nThird passage.\n"
    lf, crlf = tmp_path / "lf.txt", tmp_path / "crlf.txt"
    lf.write_bytes(text.encode())
    crlf.write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
    study = get_study("summarize")
    a = study.load_data(SummarizeConfig(out=tmp_path / "a", dataset=str(lf)))
    b = study.load_data(SummarizeConfig(out=tmp_path / "b", dataset=str(crlf)))
    assert [r["text"] for r in b] == [r["text"] for r in a] == [
        "First passage, line one.\nLine two.", "Second passage.", "Third passage."]


def test_jsonl_and_json_data_with_a_bom_load(tmp_path):
    from attnlens.experiments import JSONConfig, get_study

    record = {"id": "r1", "text": "Ann is 30.", "schema": "person"}
    for name, body in (("a.jsonl", json.dumps(record) + "\r\n"), ("b.json", json.dumps([record]))):
        path = tmp_path / name
        path.write_bytes(b"\xef\xbb\xbf" + body.encode())
        data = get_study("json").load_data(JSONConfig(out=tmp_path / "o", dataset=str(path)))
        assert data.records[0]["text"] == "Ann is 30."


@pytest.mark.parametrize("failure", ["read-only", "full"])
def test_run_experiment_to_an_unwritable_directory_is_an_experiment_error(tmp_path, tiny, monkeypatch, failure):
    import errno
    import os
    from pathlib import Path

    from attnlens.experiments import JSONConfig, run_experiment

    out = tmp_path / "locked" / "o"
    if failure == "read-only":
        real = Path.mkdir

        def mkdir(self, *args, **kwargs):
            if "locked" in str(self):
                raise PermissionError(errno.EACCES, "Permission denied", str(self))
            return real(self, *args, **kwargs)

        monkeypatch.setattr(Path, "mkdir", mkdir)
        words = "Permission denied"
    else:
        def fsync(fd):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(os, "fsync", fsync)
        words = "No space left on device"
    with pytest.raises(ExperimentError, match=f"cannot write .*locked/o.*{words}"):
        run_experiment("json", JSONConfig(out=out, limit=1, deltas=[0], max_new_tokens=1, plots=False), model=tiny)


def test_a_second_run_on_the_same_results_file_is_refused(counted, tmp_path, monkeypatch):
    """While one run writes a results file, another (here a thread) is refused at once, naming it; the first
    finishes with every row, and the file takes a run again once it is done."""
    import threading

    pipe, _ = counted
    out = tmp_path / "r.jsonl"
    started, go = threading.Event(), threading.Event()
    real = PayAttentionPipeline.__call__

    def slow(self, inputs, **kwargs):
        started.set()
        go.wait(30)
        return real(self, inputs, **kwargs)

    monkeypatch.setattr(PayAttentionPipeline, "__call__", slow)
    first: list = []
    thread = threading.Thread(target=lambda: first.append(run_prompts(pipe, PROMPTS, out, max_new_tokens=2)))
    thread.start()
    assert started.wait(30)
    try:
        with pytest.raises(AttnlensError, match="r.jsonl"):
            run_prompts(pipe, PROMPTS, out, max_new_tokens=2)
    finally:
        go.set()
        thread.join(60)
    assert len(first[0]) == len(PROMPTS) and len(_rows(out)) == len(PROMPTS)
    assert len(run_prompts(pipe, PROMPTS, out, max_new_tokens=2)) == len(PROMPTS)  # released
