"""Hostile and careless input: keys never shown, chat requests closed at their deadline, nonsense arguments
refused with an AttnlensError naming them."""

from __future__ import annotations

import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from openai import OpenAI

from attnlens.analysis.descriptions import complete, endpoint
from attnlens.core.errors import DescribeError
from attnlens.core.validate import redact_url
from attnlens.testing import ChatStubServer

SECRET = "SECRETKEY0123456789"


# ----------------------------------------------------------------------------- keys


def _ours(caplog) -> str:
    """What attnlens logged (httpx and openai log request URLs themselves; the stub server logs what it received)."""
    return "\n".join(r.getMessage() for r in caplog.records
                     if r.name.startswith("attnlens") and r.name != "attnlens.testing")  # not the stub server


@pytest.mark.parametrize("url, shown", [
    (f"http://user:{SECRET}@127.0.0.1:1/v1", "http://***@127.0.0.1:1/v1"),
    (f"http://127.0.0.1:1/v1?api-key={SECRET}", "http://127.0.0.1:1/v1?api-key=***"),
    (f"http://127.0.0.1:1/v1?key={SECRET}&x=1", "http://127.0.0.1:1/v1?key=***&x=1"),
    (f"http://127.0.0.1:1/v1?access_token={SECRET}", "http://127.0.0.1:1/v1?access_token=***"),
    (f"http://{SECRET}@[::1]:8080/v1", "http://***@[::1]:8080/v1"),
])
def test_urls_are_shown_without_their_secrets(url, shown):
    assert redact_url(url) == shown


@pytest.mark.parametrize("url", [f"http://user:{SECRET}@127.0.0.1:1/v1", f"http://127.0.0.1:1/v1?api-key={SECRET}",
                                 f"http://127.0.0.1:1/v1/?token={SECRET}"])
def test_a_key_in_the_base_url_is_neither_in_errors_nor_in_logs(url, caplog):
    client = OpenAI(base_url=url, api_key="sk-other-0000", max_retries=0, timeout=2)
    assert SECRET not in endpoint(client)
    with caplog.at_level(logging.DEBUG), pytest.raises(DescribeError, match="cannot reach") as info:
        complete(client, "m", "hello", deadline=5)
    assert SECRET not in str(info.value) and "127.0.0.1" in str(info.value)
    assert "asking m at http://" in _ours(caplog) and SECRET not in _ours(caplog)


def test_a_key_in_the_base_url_is_not_in_a_server_error(caplog):
    with ChatStubServer("fine", api_key="the-right-key") as server:
        url = server.url.replace("http://", f"http://user:{SECRET}@") + f"?api_key={SECRET}"
        client = OpenAI(base_url=url, api_key="sk-other-0000", max_retries=0)
        with caplog.at_level(logging.DEBUG), pytest.raises(DescribeError) as info:
            complete(client, "m", "hello", deadline=5)
    assert SECRET not in str(info.value) and "401" in str(info.value)
    assert SECRET not in _ours(caplog)


# ----------------------------------------------------------------------------- threads and the deadline


class _Endless(BaseHTTPRequestHandler):
    """Answers 200 with a body that never ends: one byte every 50 ms until the client goes away."""

    closed: list[float] = []

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", "100000000")
        self.end_headers()
        try:
            for _ in range(2000):  # bounded: 100 s at most
                self.wfile.write(b" ")
                self.wfile.flush()
                time.sleep(0.05)
        except OSError:
            _Endless.closed.append(time.monotonic())

    def log_message(self, *args):
        pass


def test_a_body_that_never_ends_is_closed_at_the_deadline_and_no_thread_outlives_the_call():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Endless)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = OpenAI(base_url=f"http://127.0.0.1:{server.server_address[1]}/v1", api_key="k",
                        max_retries=0, timeout=30)
        start = time.monotonic()
        with pytest.raises(DescribeError, match="no answer within the deadline of 1 s"):
            complete(client, "m", "hello", deadline=1.0)
        ended = time.monotonic()
        assert ended - start < 4
        assert not [t for t in threading.enumerate() if t.name == "attnlens-chat"]  # joined before returning
        for _ in range(40):  # the server sees the connection closed
            if _Endless.closed:
                break
            time.sleep(0.05)
        assert _Endless.closed and _Endless.closed[0] - start < 5
    finally:
        server.shutdown()
        server.server_close()


# ----------------------------------------------------------------------------- the command line


@pytest.mark.parametrize("heads", ["1,x", "", "1,-2", "1.5"])
def test_heads_describe_all_with_bad_heads_is_one_line_exit_2(tmp_path, capsys, monkeypatch, heads):
    from attnlens import cli

    texts = tmp_path / "t.txt"
    texts.write_text("The cat sat.\n")
    monkeypatch.setattr(cli, "_load", lambda args: pytest.fail("the model loaded before the arguments were checked"))
    assert cli.main(["heads", "describe-all", "--texts", str(texts), "--openai-model", "m", "--heads", heads]) == 2
    err = capsys.readouterr().err
    assert err.startswith("attnlens: error: ") and err.count("\n") == 1 and "--heads" in err, err


