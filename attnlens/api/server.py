"""A steered OpenAI-compatible server: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``.

Messages (and a completion's prompt) may hold GUIDE tags; attnlens' settings
travel in an extra body field, ``"attnlens": {"method": "guide", "delta_mid": 1.0,
"layers": "all"}``, each with the pipeline's default when absent, so a greedy
answer equals ``attnlens.pipeline("pay-attention", model=m)(messages,
max_new_tokens=...)``'s.

One worker thread owns the model: every request is parsed, tokenized and
checked on arrival (a bad one is answered with an OpenAI-style error at once),
then queued. The worker takes what is waiting (after a short wait for more),
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
import queue
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from ..core.errors import AttnlensError
from ..core.model import Model, context_window
from ..core.validate import check_seed, is_int, resolve_layers
from ..prompts.prompt import Prompt
from ..runtime.generate import generate_batch
from ..steering.bias import BiasPlan
from ..steering.guide import check_delta, guide_plan_for
from . import chain

logger = logging.getLogger(__name__)

#: steering methods the ``attnlens`` body field accepts ("none": tags are read and removed, nothing is steered)
METHODS = ("guide", "none")
#: the defaults of the ``attnlens`` body field: the pipeline's
DEFAULT_SETTINGS = {"method": "guide", "delta_mid": 1.0, "layers": "all"}
#: new tokens when a request gives no ``max_tokens`` (the pipeline's default)
DEFAULT_MAX_TOKENS = 64

_COMMON_FIELDS = {"model", "max_tokens", "temperature", "top_p", "seed", "stop", "stream", "stream_options", "n",
                  "user", "attnlens", "presence_penalty", "frequency_penalty", "logprobs"}
CHAT_FIELDS = frozenset(_COMMON_FIELDS | {"messages", "max_completion_tokens", "top_logprobs"})
COMPLETION_FIELDS = frozenset(_COMMON_FIELDS | {"prompt", "echo", "suffix", "best_of"})


class RequestError(AttnlensError):
    """A request the server refuses: an OpenAI-style error with an HTTP status, the offending ``param`` and a ``code``."""

    def __init__(self, message: str, *, status: int = 400, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.param, self.code, self.type = status, param, code, type

    def body(self) -> dict[str, Any]:
        return {"error": {"message": str(self), "type": self.type, "param": self.param, "code": self.code}}


# ---------------------------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class Sampling:
    """The generation settings a batch shares (requests with equal settings may be batched)."""

    do_sample: bool = False
    temperature: float = 1.0
    top_p: float | None = None
    seed: int | None = None

    def kwargs(self) -> dict[str, Any]:
        return {"do_sample": self.do_sample, "temperature": self.temperature, "top_p": self.top_p, "seed": self.seed}


@dataclass
class Job:
    """One request on its way through the queue; the worker reports to it through ``events``."""

    prompt: Prompt
    plan: BiasPlan | None
    sampling: Sampling
    max_tokens: int
    stop: tuple[str, ...]
    stream: bool
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue
    cancelled: threading.Event = field(default_factory=threading.Event)
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    sent: int = 0  # characters of ``text`` already streamed
    finish_reason: str | None = None

    def cancel(self) -> None:
        self.cancelled.set()

    def report(self, event: tuple[str, Any]) -> None:
        """Hand an event to the request's event loop (from the worker thread)."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self.cancel()


def _error(message: str, param: str | None = None, code: str | None = None, status: int = 400) -> RequestError:
    return RequestError(message, status=status, param=param, code=code)


