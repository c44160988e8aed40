"""A steered OpenAI-compatible server: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``.

Messages (and a completion's prompt) may hold GUIDE tags; attnlens' settings
travel in an extra body field, ``"attnlens": {"method": "guide", "delta_mid": 1.0,
"layers": "all"}``, each with the pipeline's default when absent, so a greedy
answer equals ``attnlens.pipeline("pay-attention", model=m)(messages,
max_new_tokens=...)``'s.

One worker thread owns the model: every request is read (at most
``max_body_bytes``), then parsed, tokenized and checked on arrival, on a thread
of its own so the event loop stays free (a bad one is answered with an
OpenAI-style error at once), then queued. The worker takes what is waiting (after a short wait for more),
groups requests that can share a generation (the same sampling settings;
seeded samples run alone), and generates each group as one left-padded batch
with one bias plan per row (:func:`~attnlens.runtime.generate.generate_batch`).
Rows end on their own: at their end-of-sequence token, their ``max_tokens``,
a ``stop`` string, or when their client goes away. Streams get their text
as each token is made; a client that disconnects is dropped from the queue,
or its row stops generating.

    from attnlens.api.server import start_server
    with start_server(model) as server:       # 127.0.0.1, a free port
        client = openai.OpenAI(base_url=server.url, api_key="unused")

``attnlens serve --model NAME --host H --port P`` runs it from the command line.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from ..core.errors import AttnlensError
from ..core.model import Model
from ..core.validate import is_int
from .engine import Engine, EngineStats
from .openai_requests import (
    CHAT_FIELDS,
    COMPLETION_FIELDS,
    DEFAULT_MAX_TOKENS,
    DEFAULT_SETTINGS,
    MAX_JSON_DEPTH,
    METHODS,
    MIN_TEMPERATURE,
    Job,
    RequestError,
    _error,
    chat_messages,
    check_fields,
    completion_prompt,
    parse_body,
)

logger = logging.getLogger(__name__)

__all__ = [
    "CHAT_FIELDS", "COMPLETION_FIELDS", "DEFAULT_MAX_BODY_BYTES", "DEFAULT_MAX_TOKENS", "DEFAULT_SETTINGS",
    "MAX_JSON_DEPTH", "METHODS", "MIN_TEMPERATURE", "Engine", "EngineStats", "RequestError", "RunningServer", "bind",
    "create_app", "serve", "socket_url", "start_server",
]

#: the largest request body read, in bytes (``--max-body-bytes``): 4 MiB, about a million tokens of text
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024


# ---------------------------------------------------------------------------------------------- the app


def _usage(job: Job) -> dict[str, int]:
    n, m = len(job.prompt.input_ids), len(job.tokens)
    return {"prompt_tokens": n, "completion_tokens": m, "total_tokens": n + m}


def _extras(job: Job) -> dict[str, Any]:
    return {"spans": [s.as_dict() for s in job.prompt.spans], "methods": list(job.methods)}


def create_app(
    model: Model,
    *,
    model_name: str | None = None,
    max_batch_size: int = 8,
    batch_wait: float = 0.01,
    max_queue: int = 256,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    continuous: bool = True,
) -> Any:
    """The FastAPI application serving ``model`` (its worker starts and stops with the app).

    ``model_name``: the id clients send as ``model`` (default: the model's own name).
    ``max_batch_size``: requests generated together; ``batch_wait``: seconds the worker
    waits after the first waiting request for others to join its batch;
    ``max_queue``: waiting requests beyond which a request is refused (429);
    ``max_body_bytes``: the largest request body read (a larger one is refused with 413);
    ``continuous``: requests join and leave a running batch between decoding steps (False: batch by batch;
    see :mod:`attnlens.api.engine`).
    """
    if not is_int(max_body_bytes) or max_body_bytes < 1:
        raise AttnlensError(f"max_body_bytes must be a positive integer, got {max_body_bytes!r}")
    name = model_name or str(getattr(model.cfg, "model_name", None) or "attnlens-model")
    engine = Engine(model, model_name=name, max_batch_size=max_batch_size, batch_wait=batch_wait,
                    max_queue=max_queue, continuous=continuous)
    app = FastAPI(title="attnlens", lifespan=_lifespan(engine), docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine
    _add_error_handlers(app)
    _add_model_routes(app, engine)
    _add_completion_routes(app, engine, int(max_body_bytes))
    return app


def _lifespan(engine: Engine) -> Any:
    """The app's lifespan: the engine's worker starts with the app and stops with it."""

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        engine.start()
        try:
            yield
        finally:
            await asyncio.to_thread(engine.close)

    return lifespan


def _add_error_handlers(app: Any) -> None:
    """Every error answered as an OpenAI-shaped error body: a refused request, an unknown route, a bad body."""

    @app.exception_handler(RequestError)
    async def request_error(request: Request, exc: RequestError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        error = RequestError(f"{request.method} {request.url.path}: {exc.detail}", status=exc.status_code, code=code)
        return JSONResponse(error.body(), status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(_error(str(exc)).body(), status_code=400)


def _unknown_model(model_id: Any, served: str) -> RequestError:
    return RequestError(f"the model {model_id!r} does not exist; this server serves {served!r}",
                        status=404, param="model", code="model_not_found")


def _add_model_routes(app: Any, engine: Engine) -> None:
    """``GET /v1/models`` and ``GET /v1/models/{id}``: the one model served."""

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [_model_card(engine.model_name)]}

    @app.get("/v1/models/{model_id:path}")
    async def model_card(model_id: str) -> dict[str, Any]:
        if model_id != engine.model_name:
            raise _unknown_model(model_id, engine.model_name)
        return _model_card(engine.model_name)


def _too_large(max_body_bytes: int) -> RequestError:
    return RequestError(f"the request body is larger than the server's limit of {max_body_bytes} bytes",
                        status=413, code="request_too_large")


async def _read_body(request: Request, max_body_bytes: int) -> bytes:
    """The body's bytes. Past ``max_body_bytes`` it is refused (413): the rest is read and dropped (up to
    eight times the limit, so the client gets its answer rather than a reset connection), and a
    Content-Length beyond that is refused before any is read. A client that goes away before sending all
    of it gets one INFO line."""
    declared = request.headers.get("content-length", "")
    drain = 8 * max_body_bytes
    if declared.isdigit() and int(declared) > drain:
        raise _too_large(max_body_bytes)
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size <= max_body_bytes:
                chunks.append(chunk)
            elif size > drain:
                break
    except ClientDisconnect:
        logger.info("a client went away after sending %d of %s bytes of its request; it is dropped", size,
                    declared or "its")
        raise RequestError("the client went away before sending the whole request body",
                           code="incomplete_body") from None  # answered to nobody
    if size > max_body_bytes:
        raise _too_large(max_body_bytes)
    return b"".join(chunks)


def _prepare(engine: Engine, raw: bytes, chat: bool, loop: asyncio.AbstractEventLoop) -> tuple[dict[str, Any], Job]:
    """Parse, tokenize and check one request (on a worker thread: a long prompt never holds up the loop)."""
    body = parse_body(raw)
    check_fields(body, CHAT_FIELDS if chat else COMPLETION_FIELDS)
    if body.get("model") != engine.model_name:
        raise _unknown_model(body.get("model"), engine.model_name)
    item = chat_messages(body) if chat else completion_prompt(body)
    return body, engine.job(item, body, chat=chat, loop=loop)


async def _finished(request: Request, job: Job) -> bool:
    """Wait for ``job`` to finish (True); False when its client went away first (the job is dropped)."""
    try:
        while True:
            try:
                event = await asyncio.wait_for(job.events.get(), timeout=0.25)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    logger.info("a client went away; its request is dropped")
                    job.cancel()
                    return False
                continue
            if event[0] == "error":
                raise event[1]
            if event[0] == "done":
                return True
    finally:
        job.cancel()  # no-op when done; frees the row when the handler is cancelled


def _completion(job: Job, ident: str, created: int, model_name: str, chat: bool) -> dict[str, Any]:
    """The answer to a finished, unstreamed request."""
    choice: dict[str, Any] = {"index": 0, "finish_reason": job.finish_reason}
    if chat:
        choice["message"] = {"role": "assistant", "content": job.text}
    else:
        choice.update(text=job.text, logprobs=None)
    return {"id": ident, "object": "chat.completion" if chat else "text_completion", "created": created,
            "model": model_name, "choices": [choice], "usage": _usage(job), "attnlens": _extras(job)}


def _add_completion_routes(app: Any, engine: Engine, max_body_bytes: int) -> None:
    """``POST /v1/chat/completions`` and ``POST /v1/completions``, streamed or not."""

    async def complete(request: Request, chat: bool) -> Any:
        raw = await _read_body(request, max_body_bytes)
        body, job = await anyio.to_thread.run_sync(_prepare, engine, raw, chat, asyncio.get_running_loop())
        engine.submit(job)
        ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        created = int(time.time())
        if job.stream:
            usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return StreamingResponse(_stream(job, ident, created, engine.model_name, chat, usage),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        if not await _finished(request, job):
            return None
        return _completion(job, ident, created, engine.model_name, chat)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        return await complete(request, True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        return await complete(request, False)


def _model_card(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "attnlens"}


async def _stream(job: Job, ident: str, created: int, model_name: str, chat: bool,
                  include_usage: bool) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's chunk format, ending with ``data: [DONE]``."""
    kind = "chat.completion.chunk" if chat else "text_completion"

    def chunk(text: str | None, finish: str | None, first: bool = False, **extra: Any) -> str:
        if chat:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else {}
            if text is not None:
                delta["content"] = text
            choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        data = {"id": ident, "object": kind, "created": created, "model": model_name, "choices": [choice], **extra}
        return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

    try:
        if chat:
            yield chunk(None, None, first=True)
        while True:
            event = await job.events.get()
            if event[0] == "delta":
                yield chunk(event[1], None)
            elif event[0] == "done":
                yield chunk(None if chat else "", event[1], attnlens=_extras(job))
                if include_usage:
                    data = {"id": ident, "object": kind, "created": created, "model": model_name, "choices": [],
                            "usage": _usage(job)}
                    yield f"data: {json.dumps(data)}\n\n"
                break
            else:  # an error after the stream began: say so in the stream
                error: RequestError = event[1]
                yield f"data: {json.dumps(error.body())}\n\n"
                break
        yield "data: [DONE]\n\n"
    finally:
        if job.finish_reason is None:
            logger.info("a streaming client went away; its row stops")
        job.cancel()


