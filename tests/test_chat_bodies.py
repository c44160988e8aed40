"""The chat client: any body that is not a chat completion is a DescribeError naming what came back;
the whole request has a deadline; bad settings are named."""

from __future__ import annotations

import time

import httpx
import pytest
from openai import OpenAI

from attnlens.analysis.descriptions import complete, make_client
from attnlens.core.errors import DescribeError

KEY = "sk-test-secret-key-123"


def _client(handler, **kwargs) -> OpenAI:
    return OpenAI(base_url="http://stub.invalid/v1", api_key=KEY, max_retries=kwargs.pop("max_retries", 0),
                  http_client=httpx.Client(transport=httpx.MockTransport(handler)), **kwargs)


def _answer(body: bytes, content_type: str = "application/json", status: int = 200):
    return lambda request: httpx.Response(status, content=body, headers={"content-type": content_type})


@pytest.mark.parametrize(
    "body, content_type, words",
    [
        (b"<html><body>Welcome to nginx</body></html>", "text/html", "an HTML page (text/html)"),
        (b"[1, 2, 3]", "application/json", "JSON that is not a chat completion (a list"),
        (b'{"choices": [{"message": {"content": "hi"', "application/json", "a body that is not JSON"),
        (b'{"result": "ok"}', "application/json", "without a choices list"),
        (b'{"choices": [{"message": {"content": 5}}]}', "application/json", "content is not text"),
        (b"\xff\xfe\x00", "application/octet-stream", "not UTF-8"),
        (b'{"choices": []}', "application/json", "empty answer"),
    ],
)
def test_bodies_that_are_not_chat_completions(body, content_type, words):
    with pytest.raises(DescribeError, match="stub.invalid") as info:
        complete(_client(_answer(body, content_type)), "m", "hello")
    assert words in str(info.value)
    assert KEY not in str(info.value)


def test_a_good_body_still_reads():
    body = b'{"model": "m2", "choices": [{"message": {"role": "assistant", "content": " yes "}, "finish_reason": "stop"}]}'
    answer = complete(_client(_answer(body)), "m", "hello")
    assert (answer.text, answer.model, answer.finish_reason) == ("yes", "m2", "stop")


def test_a_hung_server_ends_at_the_deadline():
    def hang(request):
        time.sleep(5)
        return httpx.Response(200, json={})

    start = time.monotonic()
    with pytest.raises(DescribeError, match="no answer within the deadline of 0.5 s") as info:
        complete(_client(hang, timeout=60, max_retries=3), "m", "hello", deadline=0.5)
    assert time.monotonic() - start < 3 and not info.value.fatal


def test_retries_stop_at_the_deadline():
    calls = []

    def busy(request):
        calls.append(1)
        return httpx.Response(503, json={"error": {"message": "busy"}}, headers={"retry-after": "0.3"})

    start = time.monotonic()
    with pytest.raises(DescribeError, match="503"):
        complete(_client(busy, max_retries=50), "m", "hello", deadline=1.0)
    assert time.monotonic() - start < 2 and 2 <= len(calls) <= 5


@pytest.mark.parametrize("kwargs, words", [
    ({"timeout": -1}, "timeout must be a positive number of seconds, got -1"),
    ({"timeout": float("nan")}, "timeout must be a positive number of seconds, got nan"),
    ({"max_retries": -2}, "max_retries must be a non-negative integer, got -2"),
    ({"max_retries": True}, "max_retries must be a non-negative integer, got True"),
])
def test_bad_client_settings_are_named(kwargs, words):
    with pytest.raises(DescribeError, match=words.replace("(", "\\(")):
        make_client(base_url="http://127.0.0.1:1/v1", **kwargs)


@pytest.mark.parametrize("deadline", [0, -1, float("inf"), "10"])
def test_bad_deadline_is_named(deadline):
    with pytest.raises(DescribeError, match=f"deadline must be a positive number of seconds, got {deadline!r}"):
        complete(_client(_answer(b"{}")), "m", "hello", deadline=deadline)
