"""The server's requests: OpenAI-style bodies parsed and checked on arrival, and the job each becomes.

A bad body is a :class:`RequestError` (an OpenAI-style 4xx error naming the field);
a good one becomes a :class:`Job` that the engine (:mod:`attnlens.api.engine`) runs.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..core.errors import AttnlensError
from ..core.validate import check_seed, is_int, resolve_layers
from ..prompts.prompt import Prompt
from ..prompts.tags import BREAK, parse_tags
from ..steering.guide import check_delta

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
    #: the request's steerings for its one prompt (unpadded positions), one per method that has work
    steerings: list[Any]
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
    #: the steering methods that steer something in this prompt
    methods: tuple[str, ...] = ()

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


#: temperatures above 0 but below this are read as 0: greedy. Sampling at them is the most likely token but
#: for near ties, and dividing the logits by them overflows to inf (a temperature of 1e-300 made the sampler fail).
MIN_TEMPERATURE = 0.01


def parse_sampling(body: dict[str, Any]) -> Sampling:
    """OpenAI's sampling fields as the pipeline's: no ``temperature`` (the pipeline's default) or 0 is greedy,
    and so is a temperature below :data:`MIN_TEMPERATURE`."""
    temperature = _number(body, "temperature", 0.0, 2.0)
    if temperature is not None and temperature < MIN_TEMPERATURE:
        temperature = 0.0
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
    """A request's steering: the methods with their checked settings, and the substrings to emphasise.

    ``steer`` is the pipeline's ``steer`` argument (``{method: settings}``; empty: nothing steered);
    ``delta_mid`` is the strength GUIDE's tags carry in the prompt's spans.
    """

    steer: dict[str, dict[str, Any]]
    delta_mid: float
    layers: Any
    emphasize: tuple[str, ...] = ()
    #: whether the request named its methods (False: the default, GUIDE on the tags)
    explicit: bool = True

    @property
    def method(self) -> str:
        """The one method named (``"none"`` when nothing is steered, ``"+"``-joined when several are)."""
        return "+".join(self.steer) or "none"


def served_methods() -> tuple[str, ...]:
    """What ``attnlens.method`` and the keys of ``attnlens.steer`` accept: every registered steering method
    (a plugin's too, once registered in the server's process) and ``"none"``."""
    from .. import steering as registry

    return registry.methods() + ("none",)


def __getattr__(name: str) -> Any:  # METHODS follows the registry (PEP 562)
    if name == "METHODS":
        return served_methods()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def parse_steering(body: dict[str, Any], n_layers: int) -> Steering:
    """The ``attnlens`` body field, with the pipeline's defaults for what it leaves out.

    ``steer`` (``{method: settings}``, or a list) names any registered steering method with its
    parameters, checked by the method's own :class:`~attnlens.steering.registry.Param` s; without it,
    ``method`` (default ``"guide"``) names one method with its default settings. ``delta_mid`` and
    ``layers`` go to every method that takes them (GUIDE's keys, kept as the default entry), unless
    its own settings give them. ``emphasize`` lists the substrings that methods steering
    emphasised text (PASTA, SpotLight) act on.
    """
    from .. import steering as registry
    from ..steering import description

    given = body.get("attnlens")
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise _error("attnlens must be an object such as {\"delta_mid\": 2.0, \"layers\": \"all\"}", "attnlens",
                     "invalid_type")
    accepted = (*DEFAULT_SETTINGS, "steer", "emphasize")
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        raise _error(f"unknown attnlens setting(s) {', '.join(unknown)}; accepted: {', '.join(accepted)}",
                     f"attnlens.{unknown[0]}", "unknown_parameter")
    settings = {**DEFAULT_SETTINGS, **given}
    try:
        delta = check_delta(settings["delta_mid"])
    except AttnlensError as exc:
        raise _error(str(exc), "attnlens.delta_mid", "invalid_value") from None
    layers = settings["layers"]
    try:
        resolve_layers(layers, n_layers)
    except (AttnlensError, TypeError) as exc:
        raise _error(f"bad layers {layers!r}: {exc}", "attnlens.layers", "invalid_value") from None
    emphasize = given.get("emphasize", [])
    if isinstance(emphasize, str):
        emphasize = [emphasize]
    if not isinstance(emphasize, list) or not all(isinstance(s, str) and s.strip() for s in emphasize):
        raise _error("attnlens.emphasize must be a non-empty string or a list of them", "attnlens.emphasize",
                     "invalid_value")
    offered = served_methods()
    if "steer" in given:
        if "method" in given:
            raise _error("give either attnlens.method or attnlens.steer, not both", "attnlens.method",
                         "invalid_value")
        try:
            entries = description.entries(given["steer"], "attnlens.steer")
        except description.DescriptionError as exc:
            raise _error(str(exc), exc.where, "invalid_value") from None
    elif "method" not in given and "guide" not in registry.methods():
        entries = []  # no GUIDE registered: a tagged prompt is refused when it is read (engine.job)
    else:
        method = settings["method"]
        if not isinstance(method, str) or method not in offered:
            raise _error(f"unknown steering method {method!r}; the server offers {', '.join(offered)}",
                         "attnlens.method", "invalid_value")
        entries = [] if method == "none" else [(method, {}, "attnlens.method")]
    steer: dict[str, dict[str, Any]] = {}
    for name, values, where in entries:
        method = registry.get(name)
        for key, value in (("delta_mid", delta), ("layers", layers)):
            if key not in values and any(p.name == key for p in method.params):
                values[key] = value
        try:
            method.settings(values)
        except AttnlensError as exc:
            raise _error(str(exc), where, "invalid_value") from None
        except Exception as exc:  # noqa: BLE001 - a method's own check is user code: its error names the input
            raise _error(f"{name}: bad settings {values!r}: {exc}", where, "invalid_value") from None
        steer[name] = values
    wants = [n for n in steer if registry.get(n).spans == "emphasis"]
    if wants and not emphasize:
        raise _error(f"{' and '.join(wants)} steer(s) emphasised text: give the substrings in attnlens.emphasize",
                     "attnlens.emphasize", "invalid_value")
    if emphasize and not wants:
        raise _error("attnlens.emphasize needs a steering method that steers emphasised text (e.g. pasta)",
                     "attnlens.emphasize", "invalid_value")
    return Steering(steer, delta, layers, tuple(emphasize), explicit="steer" in given or "method" in given)


def parse_max_tokens(body: dict[str, Any], names: Sequence[str]) -> int:
    for name in names:
        value = body.get(name)
        if value is not None:
            if not is_int(value) or value < 1:
                raise _error(f"{name} must be a positive integer, got {value!r}", name, "invalid_value")
            return int(value)
    return DEFAULT_MAX_TOKENS


#: the deepest nesting of arrays and objects a request body may have (an OpenAI body needs about 5)
MAX_JSON_DEPTH = 64

# what the depth scan looks at: an escape (two characters, so an escaped quote is skipped), a quote, a bracket
_JSON_MARKS = re.compile(r'\\.|["\[\]{}]', re.S)


def _nested_deeper(text: str, limit: int) -> bool:
    """Whether the JSON ``text`` nests arrays and objects deeper than ``limit``: one pass, no recursion
    (brackets inside strings do not count)."""
    if text.count("[") + text.count("{") <= limit:
        return False
    depth, in_string = 0, False
    for match in _JSON_MARKS.finditer(text):
        mark = match.group()
        if in_string:
            in_string = mark != '"'
        elif mark == '"':
            in_string = True
        elif mark in "[{":
            depth += 1
            if depth > limit:
                return True
        elif mark in "]}":
            depth -= 1
    return False


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value (numbers must be finite)")


def parse_body(raw: bytes) -> dict[str, Any]:
    """A request body as a JSON object; a :class:`RequestError` (400, ``invalid_json``) says what is wrong.

    The nesting depth is checked before the body is parsed (at most :data:`MAX_JSON_DEPTH`), so a body of
    100,000 ``[`` is refused in one pass over it; ``NaN`` and ``Infinity`` are not JSON and are refused too.
    """
    try:
        text = raw.decode(json.detect_encoding(raw))
    except UnicodeDecodeError as exc:
        raise _error(f"the request body is not valid JSON: {exc}", None, "invalid_json") from None
    if _nested_deeper(text, MAX_JSON_DEPTH):
        raise _error(f"the request body nests arrays and objects more than {MAX_JSON_DEPTH} deep", None,
                     "invalid_json")
    try:
        body = json.loads(text, parse_constant=_no_constant)
    except RecursionError:  # only with a recursion limit below the nesting allowed; never a 500
        raise _error("the request body nests arrays and objects too deeply", None, "invalid_json") from None
    except ValueError as exc:  # not JSON, a non-finite constant, or an integer too long to read
        raise _error(f"the request body is not valid JSON: {exc}", None, "invalid_json") from None
    if not isinstance(body, dict):
        raise _error("the request body must be a JSON object", None, "invalid_json")
    return body


def _shown(value: Any) -> str:
    """``value`` as JSON, cut to 60 characters."""
    shown = json.dumps(value, ensure_ascii=False)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def _same(value: Any, *allowed: Any) -> bool:
    """``value`` is one of ``allowed`` with its type too: ``true`` is not 1 and 0 is not ``false`` to a user."""
    return any(type(value) is type(a) and value == a for a in allowed)


#: the neutral values of the fields the server takes but does not implement (None: the field left out)
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "presence_penalty": (0, 0.0), "frequency_penalty": (0, 0.0), "logprobs": (False, 0), "top_logprobs": (0,),
    "echo": (False,), "suffix": (), "best_of": (1,),
}


def check_fields(body: dict[str, Any], accepted: frozenset[str]) -> None:
    """Unknown fields, and the fields the server only takes at one value, each refused by name."""
    unknown = sorted(set(body) - accepted)
    if unknown:
        raise _error(f"unrecognized request argument(s): {', '.join(unknown)}", unknown[0], "unknown_parameter")
    n = body.get("n")
    if n is not None and not _same(n, 1):
        raise _error(f"the server makes one choice per request: n must be the integer 1, got {_shown(n)}", "n",
                     "invalid_value")
    for name, neutral in _NEUTRAL.items():
        value = body.get(name)
        if value is not None and not _same(value, *neutral):
            shown = " or ".join(json.dumps(v) for v in neutral)
            advice = f" (leave it out or {shown})" if shown else " (leave it out)"
            raise _error(f"{name} is not supported{advice}, got {_shown(value)}", name, "unsupported_parameter")
    if not isinstance(body.get("stream", False), bool):
        raise _error("stream must be true or false", "stream", "invalid_type")
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict) or set(options) - {"include_usage"}:
            raise _error("stream_options takes only include_usage", "stream_options", "invalid_value")
        usage = options.get("include_usage")
        if usage is not None and not isinstance(usage, bool):
            raise _error(f"stream_options.include_usage must be true or false, got {_shown(usage)}",
                         "stream_options.include_usage", "invalid_type")


# something written like a tag: ``<`` and ``!``/``?`` marks and ``->``, or ``<-``, marks and ``>``, with the run of
# backslashes before it (an odd run makes it text, as for the real tags)
_TAG_LIKE = re.compile(r"(?<!\\)(\\*)(<(?:[!?]+->|-[!?]+>))")
_TAGS = frozenset(f"<{m}->" for m in ("!", "!!", "!!!", "?")) | frozenset(f"<-{m}>" for m in ("!", "!!", "!!!", "?"))


def check_tag_names(text: str, what: str, param: str) -> None:
    """Refuse a tag that is none of attnlens' (``<!!!!->``, ``<??->``, ``<-!?>``): a mistyped tag would
    otherwise reach the model as text, unsteered. ``what`` names the text in the message."""
    for match in _TAG_LIKE.finditer(text):
        tag = match.group(2)
        if len(match.group(1)) % 2 or tag in _TAGS:
            continue
        raise _error(f"{what} has an unknown tag {tag!r} at character {match.start(2)}; the tags are "
                     f"<!-> ... <-!>, <!!-> ... <-!!> and <!!!-> ... <-!!!> (to send {tag!r} as text, write "
                     f"{tag[0] + BREAK + tag[1:]!r})", param, "invalid_prompt")


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
        check_tag_names(content, f"message {i}", "messages")
        role = message.get("role")
        out.append({"role": "system" if role == "developer" else role, "content": content})
    return out


def completion_prompt(body: dict[str, Any]) -> str:
    """The completion's prompt: one string, with text once its tags are removed."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise _error("prompt must be a string (one prompt per request)", "prompt", "invalid_type")
    check_tag_names(prompt, "the prompt", "prompt")
    try:
        empty = not parse_tags(prompt).text
    except AttnlensError:  # bad tags: the engine's parse names them
        empty = False
    if empty:
        raise _error("the prompt is empty" + (" once its tags are removed" if prompt else "")
                     + ": a completion continues a text", "prompt", "invalid_prompt")
    return prompt

# ---------------------------------------------------------------------------------------------- the engine