# ---------------------------------------------------------------------------------------------- running it


def bind(host: str = "127.0.0.1", port: int = 8000) -> socket.socket:
    """A listening socket on ``host``:``port`` (0: a free port); an OSError names a taken port."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def socket_url(sock: socket.socket) -> str:
    """``http://host:port/v1`` for a bound socket."""
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/v1"


_counter = itertools.count()


class RunningServer:
    """A server running in a background thread of this process; a context manager that stops it."""

    def __init__(self, app: Any, sock: socket.socket) -> None:
        import uvicorn

        self.app = app
        self.url = socket_url(sock)
        self._sock = sock
        config = uvicorn.Config(app, log_config=None, log_level="warning", lifespan="on",
                                timeout_graceful_shutdown=5)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name=f"attnlens-serve-{next(_counter)}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 60
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.close()
                raise AttnlensError(f"the server at {self.url} did not start")
            time.sleep(0.01)
        logger.info("serving at %s", self.url)

    @property
    def engine(self) -> Engine:
        return self.app.state.engine

    def close(self) -> None:
        self._server.should_exit = True
        self._thread.join(30)
        self._sock.close()

    def __enter__(self) -> "RunningServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def start_server(model: Model, *, host: str = "127.0.0.1", port: int = 0, **app_kwargs: Any) -> RunningServer:
    """Serve ``model`` from a background thread (port 0: a free one); ``server.url`` is the client's base URL.

    ``app_kwargs`` go to :func:`create_app` (``model_name``, ``max_batch_size``, ``batch_wait``, ``max_queue``,
    ``max_body_bytes``, ``continuous``).
    """
    return RunningServer(create_app(model, **app_kwargs), bind(host, port))


def serve(model: Model, sock: socket.socket, **app_kwargs: Any) -> None:
    """Serve ``model`` on a bound socket until interrupted (the command line's ``attnlens serve``)."""
    import uvicorn

    config = uvicorn.Config(create_app(model, **app_kwargs), log_config=None, lifespan="on",
                            timeout_graceful_shutdown=5)
    logger.info("serving at %s", socket_url(sock))
    uvicorn.Server(config).run(sockets=[sock])
