"""The OpenAI-compatible server, through the real ``openai`` client on 127.0.0.1.

Most cases serve a tiny random LLaMA (with the embedded tokenizer); the docs
page's example (run here too) checks the embedded model against the pipeline.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")

import attnlens as al  # noqa: E402
from attnlens.api.server import start_server  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NAME = "tiny"


@pytest.fixture(scope="module")
def server(lively):
    # a long batch wait, so requests sent together surely share a batch
    with start_server(lively, model_name=NAME, batch_wait=0.3, max_batch_size=8) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def pipe(lively):
    return al.pipeline("pay-attention", model=lively, raw=True)  # completions continue raw text; chats are chats


# the load test's requests: (endpoint, prompt or messages, attnlens settings or None, max_tokens)
REQUESTS = [
    ("chat", [{"role": "user", "content": "<!!-> Answer in French. <-!!> What is the capital of Italy?"}],
     {"delta_mid": 3.0}, 12),
    ("chat", [{"role": "user", "content": "What is the capital of Italy?"}], None, 12),
    ("chat", [{"role": "system", "content": "You are terse."},
              {"role": "user", "content": "Name three <!-> colours <-!> please."}], {"layers": [0, 2]}, 9),
    ("chat", [{"role": "user", "content": "Hi"}], None, 5),
    ("completion", "<!!!-> The capital of France <-!!!> is", {"delta_mid": 4.0, "layers": "last"}, 10),
    ("completion", "The capital of France is", None, 10),
    ("chat", [{"role": "user", "content": "<!-> Be brief. <-!> Tell me about the sea and its many colours."}],
     {"delta_mid": 8.0}, 15),
    ("completion", "Once upon a time there was a", {"method": "none"}, 7),
    ("chat", [{"role": "user", "content": "<!!!-> Rewrite in French: <-!!!> Paris is the most visited city."}],
     {"delta_mid": 5.0, "layers": "first"}, 11),
    ("chat", [{"role": "user", "content": "Count: one, two, three,"}], {"delta_mid": 2.0}, 8),
    ("completion", "<!-> Lists <-!> are useful because", {}, 6),
    ("chat", [{"role": "user", "content": "What is 2 + 2?"}], None, 13),
]


def _ask(client, endpoint, item, settings, max_tokens, **kw):
    extra = {} if settings is None else {"extra_body": {"attnlens": settings}}
    if endpoint == "chat":
        reply = client.chat.completions.create(model=NAME, messages=item, max_tokens=max_tokens, **extra, **kw)
        return reply.choices[0].message.content, reply
    reply = client.completions.create(model=NAME, prompt=item, max_tokens=max_tokens, **extra, **kw)
    return reply.choices[0].text, reply


def _alone(pipe, item, settings, max_tokens):
    """The same request through the pipeline, alone (the pipeline's defaults where the body gives none)."""
    settings = settings or {}
    delta = settings.get("delta_mid", 1.0) if settings.get("method", "guide") == "guide" else 0.0
    return pipe(item, max_new_tokens=max_tokens, delta_mid=delta,
                layers=settings.get("layers", "all"))[0]["generated_text"]


def test_concurrent_steered_and_unsteered_requests_equal_the_pipeline_alone(server, client, pipe):
    before = len(server.engine.stats.rows)
    with ThreadPoolExecutor(len(REQUESTS)) as pool:
        futures = [pool.submit(_ask, client, *r) for r in REQUESTS]
        served = [f.result(timeout=300) for f in futures]
    batches = list(server.engine.stats.rows)[before:]
    assert sum(batches) == len(REQUESTS)
    assert max(batches) > 1, f"no two requests shared a batch: {batches}"
    for (endpoint, item, settings, max_tokens), (text, reply) in zip(REQUESTS, served):
        assert text == _alone(pipe, item, settings, max_tokens), (endpoint, item, settings)
        assert reply.usage.completion_tokens <= max_tokens
        assert reply.choices[0].finish_reason in ("stop", "length")
    # steering changed something: the steered French request differs from the same text untagged
    steered = served[0][0]
    plain = _alone(pipe, [{"role": "user", "content": "Answer in French. What is the capital of Italy?"}], None, 12)
    assert steered != plain


def test_the_extra_field_reports_spans(client):
    _, reply = _ask(client, *REQUESTS[0])
    extra = reply.model_extra["attnlens"]
    assert [s["text"] for s in extra["spans"]] == ["Answer in French."]
    assert extra["spans"][0]["delta"] == 3.0


@pytest.mark.parametrize("index", [0, 4])
def test_streaming_assembles_to_the_same_text(client, index):
    endpoint, item, settings, max_tokens = REQUESTS[index]
    whole, _ = _ask(client, endpoint, item, settings, max_tokens)
    extra = {"extra_body": {"attnlens": settings}}
    if endpoint == "chat":
        chunks = list(client.chat.completions.create(model=NAME, messages=item, max_tokens=max_tokens, stream=True,
                                                     stream_options={"include_usage": True}, **extra))
        pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
        assert chunks[0].choices[0].delta.role == "assistant"
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert chunks[-1].usage.completion_tokens == max_tokens or finish == ["stop"]
    else:
        chunks = list(client.completions.create(model=NAME, prompt=item, max_tokens=max_tokens, stream=True, **extra))
        pieces = [c.choices[0].text for c in chunks]
        finish = [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason]
    assert "".join(pieces) == whole
    assert sum(1 for p in pieces if p) > 2  # it came in pieces
    assert len(finish) == 1


def test_sampling_and_stop(client, pipe):
    item = REQUESTS[5][1]
    first, _ = _ask(client, "completion", item, None, 12, temperature=0.9, seed=7)
    again, _ = _ask(client, "completion", item, None, 12, temperature=0.9, seed=7)
    assert first == again  # a seeded sample runs alone, so it repeats
    greedy = _alone(pipe, item, None, 12)
    cut = greedy[3:6]
    text, reply = _ask(client, "completion", item, None, 12, stop=[cut])
    assert text == greedy[: greedy.index(cut)]
    assert reply.choices[0].finish_reason == "stop"
    chunks = list(client.completions.create(model=NAME, prompt=item, max_tokens=12, stop=cut, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == text


def test_models(client, server):
    assert [m.id for m in client.models.list().data] == [NAME]
    assert client.models.retrieve(NAME).id == NAME


def _post(url, body, *, raw=None):
    data = raw if raw is not None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


CHAT = {"model": NAME, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 3}

BAD = [
    ("unknown model", {**CHAT, "model": "gpt-9"}, 404, "model", "model_not_found"),
    ("bad tags", {**CHAT, "messages": [{"role": "user", "content": "<!-> unclosed"}]}, 400, "messages",
     "invalid_prompt"),
    ("bad role", {**CHAT, "messages": [{"role": "robot", "content": "hi"}]}, 400, "messages", "invalid_prompt"),
    ("no messages", {**CHAT, "messages": []}, 400, "messages", "invalid_type"),
    ("bad delta", {**CHAT, "attnlens": {"delta_mid": "x"}}, 400, "attnlens.delta_mid", "invalid_value"),
    ("bad layers", {**CHAT, "attnlens": {"layers": [99]}}, 400, "attnlens.layers", "invalid_value"),
    ("bad method", {**CHAT, "attnlens": {"method": "telepathy"}}, 400, "attnlens.method", "invalid_value"),
    ("unknown setting", {**CHAT, "attnlens": {"alpha": 1}}, 400, "attnlens.alpha", "unknown_parameter"),
    ("settings not an object", {**CHAT, "attnlens": 3}, 400, "attnlens", "invalid_type"),
    ("beyond the window", {**CHAT, "max_tokens": 5000}, 400, "max_tokens", "context_length_exceeded"),
    ("prompt beyond the window", {**CHAT, "messages": [{"role": "user", "content": "word " * 1100}]}, 400,
     "messages", "context_length_exceeded"),
    ("bad max_tokens", {**CHAT, "max_tokens": 0}, 400, "max_tokens", "invalid_value"),
    ("bad temperature", {**CHAT, "temperature": 3}, 400, "temperature", "invalid_value"),
    ("two choices", {**CHAT, "n": 2}, 400, "n", "invalid_value"),
    ("unknown field", {**CHAT, "tools": []}, 400, "tools", "unknown_parameter"),
    ("bad stop", {**CHAT, "stop": ["a", ""]}, 400, "stop", "invalid_value"),
    ("influence tags", {**CHAT, "messages": [{"role": "user", "content": "<?-> x <-?> y"}]}, 400, "messages",
     "invalid_prompt"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_requests_get_openai_errors(server, case):
    _, body, status, param, code = case
    got_status, got = _post(server.url + "/chat/completions", body)
    assert got_status == status
    assert set(got) == {"error"} and set(got["error"]) == {"message", "type", "param", "code"}
    assert got["error"]["param"] == param and got["error"]["code"] == code
    assert got["error"]["type"] == "invalid_request_error" and got["error"]["message"]


def test_malformed_json_and_completion_errors(server):
    status, got = _post(server.url + "/chat/completions", None, raw=b'{"model": "tiny", "messages": [')
    assert status == 400 and got["error"]["code"] == "invalid_json"
    status, got = _post(server.url + "/completions", {"model": NAME, "prompt": 3})
    assert status == 400 and got["error"]["param"] == "prompt"
    status, got = _post(server.url + "/completions", {"model": NAME, "prompt": "<!!-> x"})
    assert status == 400 and got["error"]["param"] == "prompt" and "<!!->" in got["error"]["message"]


def test_unknown_paths_and_methods_get_openai_errors(server):
    request = urllib.request.Request(server.url + "/chat/completions", method="GET")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=30)
    assert caught.value.code == 405 and json.loads(caught.value.read())["error"]["code"] == "method_not_allowed"
    status, got = _post(server.url + "/embeddings", {"model": NAME, "input": "x"})
    assert status == 404 and got["error"]["code"] == "not_found"


def test_the_openai_client_raises_its_errors(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "hi"}],
                                       extra_body={"attnlens": {"layers": "middle"}})
    assert caught.value.body["param"] == "attnlens.layers"


def test_a_client_that_goes_away_frees_its_slot(lively, monkeypatch):
    # one row per batch: a request that kept generating would hold up the next
    with start_server(lively, model_name=NAME, batch_wait=0, max_batch_size=1) as running:
        stats, engine = running.engine.stats, running.engine
        advance = engine._advance

        def slowly(job):  # at least 4.5 s for the long stream, whatever the hardware
            time.sleep(0.005)
            return advance(job)

        monkeypatch.setattr(engine, "_advance", slowly)
        client = openai.OpenAI(base_url=running.url, api_key="unused", max_retries=0, timeout=120)
        long = 900
        stream = client.completions.create(model=NAME, prompt="Once upon a time", max_tokens=long, stream=True)
        pieces = []
        for chunk in stream:
            pieces.append(chunk.choices[0].text)
            if len(pieces) == 3:
                break
        # meanwhile a request that waits behind it gives up: it must never run
        quick = openai.OpenAI(base_url=running.url, api_key="unused", max_retries=0, timeout=0.5)
        with pytest.raises(openai.APITimeoutError):
            quick.completions.create(model=NAME, prompt="Dropped request", max_tokens=5)
        time.sleep(0.6)  # the server notices within a poll
        stream.close()
        text, reply = _ask(client, "completion", "A following request", None, 5)
        assert reply.usage.completion_tokens == 5
        deadline = time.monotonic() + 30
        while (stats.stopped, stats.dropped) != (1, 1) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (stats.stopped, stats.dropped) == (1, 1)
        assert stats.tokens < long  # the abandoned stream stopped generating
        assert list(stats.rows) == [1, 1]  # the stream and the following request; the dropped one never ran


def test_the_cli_serves_and_prints_its_address(lively, monkeypatch, capsys):
    """``attnlens serve`` in this process (on a thread, the tiny model), stopped as uvicorn stops on Ctrl-C."""
    import uvicorn

    import attnlens.cli as cli
    from attnlens.cli import main

    servers = []

    class Recorded(uvicorn.Server):
        def __init__(self, config):
            super().__init__(config)
            servers.append(self)

    monkeypatch.setattr(uvicorn, "Server", Recorded)
    monkeypatch.setattr(cli, "_load", lambda args: lively)
    code = []
    thread = threading.Thread(target=lambda: code.append(main(["serve", "--port", "0", "--model", NAME])))
    thread.start()
    try:
        out = ""
        deadline = time.monotonic() + 60
        while "http://" not in out and time.monotonic() < deadline and thread.is_alive():
            time.sleep(0.05)
            out += capsys.readouterr().out
        url = re.search(r"http://127\.0\.0\.1:\d+/v1", out).group(0)
        assert out.startswith(f"attnlens: serving {NAME} at {url}")
        deadline = time.monotonic() + 60
        while not (servers and servers[0].started) and time.monotonic() < deadline:
            time.sleep(0.05)
        with urllib.request.urlopen(url + "/models", timeout=30) as response:
            assert [m["id"] for m in json.loads(response.read())["data"]] == [NAME]
    finally:
        if servers:
            servers[0].should_exit = True
        thread.join(60)
    assert code == [0]


def test_the_cli_names_a_taken_port(capsys):
    from attnlens.api.server import bind
    from attnlens.cli import main

    taken = bind("127.0.0.1", 0)
    try:
        port = taken.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 2
    finally:
        taken.close()
    assert "attnlens: error:" in capsys.readouterr().err


@pytest.mark.parametrize("backend", ["direct", "bridge"])
def test_generate_batch_reports_every_step_and_stops_rows(lively, backend):
    """The per-step callback the server streams through: every token of every row, and rows stopped on request."""
    from attnlens.core.model import pad_id
    from attnlens.runtime.generate import generate_batch

    rows = [[1, 504, 2730, 314], [1, 504, 2730, 314, 3564, 28]]
    plain = generate_batch(lively, rows, max_new_tokens=6, backend=backend)
    assert min(len(r) for r in plain) == 6  # no end token in the way
    seen = []

    def on_step(tokens):
        seen.append(tokens)
        return [len(seen) >= 2, len(seen) >= 4]  # stop row 0 after 2 tokens, row 1 after 4

    out = generate_batch(lively, rows, max_new_tokens=6, backend=backend, on_step=on_step)
    assert [s[0] for s in seen][:2] == plain[0][:2] and [s[1] for s in seen][:4] == plain[1][:4]
    if backend == "direct":  # stopped rows get pad tokens; the run ends when every row has stopped
        assert len(seen) == 4
        pad = pad_id(lively.tokenizer)
        assert out[0][:2] == plain[0][:2] and set(out[0][2:]) <= {pad}
        assert out[1] == plain[1][:4]
    else:  # the bridge reports the steps after generating, and cannot stop a row
        assert len(seen) == 6 and out == plain
