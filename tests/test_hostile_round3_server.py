"""Hostile input to ``attnlens serve``, round three: each body below was answered with a 500, a 200 where the
docs promise a 400, a traceback in the log, or a stalled event loop."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from attnlens.api import openai_requests as requests_module  # noqa: E402
from attnlens.api.openai_requests import RequestError, parse_body, parse_sampling  # noqa: E402
from attnlens.api.server import DEFAULT_MAX_BODY_BYTES, create_app, start_server  # noqa: E402
from attnlens.core.errors import AttnlensError  # noqa: E402

NAME = "tiny"
LIMIT = 256 * 1024  # the test server's body limit (above the 100,000-byte nested bodies)
CHAT = {"model": NAME, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 3}
COMPLETION = {"model": NAME, "prompt": "The capital of France is", "max_tokens": 3}


@pytest.fixture(scope="module")
def server(tiny):
    with start_server(tiny, model_name=NAME, batch_wait=0, max_body_bytes=LIMIT) as running:
        yield running


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def _error(response, status: int, param: str | None, code: str) -> str:
    """The OpenAI-style error of ``response``, checked; its message."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["param"] == param and body["error"]["code"] == code, body
    assert body["error"]["type"] == "invalid_request_error" and body["error"]["message"]
    return body["error"]["message"]


def _post(http, path: str, content: bytes):
    return http.post(path, content=content, headers={"Content-Type": "application/json"})


# ---------------------------------------------------------------------------------------------- nesting


@pytest.mark.parametrize("raw", [b"[" * 100_000, b'{"a": ' * 5_000,
                                 json.dumps({**CHAT, "attnlens": {"layers": json.loads("[" * 70 + "]" * 70)}}).encode()],
                         ids=["100k [", "5k {", "70 deep inside a good body"])
def test_deeply_nested_json_is_a_400(http, raw):
    message = _error(_post(http, "/chat/completions", raw), 400, None, "invalid_json")
    assert "64 deep" in message


def test_brackets_inside_strings_do_not_count(http):
    text = "[{" * 150 + ' \\" ' + "}]" * 150  # an escaped quote does not end the string
    response = http.post("/completions", json={**COMPLETION, "prompt": text, "max_tokens": 1})
    assert response.status_code == 200, response.text
    assert not requests_module._nested_deeper(json.dumps({"p": text, "q": [[1]]}), 3)
    assert requests_module._nested_deeper(json.dumps({"p": text, "q": [[[1]]]}), 3)


def test_a_recursion_error_while_parsing_is_a_400(monkeypatch):
    """Without the depth check (a limit above the interpreter's recursion), the parser's RecursionError is a 400."""
    monkeypatch.setattr(requests_module, "MAX_JSON_DEPTH", 10**9)
    with pytest.raises(RequestError) as caught:
        parse_body(b"[" * 100_000 + b"]" * 100_000)
    assert caught.value.status == 400 and caught.value.code == "invalid_json"


@pytest.mark.parametrize("raw", [b'{"model": "tiny", "temperature": NaN}', b'{"model": "tiny", "top_p": Infinity}',
                                 b'{"model": "tiny", "max_tokens": 1' + b"0" * 5000 + b"}"],
                         ids=["NaN", "Infinity", "5000 digits"])
def test_what_json_does_not_allow_is_a_400(http, raw):
    _error(_post(http, "/chat/completions", raw), 400, None, "invalid_json")


# ---------------------------------------------------------------------------------------------- sampling and fields


def test_a_tiny_temperature_is_greedy(http):
    greedy = http.post("/completions", json={**COMPLETION, "max_tokens": 4})
    tiny = http.post("/completions", json={**COMPLETION, "max_tokens": 4, "temperature": 1e-300})
    assert greedy.status_code == tiny.status_code == 200, tiny.text
    assert tiny.json()["choices"][0]["text"] == greedy.json()["choices"][0]["text"]
    assert parse_sampling({"temperature": 1e-300}) == parse_sampling({}) == parse_sampling({"temperature": 0})
    assert parse_sampling({"temperature": 0.0099, "top_p": 0.5, "seed": 3}) == parse_sampling({})
    assert parse_sampling({"temperature": 0.01}).do_sample