# ----------------------------------------------------------------------------- nonsense arguments

import numpy as np  # noqa: E402
import torch  # noqa: E402

import attnlens as al  # noqa: E402
from attnlens.core.errors import AttnlensError  # noqa: E402


@pytest.fixture(scope="module")
def ids(tokenizer):
    return torch.tensor([tokenizer("The cat sat on the mat and slept all day")["input_ids"]])


@pytest.mark.parametrize("mask, words", [
    ("twos", "holds 2"), ("halves", "holds 0.5"), ("minus", "holds -1"),
])
def test_attention_masks_other_than_0_and_1_are_refused(tiny, ids, mask, words):
    n = ids.shape[1]
    value = {"twos": [2] * n, "halves": torch.full((n,), 0.5), "minus": [-1] + [1] * (n - 1)}[mask]
    with pytest.raises(AttnlensError, match=f"attention_mask must hold only 1 .* and 0 .*{words}"):
        al.trace_influence(tiny, ids, [(1, 3)], attention_mask=value)


def test_float_and_bool_masks_of_ones_and_zeros_equal_the_integer_mask(tiny, ids):
    n = ids.shape[1]
    ints = [0] + [1] * (n - 1)
    ref = al.trace_influence(tiny, ids, [(1, 3)], attention_mask=ints)["influence"]
    for other in (torch.tensor(ints, dtype=torch.float32), torch.tensor(ints, dtype=torch.bool), np.array(ints)):
        assert torch.equal(al.trace_influence(tiny, ids, [(1, 3)], attention_mask=other)["influence"], ref)


@pytest.mark.parametrize("flag, value", [("use_values", "no"), ("per_head", "False"), ("use_values", 1),
                                         ("per_head", None)])
def test_string_and_number_flags_are_refused(tiny, ids, flag, value):
    with pytest.raises(AttnlensError, match=f"{flag} must be True or False, got {value!r}"):
        al.trace_influence(tiny, ids, [(1, 3)], **{flag: value})


def test_numpy_and_torch_booleans_are_taken_as_flags(tiny, ids):
    ref = al.trace_influence(tiny, ids, [(1, 3)], per_head=True)["influence"]
    assert torch.equal(al.trace_influence(tiny, ids, [(1, 3)], per_head=np.bool_(True))["influence"], ref)
    assert torch.equal(al.trace_influence(tiny, ids, [(1, 3)], per_head=torch.tensor(True))["influence"], ref)


@pytest.mark.parametrize("call, words", [
    (lambda m: al.guide_plan(m, [(0, 3, "x")]), r"the delta of span \(0, 3, 'x'\) must be a number"),
    (lambda m: al.guide_plan(m, [(0, 3, None)]), r"the delta of span \(0, 3, None\) must be a number"),
    (lambda m: al.guide_plan(m, [(0, 3)], delta=None), "delta must be a number, got None"),
    (lambda m: al.guide_plan(m, [(0, 3)], delta="2"), "delta must be a number, got '2'"),
    (lambda m: al.guide_plan(m, [(0, 3)], delta=True), "delta must be a number, got True"),
    (lambda m: al.guide_plan(m, [(0, 3)], delta=np.array([2.0, 3.0])), "delta must be a number"),
])
def test_guide_refuses_deltas_that_are_not_numbers(tiny, call, words):
    with pytest.raises(AttnlensError, match=words):
        call(tiny)


def test_guide_with_a_string_delta_is_refused_and_leaves_no_hook(tiny, ids):
    with pytest.raises(AttnlensError, match="delta must be a number, got '2'"):
        with al.guide(tiny, [(1, 3)], delta="2"):
            pass
    with pytest.raises(AttnlensError, match="delta_mid must be a number, got '2'"):
        al.pipeline("pay-attention", model=tiny, delta_mid="2")


def _logits(model, ids, spans, **kwargs):
    with torch.no_grad(), al.guide(model, spans, **kwargs):
        return model(ids)


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_numpy_and_torch_scalars_are_taken_like_python_numbers(tiny, ids, kind):
    wrap = (lambda v: np.array(v)[()]) if kind == "numpy" else torch.tensor
    ref = _logits(tiny, ids, [(1, 3)], delta=2.0, layers=[1])
    assert torch.equal(_logits(tiny, ids, [(wrap(1), wrap(3))], delta=wrap(2.0), layers=[wrap(1)]), ref)
    assert torch.equal(_logits(tiny, ids, [(1, 3)], delta=2.0, layers=wrap(1)), ref)
    plain = al.BiasPlan.for_model(tiny).add(1, 3, 2.0, layers=[1], heads=[0, 2])
    odd = al.BiasPlan.for_model(tiny).add(wrap(1), wrap(3), wrap(2.0), layers=[wrap(1)], heads=[wrap(0), wrap(2)])
    assert odd.terms == plain.terms
    from attnlens.steering.pasta import check_alpha

    assert check_alpha(wrap(0.5), "exclude") == 0.5
    with pytest.raises(AttnlensError, match="must be a number"):
        check_alpha(np.bool_(True), "exclude")


