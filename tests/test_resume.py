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
    with pytest.raises(AttnlensError, match=f"line {line}: not JSON"):
        run_prompts(pipe, PROMPTS, out, max_new_tokens=2)
    assert out.read_text() == text and calls == []


def test_results_without_a_run_file_are_refused(counted, tmp_path):
    pipe, _ = counted
    out = tmp_path / "r.jsonl"
    run_prompts(pipe, PROMPTS[:2], out, max_new_tokens=2)
    (tmp_path / "r.jsonl.run.json").unlink()
    with pytest.raises(AttnlensError, match="no r.jsonl.run.json"):
        run_prompts(pipe, PROMPTS[:2], out, max_new_tokens=2)