@pytest.mark.parametrize("field, value, code", [
    ("n", True, "invalid_value"), ("n", 1.0, "invalid_value"), ("n", "1", "invalid_value"),
    ("best_of", True, "unsupported_parameter"), ("presence_penalty", False, "unsupported_parameter"),
    ("echo", 0, "unsupported_parameter"), ("top_logprobs", False, "unsupported_parameter"),
])
def test_a_bool_is_not_an_int_nor_an_int_a_bool(http, field, value, code):
    path = "/completions" if field in ("best_of", "echo") else "/chat/completions"
    body = {**(COMPLETION if path == "/completions" else CHAT), field: value}
    message = _error(http.post(path, json=body), 400, field, code)
    assert json.dumps(value) in message


def test_the_neutral_values_are_still_taken(http):
    body = {**CHAT, "n": 1, "presence_penalty": 0, "frequency_penalty": 0.0, "logprobs": False, "top_logprobs": 0}
    assert http.post("/chat/completions", json=body).status_code == 200
    body = {**COMPLETION, "best_of": 1, "echo": False, "logprobs": 0}
    assert http.post("/completions", json=body).status_code == 200


@pytest.mark.parametrize("value", ["no", 0, 1, "true", [], {}])
def test_include_usage_must_be_a_boolean(http, value):
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": value}}
    message = _error(http.post("/chat/completions", json=body), 400, "stream_options.include_usage", "invalid_type")
    assert json.dumps(value) in message


def test_include_usage_false_sends_no_usage(http):
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": False}}
    with http.stream("POST", "/chat/completions", json=body) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    assert all("usage" not in json.loads(line[6:]) for line in lines[:-1])


# ---------------------------------------------------------------------------------------------- prompts


@pytest.mark.parametrize("path, text, tag", [
    ("/chat/completions", "<!!!!-> Answer in French. <-!!!!> Hi", "<!!!!->"),
    ("/chat/completions", "Answer <-!?> now", "<-!?>"),
    ("/completions", "<??->The capital<-??> of France is", "<??->"),
    ("/completions", "\\\\<!!!!->x", "<!!!!->"),  # an even run of backslashes escapes nothing
])
def test_unknown_tags_are_a_400(http, path, text, tag):
    chat = path == "/chat/completions"
    body = {**CHAT, "messages": [{"role": "user", "content": text}]} if chat else {**COMPLETION, "prompt": text}
    message = _error(http.post(path, json=body), 400, "messages" if chat else "prompt", "invalid_prompt")
    assert tag in message and "<!-->" in message


@pytest.mark.parametrize("text", ["<<!-->!!!!-> is written as text", "\\<!!!!-> stays text",
                                  "<!-- an HTML comment --> is text", "a <- b and c -> d"])
def test_tag_like_text_written_as_text_is_taken(http, text):
    response = http.post("/completions", json={**COMPLETION, "prompt": text, "max_tokens": 1})
    assert response.status_code == 200, response.text


def test_the_break_reads_an_unknown_tag_as_text():
    from attnlens.prompts.tags import parse_tags

    assert parse_tags("<<!-->!!!!-> x").text == "<!!!!-> x"


@pytest.mark.parametrize("prompt", ["", [""], "<!-->"], ids=["empty", "a list of one empty", "only a break"])
def test_an_empty_completion_prompt_is_a_400(http, prompt):
    message = _error(http.post("/completions", json={**COMPLETION, "prompt": prompt}), 400, "prompt",
                     "invalid_prompt")
    assert "empty" in message


# ---------------------------------------------------------------------------------------------- the body's size