def test_describe_head_refuses_a_custom_prompt_that_is_not_text(tiny):
    with ChatStubServer("fine") as server:
        ad = al.AttentionData(tiny, "stub-model", text_batch=["The cat sat on the mat because it was tired."],
                              min_length=4, max_length=12, client=OpenAI(base_url=server.url, api_key="k"), seed=0)
        with pytest.raises(AttnlensError, match="custom_prompt must be a str, got int 123"):
            ad.describe_head(layer=0, head=0, num_samples=1, custom_prompt=123)
        assert server.requests == []


def test_tags_on_one_token_are_named_in_a_warning(tokenizer, caplog):
    from attnlens.prompts.prompt import tokenize_prompt

    with caplog.at_level(logging.WARNING, logger="attnlens.prompts.prompt"):
        prompt = tokenize_prompt(tokenizer, "Pa<!->r<-!><!!->is<-!!> is big")
    assert [(s.start, s.end) for s in prompt.spans] == [(0, 1), (0, 1)]
    assert "the <!-> tag on 'r' and the <!!-> tag on 'is' fall on the same token(s) 'Paris'" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="attnlens.prompts.prompt"):
        tokenize_prompt(tokenizer, "<!-> Paris <-!> and <!!-> Rome <-!!>,<?->Milan<-?>")
    assert caplog.text == ""  # tags on separate tokens are not flagged


def test_emphasis_labels_follow_their_spans(tokenizer):
    from attnlens.prompts.prompt import locate_substrings

    prompt = locate_substrings(tokenizer, "Mary met Mary. Answer in json format.", [("Mary", None), "json format"])
    labels = [(s.text.strip(), label) for s, label in zip(prompt.spans, prompt.substrings)]
    assert labels == [("Mary", "Mary"), ("Mary", "Mary"), ("json format", "json format")]


def test_steered_generation_reports_every_emphasised_span(tiny):
    from attnlens.api.chain import PastaSettings, steered_generation

    out = steered_generation(tiny, "Mary met Mary. Answer in json format.", emphasize=[("Mary", None), "json format"],
                             pasta=PastaSettings({0: [0]}, 0.5, "exclude"), max_new_tokens=1)
    assert [(s["text"]) for s in out["pasta_spans"]] == ["Mary", "Mary", "json format"]


def test_a_chat_template_that_leaves_the_sandbox_is_an_attnlens_error(tokenizer):
    import copy

    from attnlens.prompts.prompt import tokenize_prompt

    hostile = copy.deepcopy(tokenizer)
    hostile.chat_template = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(AttnlensError, match="tried to leave jinja's sandbox"):
        tokenize_prompt(hostile, [{"role": "user", "content": "hi"}])
    hostile.chat_template = "{% for m in messages %}{{ m.content | no_such_filter }}{% endfor %}"
    with pytest.raises(AttnlensError, match="chat template failed"):
        tokenize_prompt(hostile, [{"role": "user", "content": "hi"}])


def test_pattern_hooks_inside_a_direct_block_are_reached_by_name(tiny, ids):
    from attnlens.runtime.direct import direct

    seen = []
    with direct(tiny) as hf:
        point = tiny.hook_dict["blocks.1.attn.hook_pattern"]
        point.add_hook(lambda t, hook: seen.append(tuple(t.shape)))
        try:
            hf(ids)
        finally:
            point.remove_hooks()
    assert seen == [(1, 4, ids.shape[1], ids.shape[1])]


def test_ten_thousand_spans_map_like_the_linear_scan(tokenizer):
    from attnlens.prompts.spans import OffsetIndex

    enc = tokenizer(" ".join(f"w{i}" for i in range(300)), return_offsets_mapping=True)
    offsets = [(0, 0)] + [tuple(o) for o in enc["offset_mapping"]]  # a zero-width special token first
    index = OffsetIndex(offsets)
    text_end = offsets[-1][1]
    for start in range(0, text_end, 7):
        for end in (start + 1, start + 5, start + 40):
            hits = [i for i, (a, b) in enumerate(offsets) if a < end and b > start]
            assert index.token_span(start, end) == (hits[0], hits[-1] + 1)


def test_the_robustness_docs_python_blocks_run_and_print_what_they_say(capsys):
    import re
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "robustness.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", page, flags=re.S)
    assert blocks
    for block in blocks:
        exec(compile(block, "docs/robustness.md", "exec"), {})  # noqa: S102 - the project's own docs
        said = [line[2:] for line in block.splitlines() if line.startswith("# ")]
        assert capsys.readouterr().out.splitlines() == said
