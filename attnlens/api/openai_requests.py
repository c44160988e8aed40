"""The server's requests: OpenAI-style bodies parsed and checked on arrival, and the job each becomes.

A bad body is a :class:`RequestError` (an OpenAI-style 4xx error naming the field);
a good one becomes a :class:`Job` that the engine (:mod:`attnlens.api.engine`) runs.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..core.errors import AttnlensError
from ..core.validate import check_seed, is_int, resolve_layers
from ..prompts.prompt import Prompt
from ..steering.bias import BiasPlan
from ..steering.guide import check_delta

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
