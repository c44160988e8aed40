"""A plugin's steering method through ``attnlens batch``, loaded by ``--plugin`` and described by
``--steering``: every row equals the pipeline's greedy answer under the same steering, the steering
changes answers (so an ignored description would fail), and the batch's identity includes it (a rerun
with another strength is refused rather than mixed into the same file)."""

from __future__ import annotations

import json

import pytest

import attnlens as al
from test_plugins import on_tiny, plugin_dir  # noqa: F401 - the plugin module and the tiny model's commands

PROMPTS = ["<!-> zebra <-!> is the word to say", "Say <!-> cloud <-!> now", "<!-> one two <-!> three"]


def _batch(capsys, tmp_path, steering, out="out.jsonl"):
    from attnlens import cli

    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"prompt": p, "id": f"p{i}"}) + "\n" for i, p in enumerate(PROMPTS)))
    capsys.readouterr()
    code = cli.main(["--plugin", "plug_module", "batch", "--input", str(src), "--output", str(tmp_path / out),
                     "--max-new-tokens", "4", "--raw", "--steering", json.dumps(steering)])
    err = capsys.readouterr().err
    return code, err, [json.loads(line) for line in (tmp_path / out).read_text().splitlines()] if code == 0 else []


def test_a_plugin_method_in_batch_equals_the_pipeline(plugin_dir, on_tiny, tmp_path, capsys):
    code, err, rows = _batch(capsys, tmp_path, {"plug_bias": {"value": 40}})
    assert code == 0, err
    pipe = al.pipeline(model=on_tiny)
    steered = [pipe(p, max_new_tokens=4, steer={"plug_bias": {"value": 40}}, raw=True)[0]["generated_text"]
               for p in PROMPTS]
    plain = [pipe(p, max_new_tokens=4, steer={"plug_bias": {"value": 0}}, raw=True)[0]["generated_text"] for p in PROMPTS]
    assert [r["id"] for r in rows] == ["p0", "p1", "p2"]
    assert [r["generated_text"] for r in rows] == steered
    assert steered != plain  # the plugin's bias changes an answer, so an ignored --steering fails above
    # a rerun with another strength on the same file is refused, never mixed in
    code, err, _ = _batch(capsys, tmp_path, {"plug_bias": {"value": 1}})
    assert code != 0 and "out.jsonl" in err


def test_a_plugin_methods_bad_setting_names_it(plugin_dir, on_tiny, tmp_path, capsys):
    code, err, _ = _batch(capsys, tmp_path, {"plug_bias": {"valu": 2}}, out="bad.jsonl")
    assert code == 2
    assert "plug_bias" in err and "valu" in err
    assert not (tmp_path / "bad.jsonl").exists()
