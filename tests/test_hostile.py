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