def _number(body: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise _error(f"{name} must be a number from {low:g} to {high:g}, got {value!r}", name, "invalid_value")
    return float(value)


def parse_sampling(body: dict[str, Any]) -> Sampling:
    """OpenAI's sampling fields as the pipeline's: no ``temperature`` (the pipeline's default) or 0 is greedy."""
    temperature = _number(body, "temperature", 0.0, 2.0)
    top_p = _number(body, "top_p", 0.0, 1.0)
    if top_p == 0.0:
        raise _error("top_p must be above 0", "top_p", "invalid_value")
    seed = body.get("seed")
    try:
        check_seed(seed)
    except AttnlensError as exc:
        raise _error(str(exc), "seed", "invalid_value") from None
    sample = (temperature is not None and temperature > 0) or (temperature is None and top_p is not None and top_p < 1)
    if not sample:
        return Sampling()
    return Sampling(True, 1.0 if temperature is None else temperature, top_p, None if seed is None else int(seed))


def parse_stop(body: dict[str, Any]) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if (not isinstance(stops, list) or not 1 <= len(stops) <= 4
            or not all(isinstance(s, str) and s for s in stops)):
        raise _error("stop must be a non-empty string or a list of up to 4 non-empty strings", "stop", "invalid_value")
    return tuple(stops)


@dataclass(frozen=True)
class Steering:
    method: str
    delta_mid: float
    layers: Any


def parse_steering(body: dict[str, Any], n_layers: int) -> Steering:
    """The ``attnlens`` body field, with the pipeline's defaults for what it leaves out."""
    given = body.get("attnlens")
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise _error("attnlens must be an object such as {\"delta_mid\": 2.0, \"layers\": \"all\"}", "attnlens",
                     "invalid_type")
    unknown = sorted(set(given) - set(DEFAULT_SETTINGS))
    if unknown:
        raise _error(f"unknown attnlens setting(s) {', '.join(unknown)}; accepted: {', '.join(DEFAULT_SETTINGS)}",
                     f"attnlens.{unknown[0]}", "unknown_parameter")
    settings = {**DEFAULT_SETTINGS, **given}
    if settings["method"] not in METHODS:
        raise _error(f"unknown steering method {settings['method']!r}; the server offers {', '.join(METHODS)}",
                     "attnlens.method", "invalid_value")
    try:
        delta = check_delta(settings["delta_mid"])
    except AttnlensError as exc:
        raise _error(str(exc), "attnlens.delta_mid", "invalid_value") from None
    layers = settings["layers"]
    try:
        resolve_layers(layers, n_layers)
    except (AttnlensError, TypeError) as exc:
        raise _error(f"bad layers {layers!r}: {exc}", "attnlens.layers", "invalid_value") from None
    return Steering(settings["method"], delta, layers)


def parse_max_tokens(body: dict[str, Any], names: Sequence[str]) -> int:
    for name in names:
        value = body.get(name)
        if value is not None:
            if not is_int(value) or value < 1:
                raise _error(f"{name} must be a positive integer, got {value!r}", name, "invalid_value")
            return int(value)
    return DEFAULT_MAX_TOKENS


def check_fields(body: dict[str, Any], accepted: frozenset[str]) -> None:
    unknown = sorted(set(body) - accepted)
    if unknown:
        raise _error(f"unrecognized request argument(s): {', '.join(unknown)}", unknown[0], "unknown_parameter")
    if body.get("n") not in (None, 1):
        raise _error("the server makes one choice per request: n must be 1", "n", "invalid_value")
    for name in ("presence_penalty", "frequency_penalty"):
        if body.get(name) not in (None, 0, 0.0):
            raise _error(f"{name} is not supported (leave it out or 0)", name, "unsupported_parameter")
    for name in ("logprobs", "top_logprobs", "echo", "suffix", "best_of"):
        if body.get(name) not in (None, False, 0, 1 if name == "best_of" else 0):
            raise _error(f"{name} is not supported", name, "unsupported_parameter")
    if not isinstance(body.get("stream", False), bool):
        raise _error("stream must be true or false", "stream", "invalid_type")
    options = body.get("stream_options")
    if options is not None and (not isinstance(options, dict) or set(options) - {"include_usage"}):
        raise _error("stream_options takes only include_usage", "stream_options", "invalid_value")


def chat_messages(body: dict[str, Any]) -> list[dict[str, str]]:
    """The request's messages as the pipeline's chat: ``content`` as a string (text parts joined)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _error("messages must be a non-empty list of {role, content} objects", "messages", "invalid_type")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _error(f"message {i} must be an object with role and content", f"messages[{i}]", "invalid_type")
        content = message.get("content")
        if isinstance(content, list):
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise _error(f"message {i}: only text content parts are supported", f"messages[{i}].content",
                             "invalid_value")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise _error(f"message {i} has no string content", f"messages[{i}].content", "invalid_type")
        role = message.get("role")
        out.append({"role": "system" if role == "developer" else role, "content": content})
    return out


def completion_prompt(body: dict[str, Any]) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise _error("prompt must be a string (one prompt per request)", "prompt", "invalid_type")
    return prompt


# ---------------------------------------------------------------------------------------------- the engine


@dataclass
class EngineStats:
    """What the worker has done: batches run, rows per batch, requests dropped before they ran."""

    batches: int = 0
    rows: deque = field(default_factory=lambda: deque(maxlen=4096))  # rows of the latest batches
    dropped: int = 0
    stopped: int = 0  # rows stopped early because their client went away
    tokens: int = 0


class Engine:
    """The model, its tokenizer and the one worker thread that runs every generation."""

    def __init__(self, model: Model, *, model_name: str, max_batch_size: int = 8, batch_wait: float = 0.01,
                 max_queue: int = 256) -> None:
        if getattr(model, "tokenizer", None) is None:
            raise AttnlensError("the model has no tokenizer; the server needs one")
        for name, value in (("max_batch_size", max_batch_size), ("max_queue", max_queue)):
            if not is_int(value) or value < 1:
                raise AttnlensError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(batch_wait, bool) or not isinstance(batch_wait, (int, float)) or not 0 <= batch_wait <= 10:
            raise AttnlensError(f"batch_wait must be a number of seconds from 0 to 10, got {batch_wait!r}")
        self.model = model
        self.tokenizer = model.tokenizer
        self.model_name = model_name
        self.max_batch_size = int(max_batch_size)
        self.batch_wait = float(batch_wait)
        self.max_queue = int(max_queue)
        self.n_layers = int(model.cfg.n_layers)
        self.window = context_window(model)
        self.eos = getattr(self.tokenizer, "eos_token_id", None)
        self.stats = EngineStats()
        self.tokenizer_lock = threading.Lock()  # one tokenizer, used from the event loop and the worker
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._work, name="attnlens-serve-worker", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 30.0) -> None:
        """Stop the worker after the batch it is running; queued requests are told the server stops."""
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)
        self._thread = None

    # ------------------------------------------------------------------ requests (event loop side)

    def job(self, item: Any, body: dict[str, Any], *, chat: bool, loop: asyncio.AbstractEventLoop) -> Job:
        """Parse, tokenize and check one request; a :class:`RequestError` says what is wrong."""
        steering = parse_steering(body, self.n_layers)
        sampling = parse_sampling(body)
        max_tokens = parse_max_tokens(body, ("max_completion_tokens", "max_tokens") if chat else ("max_tokens",))
        stop = parse_stop(body)
        where = "messages" if chat else "prompt"
        try:
            with self.tokenizer_lock:
                prompt = chain.prepare(self.tokenizer, item, delta_mid=steering.delta_mid)
        except AttnlensError as exc:
            raise _error(str(exc), where, "invalid_prompt") from None
        if prompt.influence_spans():
            raise _error("influence tags (<?-> ... <-?>) are not served; use attnlens' pipeline to measure influence",
                         where, "invalid_prompt")
        if not prompt.input_ids:
            raise _error("the prompt has no tokens", where, "invalid_prompt")
        n = len(prompt.input_ids)
        if self.window is not None and n + max_tokens > self.window:
            if n > self.window:
                message = (f"the prompt has {n} tokens, more than the model's context window of "
                           f"{self.window} tokens")
            else:
                message = (f"the prompt has {n} tokens; with max_tokens={max_tokens} that is {n + max_tokens}, "
                           f"more than the model's context window of {self.window} tokens "
                           f"(at most {self.window - n} new tokens fit)")
            raise _error(message, where if n > self.window else "max_tokens", "context_length_exceeded")
        plan = None
        if steering.method == "guide" and prompt.guide_spans():
            plan = guide_plan_for(self.model, prompt, steering.layers)
            if not plan.terms:
                plan = None
        return Job(prompt, plan, sampling, max_tokens, stop, bool(body.get("stream", False)), loop, asyncio.Queue())

    def submit(self, job: Job) -> None:
        if self._thread is None or not self._thread.is_alive():
            raise RequestError("the server is not running", status=503, type="server_error", code="unavailable")
        if self._queue.qsize() >= self.max_queue:
            raise RequestError(f"the server is busy ({self.max_queue} requests waiting); try again later",
                               status=429, type="rate_limit_error", code="queue_full")
        self._queue.put(job)

    # ------------------------------------------------------------------ the worker

    def _work(self) -> None:
        pending: deque[Job] = deque()
        while True:  # one iteration per batch; it ends at the stop sentinel
            if not pending:
                first = self._queue.get()
                if first is None:
                    return
                pending.append(first)
                deadline = time.monotonic() + self.batch_wait
                while len(pending) < self.max_batch_size:
                    left = deadline - time.monotonic()
                    try:
                        nxt = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is None:
                        self._queue.put(None)  # stop after what is already pending
                        break
                    pending.append(nxt)
            else:  # take what arrived while the last batch ran
                while True:
                    try:
                        nxt = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is None:
                        for job in pending:
                            job.report(("error", RequestError("the server is stopping", status=503,
                                                              type="server_error", code="unavailable")))
                        return
                    pending.append(nxt)
            live = [job for job in pending if not job.cancelled.is_set()]
            self.stats.dropped += len(pending) - len(live)
            pending.clear()
            if not live:
                continue
            group = self._group(live)
            pending.extend(job for job in live if all(job is not g for g in group))
            self._run(group)

    def _group(self, jobs: list[Job]) -> list[Job]:
        """The oldest job and those that can share its generation (up to the batch size)."""
        first = jobs[0]
        if first.sampling.seed is not None:  # a seeded sample is reproducible only alone
            return [first]
        return [job for job in jobs if job.sampling == first.sampling][: self.max_batch_size]

    def _run(self, jobs: list[Job]) -> None:
        done = [False] * len(jobs)
        try:
            self._generate(jobs, done)
        except Exception as exc:  # noqa: BLE001 - the worker lives on; every request of the batch hears of it
            logger.exception("a batch of %d failed", len(jobs))
            error = exc if isinstance(exc, RequestError) else RequestError(
                f"generation failed: {exc}", status=500, type="server_error", code="generation_failed")
            for job, finished in zip(jobs, done):
                if not finished:
                    job.report(("error", error))

    def _generate(self, jobs: list[Job], done: list[bool]) -> None:
        rows = [list(job.prompt.input_ids) for job in jobs]
        plans = []
        if any(job.plan is not None for job in jobs):
            empty = BiasPlan.for_model(self.model)
            plans = [BiasPlan.stack([job.plan if job.plan is not None else empty for job in jobs])]

        def on_step(tokens: list[int]) -> list[bool]:
            for i, (job, token) in enumerate(zip(jobs, tokens)):
                if done[i]:
                    continue
                if job.cancelled.is_set():
                    done[i] = True
                    job.finish_reason = "cancelled"
                    self.stats.stopped += 1
                    continue
                if self.eos is not None and token == self.eos:
                    done[i] = True
                    self._finish(job, "stop")
                    continue
                job.tokens.append(int(token))
                self.stats.tokens += 1
                if self._advance(job):
                    done[i] = True
                elif len(job.tokens) >= job.max_tokens:
                    done[i] = True
                    self._finish(job, "length")
            return list(done)

        self.stats.batches += 1
        self.stats.rows.append(len(jobs))
        logger.debug("generating a batch of %d (at most %d new tokens)", len(jobs), max(j.max_tokens for j in jobs))
        out = generate_batch(self.model, rows, plans, max_new_tokens=max(job.max_tokens for job in jobs),
                             stop_at_eos=True, on_step=on_step, **jobs[0].sampling.kwargs())
        logger.debug("the batch ran on the %s backend", out.backend)
        for i, job in enumerate(jobs):
            if not done[i]:  # ended with the batch (every row reached its end)
                self._finish(job, "length" if len(job.tokens) >= job.max_tokens else "stop")

    def _decode(self, job: Job) -> str:
        with self.tokenizer_lock:
            return self.tokenizer.decode(job.tokens, skip_special_tokens=True)

    def _advance(self, job: Job) -> bool:
        """Stream what is certain of the new text; True when a stop string ended it."""
        if not job.stream and not job.stop:
            return False
        text = self._decode(job)
        if job.stop:
            start = max(0, job.sent - max(len(s) for s in job.stop))
            hits = [i for i in (text.find(s, start) for s in job.stop) if i >= 0]
            if hits:
                job.text = text[: min(hits)]
                self._finish(job, "stop", decoded=True)
                return True
        job.text = text
        if job.stream:
            safe = len(text) - (max(len(s) for s in job.stop) - 1 if job.stop else 0)
            if text.endswith("\ufffd"):  # a character cut between tokens
                safe = min(safe, len(text.rstrip("\ufffd")))
            if safe > job.sent:
                job.report(("delta", text[job.sent:safe]))
                job.sent = safe
        return False

    def _finish(self, job: Job, reason: str, *, decoded: bool = False) -> None:
        if not decoded:
            job.text = self._decode(job)
            if job.stop:
                hits = [i for i in (job.text.find(s) for s in job.stop) if i >= 0]
                if hits:
                    job.text, reason = job.text[: min(hits)], "stop"
        job.finish_reason = reason
        if job.stream and len(job.text) > job.sent:
            job.report(("delta", job.text[job.sent:]))
            job.sent = len(job.text)
        job.report(("done", reason))


# ---------------------------------------------------------------------------------------------- the app


def _usage(job: Job) -> dict[str, int]:
    n, m = len(job.prompt.input_ids), len(job.tokens)
    return {"prompt_tokens": n, "completion_tokens": m, "total_tokens": n + m}


def _extras(job: Job) -> dict[str, Any]:
    return {"spans": [s.as_dict() for s in job.prompt.spans]}


def create_app(
    model: Model,
    *,
    model_name: str | None = None,
    max_batch_size: int = 8,
    batch_wait: float = 0.01,
    max_queue: int = 256,
) -> Any:
    """The FastAPI application serving ``model`` (its worker starts and stops with the app).

    ``model_name``: the id clients send as ``model`` (default: the model's own name).
    ``max_batch_size``: requests generated together; ``batch_wait``: seconds the worker
    waits after the first waiting request for others to join its batch;
    ``max_queue``: waiting requests beyond which a request is refused (429).
    """
    name = model_name or str(getattr(model.cfg, "model_name", None) or "attnlens-model")
    engine = Engine(model, model_name=name, max_batch_size=max_batch_size, batch_wait=batch_wait,
                    max_queue=max_queue)

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        engine.start()
        try:
            yield
        finally:
            await asyncio.to_thread(engine.close)

    app = FastAPI(title="attnlens", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine

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

    async def read_body(request: Request, accepted: frozenset[str]) -> dict[str, Any]:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise _error(f"the request body is not valid JSON: {exc}", None, "invalid_json") from None
        if not isinstance(body, dict):
            raise _error("the request body must be a JSON object", None, "invalid_json")
        check_fields(body, accepted)
        model_id = body.get("model")
        if model_id != engine.model_name:
            raise RequestError(f"the model {model_id!r} does not exist; this server serves {engine.model_name!r}",
                               status=404, param="model", code="model_not_found")
        return body

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [_model_card(engine.model_name)]}

    @app.get("/v1/models/{model_id:path}")
    async def model_card(model_id: str) -> dict[str, Any]:
        if model_id != engine.model_name:
            raise RequestError(f"the model {model_id!r} does not exist; this server serves {engine.model_name!r}",
                               status=404, param="model", code="model_not_found")
        return _model_card(engine.model_name)

    async def complete(request: Request, body: dict[str, Any], item: Any, chat: bool) -> Any:
        job = engine.job(item, body, chat=chat, loop=asyncio.get_running_loop())
        engine.submit(job)
        kind = "chat.completion" if chat else "text_completion"
        ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        created = int(time.time())
        if job.stream:
            usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return StreamingResponse(_stream(job, ident, created, engine.model_name, chat, usage),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        try:
            while True:
                try:
                    event = await asyncio.wait_for(job.events.get(), timeout=0.25)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        logger.info("a client went away; its request is dropped")
                        job.cancel()
                        return None
                    continue
                if event[0] == "error":
                    raise event[1]
                if event[0] == "done":
                    break
        finally:
            job.cancel()  # no-op when done; frees the row when the handler is cancelled
        choice: dict[str, Any] = {"index": 0, "finish_reason": job.finish_reason}
        if chat:
            choice["message"] = {"role": "assistant", "content": job.text}
        else:
            choice.update(text=job.text, logprobs=None)
        return {"id": ident, "object": kind, "created": created, "model": engine.model_name, "choices": [choice],
                "usage": _usage(job), "attnlens": _extras(job)}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        body = await read_body(request, CHAT_FIELDS)
        return await complete(request, body, chat_messages(body), True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        body = await read_body(request, COMPLETION_FIELDS)
        return await complete(request, body, completion_prompt(body), False)

    return app


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

    ``app_kwargs`` go to :func:`create_app` (``model_name``, ``max_batch_size``, ``batch_wait``, ``max_queue``).
    """
    return RunningServer(create_app(model, **app_kwargs), bind(host, port))


def serve(model: Model, sock: socket.socket, **app_kwargs: Any) -> None:
    """Serve ``model`` on a bound socket until interrupted (the command line's ``attnlens serve``)."""
    import uvicorn

    config = uvicorn.Config(create_app(model, **app_kwargs), log_config=None, lifespan="on",
                            timeout_graceful_shutdown=5)
    logger.info("serving at %s", socket_url(sock))
    uvicorn.Server(config).run(sockets=[sock])
