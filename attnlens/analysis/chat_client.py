"""The client side of ``describe_head``: ask an OpenAI-compatible chat endpoint to describe a head.

Any server that speaks the chat-completions protocol works: OpenAI itself (the
key comes from ``OPENAI_API_KEY``), or a local one (Ollama, vLLM, llama.cpp's
server, LM Studio) through ``openai.OpenAI(base_url=..., api_key=...)``.

Retries and time limits: rate limits (429), server errors (5xx), timeouts and
dropped connections are retried with exponential backoff (a ``Retry-After``
header is honoured), up to the client's ``max_retries`` (default
:data:`DEFAULT_MAX_RETRIES` = 2); each attempt waits at most the client's
``timeout`` (default :data:`DEFAULT_TIMEOUT` = 30 s); and the whole request,
retries included, ends after ``deadline`` seconds (default
:data:`DEFAULT_DEADLINE` = 90 s), also when a server trickles its answer. The
command line sets them with ``--timeout``, ``--max-retries`` and ``--deadline``.

What is left after the retries, and what no retry can fix (no key, 401, 403, an
unknown model, a body that is not a chat completion: HTML, a JSON list,
malformed JSON), becomes a :class:`DescribeError` whose message says what came
back or what to change. The API key is never logged nor put in a message: a base URL's
query (``?api-key=KEY``) is sent as the client's default query, and a filter on the
HTTP stack's loggers (:func:`guard_logs`) rewrites their lines that would show it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..core.errors import DescribeError
from ..core.validate import redact, redact_url, url_secrets

logger = logging.getLogger(__name__)

#: The system message sent with every description request.
DEFAULT_SYSTEM_PROMPT = (
    "You are a mechanistic interpretability researcher and an expert in analysing the "
    "attention patterns of transformer language models."
)

#: Retries the clients built by :func:`make_client` make on 429, 5xx and timeouts.
DEFAULT_MAX_RETRIES = 2
#: Seconds the clients built by :func:`make_client` wait for one answer.
DEFAULT_TIMEOUT = 30.0
#: Seconds :func:`complete` waits in all, retries included.
DEFAULT_DEADLINE = 90.0
#: Stands in for the key of a local endpoint that needs none (the client insists on one).
NO_KEY_PLACEHOLDER = "not-needed"



@dataclass(frozen=True)
class Completion:
    """One answer: its text and what the server said about it."""

    text: str
    model: str
    finish_reason: str | None = None


def make_client(
    api_key: str | None = None,
    *,
    base_url: str | None = None,
    api_key_env: str = "OPENAI_API_KEY",
    timeout: float = DEFAULT_TIMEOUT,
    max_retries: int = DEFAULT_MAX_RETRIES,
) -> Any:
    """An ``openai.OpenAI`` client for ``base_url`` (default: OpenAI's own API).

    The key is ``api_key``, else the environment variable ``api_key_env``. The
    default endpoint needs one (:class:`DescribeError` otherwise); a custom
    ``base_url`` may do without (a placeholder is sent, as local servers ignore it).
    """
    import openai

    check_seconds(timeout, "timeout")
    if not isinstance(max_retries, int) or isinstance(max_retries, bool) or max_retries < 0:
        raise DescribeError(f"max_retries must be a non-negative integer, got {max_retries!r}")
    key = api_key or os.environ.get(api_key_env) or None
    if key is None:
        if base_url is None:
            raise DescribeError(
                f"no OpenAI API key: set {api_key_env}, pass openai_api_key=..., or pass "
                "client=openai.OpenAI(base_url=..., api_key=...) for another endpoint"
            )
        key = NO_KEY_PLACEHOLDER
        logger.debug("no API key for %s; sending a placeholder", redact_url(base_url))
    base, query = _split_query(base_url)
    client = openai.OpenAI(api_key=key, base_url=base, default_query=query or None, timeout=timeout,
                           max_retries=max_retries)
    guard_logs(*_client_secrets(client))
    return client


def _split_query(base_url: Any) -> tuple[Any, dict[str, str]]:
    """``base_url`` without its query, and the query's parameters: the client sends them with every
    request (a base URL such as ``.../v1?api-key=KEY``, which openai would otherwise join into a
    wrong path)."""
    from urllib.parse import parse_qsl, urlsplit, urlunsplit

    if base_url is None:
        return None, {}
    try:
        parts = urlsplit(str(base_url))
    except ValueError:
        return base_url, {}
    if not parts.query:
        return base_url, {}
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")), query


#: the loggers of the HTTP stack under openai's client, which log request URLs at INFO and DEBUG; every
#: other logger of these packages (and of their renamed forks: openai builds on ``httpx2`` and
#: ``httpcore2`` in some releases) that exists when :func:`guard_logs` runs gets the filter too
HTTP_LOGGERS = ("httpx", "httpcore.connection", "httpcore.http11", "httpcore.http2", "httpcore.proxy",
                "httpcore.socks", "openai", "openai._base_client", "openai._response", "openai._legacy_response")
_HTTP_LOGGER_NAME = re.compile(r"(httpx|httpcore)\w*(\.|$)|openai(\.|$)")
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s\"'<>]+")
#: the secrets of the clients in use (keys, key-like query values), kept out of the HTTP stack's log lines
_KNOWN_SECRETS: set[str] = set()


class _RedactSecrets(logging.Filter):
    """Rewrites a log record whose text carries a secret: a URL's user info and key-like query values
    become ``***`` (as :func:`~attnlens.core.validate.redact_url` shows them), and so does any secret
    :func:`guard_logs` was given; a traceback attached to the record is cleaned the same way."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a record that cannot be formatted is left to logging
            return True
        cleaned = _clean(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            text = logging.Formatter().formatException(record.exc_info)
            if _clean(text) != text:  # set only then: a handler's own formatter formats the others
                record.exc_text = _clean(text)
        elif record.exc_text:
            record.exc_text = _clean(record.exc_text)
        return True


def _clean(text: str) -> str:
    def url(match: re.Match[str]) -> str:
        found = match.group(0)
        return redact_url(found) if url_secrets(found) else found

    return redact(_URL_IN_TEXT.sub(url, text), *tuple(_KNOWN_SECRETS))


_GUARD = _RedactSecrets()


def _client_secrets(client: Any) -> list[str]:
    """The secrets a client carries: its key, and those of its base URL and default query."""
    base = getattr(client, "base_url", None)
    query = getattr(client, "default_query", None)
    hidden = [str(v) for k, v in query.items() if v and url_secrets(f"x://h/?{k}=xxxx")] \
        if isinstance(query, dict) else []
    key = getattr(client, "api_key", None)
    return [*([key] if isinstance(key, str) and key != NO_KEY_PLACEHOLDER else []), *hidden,
            *url_secrets(base if base is not None else "")]


def guard_logs(*secrets: str) -> None:
    """Keep secrets out of the HTTP stack's log lines: httpx logs every request's URL at INFO (with a
    ``?api-key=`` query, the key), httpcore and openai more at DEBUG. A filter on each of
    :data:`HTTP_LOGGERS` rewrites such a record before any handler sees it: key-like values in any
    URL, and each of ``secrets`` anywhere (idempotent)."""
    _KNOWN_SECRETS.update(s for s in secrets if isinstance(s, str) and len(s) >= 4)
    present = [name for name in list(logging.Logger.manager.loggerDict) if _HTTP_LOGGER_NAME.match(name)]
    for name in dict.fromkeys((*HTTP_LOGGERS, *present)):
        log = logging.getLogger(name)
        if _GUARD not in log.filters:
            log.addFilter(_GUARD)


def check_seconds(value: Any, what: str) -> float:
    """A positive, finite number of seconds, else a :class:`DescribeError` naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise DescribeError(f"{what} must be a positive number of seconds, got {value!r}")
    return float(value)


def endpoint(client: Any) -> str:
    """The base URL a client talks to, for messages and logs: without user info or key-like query values."""
    base = getattr(client, "base_url", None)
    return "the endpoint" if base is None else redact_url(base).rstrip("/")


def _scrub(text: str, client: Any) -> str:
    """``text`` without the client's key and without the secrets its base URL and default query carry."""
    base = getattr(client, "base_url", None)
    if base is not None:
        raw = str(base)
        text = text.replace(raw, redact_url(raw)).replace(raw.rstrip("/"), redact_url(raw).rstrip("/"))
    return _clean(redact(text, *_client_secrets(client)))


def _server_message(exc: Any, client: Any) -> str:
    body = getattr(exc, "body", None)
    message = None
    if isinstance(body, dict):
        error = body.get("error", body)
        message = error.get("message") if isinstance(error, dict) else error
    if not message:
        message = getattr(exc, "message", None) or str(exc)
    return _scrub(str(message), client).strip().rstrip(".")


def complete(
    client: Any,
    model: str,
    prompt: str,
    *,
    system: str | None = DEFAULT_SYSTEM_PROMPT,
    temperature: float | None = None,
    max_tokens: int | None = None,
    deadline: float = DEFAULT_DEADLINE,
) -> Completion:
    """Send ``prompt`` (after an optional system message) and return the answer.

    Retries as the module docstring says; ``deadline`` bounds the whole call in seconds.

    Raises:
        DescribeError: the request failed after the retries, ran past ``deadline``,
            answered something that is not a chat completion, or cannot succeed.
    """
    import openai

    guard_logs(*_client_secrets(client))  # also for a client the caller built, whose base URL may carry a key
    if not isinstance(model, str) or not model:
        raise DescribeError(f"openai_model must name a chat model, got {model!r}")
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": prompt})
    extra: dict[str, Any] = {}
    if temperature is not None:
        extra["temperature"] = temperature
    if max_tokens is not None:
        extra["max_tokens"] = max_tokens
    deadline = check_seconds(deadline, "deadline")
    where = endpoint(client)
    retries = getattr(client, "max_retries", None)
    retries = retries if isinstance(retries, int) and not isinstance(retries, bool) and retries >= 0 else 0
    # one attempt per call (the loop below retries), so the deadline covers everything
    single = client.with_options(max_retries=0) if callable(getattr(client, "with_options", None)) else client
    logger.info("asking %s at %s (%d prompt characters)", model, where, len(prompt))
    start = time.monotonic()
    attempt = 0
    while True:
        remaining = deadline - (time.monotonic() - start)
        # each attempt waits for the server at most what is left of the deadline
        attempt_client, cut = _bounded(single, remaining)
        try:
            response = _within(remaining, lambda cancel, opened: _create(
                attempt_client, cancel=cancel, opened=opened, model=model, messages=messages, **extra))
        except _DeadlineExceeded:
            raise _past_deadline(where, deadline, attempt) from None
        except openai.APIError as exc:
            if cut and isinstance(exc, openai.APITimeoutError):
                # the attempt's timeout was cut to what was left of the deadline and
                # fired before the watchdog: the deadline ran out, not the client's timeout
                raise _past_deadline(where, deadline, attempt) from None
            wait = _retry_wait(exc, attempt)
            remaining = deadline - (time.monotonic() - start)
            if wait is not None and attempt < retries and wait < remaining:
                logger.info("%s: %s; retrying in %.2f s", where, type(exc).__name__, wait)
                time.sleep(wait)
                attempt += 1
                continue
            after = f" after {attempt} retries" if attempt else ""
            raise _failure(exc, client, where, model, after) from None
        break
    return _read_completion(response, client, where, model)


class _DeadlineExceeded(Exception):
    pass


def _past_deadline(where: str, deadline: float, attempt: int) -> DescribeError:
    return DescribeError(
        f"{where} gave no answer within the deadline of {deadline:g} s ({attempt + 1} attempt(s)); "
        "raise it with deadline=... (--deadline)",
        fatal=False,
    )


@dataclass(frozen=True)
class _Body:
    """A whole HTTP answer, read within the deadline."""

    content: bytes
    headers: Any
    status_code: int


def _bounded(client: Any, seconds: float) -> tuple[Any, bool]:
    """``client`` with its timeout cut to ``seconds`` (what is left of the deadline).

    Returns the client and whether the deadline, not the client's own timeout, bounds
    the attempt (so a timeout it raises means the deadline ran out).
    """
    timeout = getattr(client, "timeout", None)
    if not callable(getattr(client, "with_options", None)) or seconds <= 0:
        return client, False
    own = float(timeout) if isinstance(timeout, (int, float)) and not isinstance(timeout, bool) else None
    limit = seconds if own is None else min(own, seconds)
    try:
        return client.with_options(timeout=limit), own is None or seconds <= own
    except (TypeError, ValueError):
        return client, False


def _within(seconds: float, call: Callable[[threading.Event, dict[str, Any]], Any]) -> Any:
    """``call(cancel, opened)`` in a worker thread, or :class:`_DeadlineExceeded` after ``seconds``.

    At the deadline the worker is told to stop (``cancel``) and the connection of the
    answer it is reading (``opened["response"]``) is shut down, so the worker ends and
    the connection closes; the worker is joined before this returns. Only a call that
    cannot be interrupted at all (no connection to shut) is left to end on its own:
    its attempt's timeout was cut to the deadline.
    """
    if seconds <= 0:
        raise _DeadlineExceeded
    box: dict[str, Any] = {}
    cancel = threading.Event()
    opened: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = call(cancel, opened)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["error"] = exc

    worker = threading.Thread(target=run, name="attnlens-chat", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        cancel.set()
        _shut(opened.get("response"))
        worker.join(_GRACE_S)
        if worker.is_alive():
            logger.debug("the chat request's worker is still waiting for the server after the deadline")
        raise _DeadlineExceeded
    if "error" in box:
        raise box["error"]
    return box["value"]


#: seconds a worker gets to end after its connection is shut at the deadline
_GRACE_S = 2.0


def _shut(response: Any) -> None:
    """Shut the connection an httpx response is read from (its ``network_stream`` extension), waking a
    reader blocked on it."""
    import socket

    stream = getattr(response, "extensions", {}).get("network_stream") if response is not None else None
    sock = stream.get_extra_info("socket") if stream is not None and hasattr(stream, "get_extra_info") else None
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _create(client: Any, *, cancel: threading.Event, opened: dict[str, Any], **kwargs: Any) -> Any:
    """The whole HTTP answer when the client can stream it (read chunk by chunk, stopping when ``cancel``
    is set), else the raw or parsed response the client offers."""
    stream_api = getattr(client.chat.completions, "with_streaming_response", None)
    if stream_api is None:
        raw_api = getattr(client.chat.completions, "with_raw_response", None)
        if raw_api is None:
            return client.chat.completions.create(**kwargs)
        return raw_api.create(**kwargs).http_response
    import httpx

    with stream_api.create(**kwargs) as response:
        http = response.http_response
        opened["response"] = http
        chunks = []
        try:
            for chunk in response.iter_bytes():
                if cancel.is_set():
                    raise _DeadlineExceeded
                chunks.append(chunk)
        except httpx.TransportError as exc:  # the body broke off: a dropped connection, as openai names it
            import openai

            if cancel.is_set():
                raise _DeadlineExceeded from None
            raise openai.APIConnectionError(message=f"the answer broke off: {exc}", request=http.request) from exc
        return _Body(b"".join(chunks), http.headers, http.status_code)


def _retry_wait(exc: Exception, attempt: int) -> float | None:
    """Seconds to wait before retrying after ``exc``, or None when a retry cannot help."""
    import openai

    if isinstance(exc, (openai.APITimeoutError, openai.APIConnectionError)):
        if isinstance(exc, openai.APIConnectionError) and not isinstance(exc, openai.APITimeoutError):
            return None if attempt >= 1 else 0.5  # one more try for a dropped connection
        return min(0.5 * 2**attempt, 8.0)
    status = getattr(exc, "status_code", None)
    if status == 429 or (isinstance(status, int) and status >= 500):
        headers = getattr(getattr(exc, "response", None), "headers", None) or {}
        for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
            try:
                value = float(headers.get(name)) * scale
            except (TypeError, ValueError):
                continue
            if 0 <= value <= 60:
                return value
        return min(0.5 * 2**attempt, 8.0)
    return None


def _failure(exc: Exception, client: Any, where: str, model: str, after: str) -> DescribeError:
    import openai

    if isinstance(exc, openai.AuthenticationError):
        return DescribeError(
            f"{where} rejected the API key (401 Unauthorized): {_server_message(exc, client)}. "
            "Check the key (OPENAI_API_KEY, --api-key-env, or the client's api_key)",
            status=401,
        )
    if isinstance(exc, openai.PermissionDeniedError):
        return DescribeError(f"{where} refused the request (403 Forbidden): {_server_message(exc, client)}", status=403)
    if isinstance(exc, openai.NotFoundError):
        return DescribeError(
            f"model {model!r} not found at {where} (404): {_server_message(exc, client)}. "
            "Check openai_model (--openai-model) and the base URL (it usually ends in /v1)",
            status=404,
        )
    if isinstance(exc, openai.RateLimitError):
        return DescribeError(
            f"{where} kept rate-limiting the requests (429){after}: {_server_message(exc, client)}",
            fatal=False, status=429,
        )
    if isinstance(exc, openai.InternalServerError):
        status = getattr(exc, "status_code", 500)
        return DescribeError(
            f"{where} failed with a server error ({status}){after}: {_server_message(exc, client)}",
            fatal=False, status=status,
        )
    if isinstance(exc, openai.APITimeoutError):
        timeout = getattr(client, "timeout", None)
        return DescribeError(f"{where} did not answer within the client's timeout ({timeout}){after}", fatal=False)
    if isinstance(exc, openai.APIConnectionError):
        return DescribeError(
            f"cannot reach {where}{after}: {_scrub(str(exc.__cause__ or exc), client)}. "
            "Is the server running, and is the base URL right?"
        )
    status = getattr(exc, "status_code", None)
    return DescribeError(f"{where} refused the request ({status}): {_server_message(exc, client)}", status=status)


def _shown(text: str, client: Any, limit: int = 120) -> str:
    text = _scrub(text, client)
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _read_completion(response: Any, client: Any, where: str, model: str) -> Completion:
    """The answer in a chat-completions response; anything else is a DescribeError saying what came back."""
    if hasattr(response, "content") and hasattr(response, "headers") and hasattr(response, "status_code"):
        kind = response.headers.get("content-type", "no content type")
        raw = response.content
        try:
            body_text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise DescribeError(f"{where} answered {len(raw)} bytes that are not UTF-8 ({kind}), "
                                "not a chat completion", fatal=False) from None
        try:
            body = json.loads(body_text)
        except (json.JSONDecodeError, RecursionError):
            what = "an HTML page" if body_text.lstrip()[:1] == "<" else "a body that is not JSON"
            raise DescribeError(
                f"{where} answered {what} ({kind}), not a chat completion: {_shown(body_text, client)}. "
                "Is the base URL an OpenAI-compatible endpoint (it usually ends in /v1)?",
                fatal=False,
            ) from None
        choices = body.get("choices") if isinstance(body, dict) else None
        if not isinstance(body, dict) or not isinstance(choices, list):
            raise DescribeError(
                f"{where} answered JSON that is not a chat completion (a {type(body).__name__}"
                f"{' without a choices list' if isinstance(body, dict) else ''}): {_shown(body_text, client)}",
                fatal=False,
            )
        first = choices[0] if choices else None
        message = first.get("message") if isinstance(first, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if choices and not isinstance(content, (str, type(None))):
            raise DescribeError(f"{where} answered a message whose content is not text: {_shown(body_text, client)}",
                                fatal=False)
        answered_model = body.get("model")
        finish = first.get("finish_reason") if isinstance(first, dict) else None
    else:  # a client that returns parsed objects
        choices = getattr(response, "choices", None)
        if not isinstance(choices, (list, tuple)):
            raise DescribeError(f"{where} answered {type(response).__name__}, not a chat completion: "
                                f"{_shown(str(response), client)}", fatal=False)
        first = choices[0] if choices else None
        content = getattr(getattr(first, "message", None), "content", None)
        if content is not None and not isinstance(content, str):
            raise DescribeError(f"{where} answered a message whose content is not text", fatal=False)
        answered_model = getattr(response, "model", None)
        finish = getattr(first, "finish_reason", None)
    if not content or not content.strip():
        raise DescribeError(f"{where} returned an empty answer for model {model!r}", fatal=False)
    return Completion(
        text=content.strip(),
        model=answered_model if isinstance(answered_model, str) and answered_model else model,
        finish_reason=finish if isinstance(finish, str) else None,
    )
