"""The server's engine: one worker thread owns the model and runs every generation.

Requests (:mod:`attnlens.api.openai_requests`) are queued; the worker takes what
is waiting, groups requests that can share a generation, and generates each group
as one left-padded batch with one bias plan per row.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ..core.errors import AttnlensError
from ..core.model import Model, context_window
from ..core.validate import is_int
from ..runtime.generate import generate_batch
from ..steering.bias import BiasPlan
from ..steering.guide import guide_plan_for
from . import chain
from .openai_requests import (
    Job,
    RequestError,
    _error,
    parse_max_tokens,
    parse_sampling,
    parse_steering,
    parse_stop,
)

logger = logging.getLogger(__name__)

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