def test_a_body_over_the_limit_is_a_413(http, server):
    body = {**COMPLETION, "prompt": "word " * (LIMIT // 5 + 10)}
    response = http.post("/completions", json=body)
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["code"] == "request_too_large" and error["type"] == "invalid_request_error"
    assert str(LIMIT) in error["message"]
    assert http.post("/completions", json=COMPLETION).status_code == 200  # the server is still fine


def _raw_request(url: str, head: bytes, body: bytes = b"") -> socket.socket:
    host, port = url.split("//")[1].split("/")[0].rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=60)
    sock.sendall(head + body)
    return sock


def test_a_content_length_far_over_the_limit_is_refused_before_reading(server):
    head = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000000000\r\n\r\n")
    with _raw_request(server.url, head, b'{"model": ') as sock:
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            piece = sock.recv(65536)
            if not piece:
                break
            answer += piece
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.split()[1] == b"413", answer
    assert json.loads(rest.partition(b"\r\n\r\n")[2])["error"]["code"] == "request_too_large"


def test_the_body_limit_is_checked_and_configurable(tiny, monkeypatch):
    assert DEFAULT_MAX_BODY_BYTES == 4 * 1024 * 1024
    for bad in (0, -1, 1.5, True, "4MB"):
        with pytest.raises(AttnlensError, match="max_body_bytes"):
            create_app(tiny, max_body_bytes=bad)
    import attnlens.api.server as server_module
    import attnlens.cli as cli
    from attnlens.cli import main

    seen = []
    monkeypatch.setattr(server_module, "serve", lambda model, sock, **kw: seen.append(kw))
    monkeypatch.setattr(cli, "_load", lambda args: tiny)
    assert main(["serve", "--port", "0", "--max-body-bytes", "1234"]) == 0
    assert main(["serve", "--port", "0"]) == 0
    assert [kw["max_body_bytes"] for kw in seen] == [1234, DEFAULT_MAX_BODY_BYTES]
    with pytest.raises(SystemExit) as caught:
        main(["serve", "--port", "0", "--max-body-bytes", "0"])
    assert caught.value.code == 2


# ---------------------------------------------------------------------------------------------- a client that goes


def test_a_client_that_sends_half_a_body_leaves_one_log_line(server, caplog):
    caplog.set_level(logging.INFO)
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n")
    sock = _raw_request(server.url, head, b'{"model": "tiny", "mess')
    time.sleep(0.2)  # not a timing assertion: the server may read the half body before or after the close
    sock.close()
    deadline = time.monotonic() + 30
    while not any("went away" in r.getMessage() for r in caplog.records) and time.monotonic() < deadline:
        time.sleep(0.05)
    gone = [r for r in caplog.records if "went away" in r.getMessage()]
    assert len(gone) == 1 and gone[0].levelno == logging.INFO
    assert "of 1000 bytes" in gone[0].getMessage()
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


# ---------------------------------------------------------------------------------------------- the event loop


def _blocked(monkeypatch, module, name, marker):
    """Make ``module.name`` wait (until released) when it meets ``marker``; returns (entered, release)."""
    real = getattr(module, name)
    entered, release = threading.Event(), threading.Event()

    def waiting(*args, **kwargs):
        if any(marker in json.dumps(a) for a in args if isinstance(a, (str, list, dict))):
            entered.set()
            assert release.wait(120), "never released"
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, waiting)
    return entered, release


def _in_background(http, body):
    out = []
    thread = threading.Thread(target=lambda: out.append(http.post("/completions", json=body)))
    thread.start()
    return thread, out


def test_other_requests_are_answered_while_a_prompt_is_tokenized(server, http, monkeypatch):
    from attnlens.api import chain

    marker = "a very long prompt"
    entered, release = _blocked(monkeypatch, chain, "prepare", marker)
    thread, out = _in_background(http, {**COMPLETION, "prompt": marker})
    try:
        assert entered.wait(60)
        with httpx.Client(base_url=server.url, timeout=20) as quick:  # the bound is a failure, not a measure
            assert quick.get("/models").json()["data"][0]["id"] == NAME
            _error(quick.post("/completions", json={**COMPLETION, "n": 2}), 400, "n", "invalid_value")
        assert thread.is_alive()  # the long prompt is still being tokenized
    finally:
        release.set()
        thread.join(120)
    assert out[0].status_code == 200


def test_a_small_request_is_generated_while_a_big_one_is_parsed(server, http, monkeypatch):
    import attnlens.api.server as server_module

    marker = "a very long prompt"
    entered, release = _blocked(monkeypatch, server_module, "completion_prompt", marker)
    thread, out = _in_background(http, {**COMPLETION, "prompt": marker})
    try:
        assert entered.wait(60)
        with httpx.Client(base_url=server.url, timeout=20) as quick:
            small = quick.post("/completions", json=COMPLETION)
        assert small.status_code == 200 and small.json()["usage"]["completion_tokens"] == 3
        assert thread.is_alive()
    finally:
        release.set()
        thread.join(120)
    assert out[0].status_code == 200
