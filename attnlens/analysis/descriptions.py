"""The client side of ``describe_head``: ask an OpenAI-compatible chat endpoint to describe a head.

Any server that speaks the chat-completions protocol works: OpenAI itself (the
key comes from ``OPENAI_API_KEY``), or a local one (Ollama, vLLM, llama.cpp's
server, LM Studio) through ``openai.OpenAI(base_url=..., api_key=...)``.

Retries: rate limits (429), server errors (5xx), timeouts and dropped
connections are retried with exponential backoff by the ``openai`` client itself
(its ``max_retries`` and ``timeout`` settings; a ``Retry-After`` header is
honoured). What is left after the retries, and what no retry can fix (no key,
401, 403, an unknown model), becomes a :class:`DescribeError` whose message says
what to change. The API key is never logged nor put in a message.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from html import escape
from typing import Any

from ..core.errors import DescribeError

logger = logging.getLogger(__name__)

#: The system message sent with every description request.
DEFAULT_SYSTEM_PROMPT = (
    "You are a mechanistic interpretability researcher and an expert in analysing the "
    "attention patterns of transformer language models."
)

#: Retries the clients built by :func:`make_client` make on 429, 5xx and timeouts.
DEFAULT_MAX_RETRIES = 4
#: Seconds the clients built by :func:`make_client` wait for one answer.
DEFAULT_TIMEOUT = 120.0
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

    key = api_key or os.environ.get(api_key_env) or None
    if key is None:
        if base_url is None:
            raise DescribeError(
                f"no OpenAI API key: set {api_key_env}, pass openai_api_key=..., or pass "
                "client=openai.OpenAI(base_url=..., api_key=...) for another endpoint"
            )
        key = NO_KEY_PLACEHOLDER
        logger.debug("no API key for %s; sending a placeholder", base_url)
    return openai.OpenAI(api_key=key, base_url=base_url, timeout=timeout, max_retries=max_retries)


def endpoint(client: Any) -> str:
    """The base URL a client talks to, for messages."""
    return str(getattr(client, "base_url", "the endpoint")).rstrip("/")


def _scrub(text: str, client: Any) -> str:
    key = getattr(client, "api_key", None)
    if isinstance(key, str) and len(key) >= 4 and key in text:
        text = text.replace(key, "***")
    return text


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
) -> Completion:
    """Send ``prompt`` (after an optional system message) and return the answer.

    Raises:
        DescribeError: the request failed after the client's retries, or cannot succeed.
    """
    import openai

    if not isinstance(model, str) or not model:
        raise DescribeError(f"openai_model must name a chat model, got {model!r}")
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": prompt})
    extra: dict[str, Any] = {}
    if temperature is not None:
        extra["temperature"] = temperature
    if max_tokens is not None:
        extra["max_tokens"] = max_tokens
    where = endpoint(client)
    retries = getattr(client, "max_retries", None)
    after = f" after {retries} retries" if retries else ""
    logger.info("asking %s at %s (%d prompt characters)", model, where, len(prompt))
    try:
        response = client.chat.completions.create(model=model, messages=messages, **extra)
    except openai.AuthenticationError as exc:
        raise DescribeError(
            f"{where} rejected the API key (401 Unauthorized): {_server_message(exc, client)}. "
            "Check the key (OPENAI_API_KEY, --api-key-env, or the client's api_key)",
            status=401,
        ) from None
    except openai.PermissionDeniedError as exc:
        raise DescribeError(
            f"{where} refused the request (403 Forbidden): {_server_message(exc, client)}", status=403
        ) from None
    except openai.NotFoundError as exc:
        raise DescribeError(
            f"model {model!r} not found at {where} (404): {_server_message(exc, client)}. "
            "Check openai_model (--openai-model) and the base URL (it usually ends in /v1)",
            status=404,
        ) from None
    except openai.RateLimitError as exc:
        raise DescribeError(
            f"{where} kept rate-limiting the requests (429){after}: {_server_message(exc, client)}",
            fatal=False,
            status=429,
        ) from None
    except openai.InternalServerError as exc:
        status = getattr(exc, "status_code", 500)
        raise DescribeError(
            f"{where} failed with a server error ({status}){after}: {_server_message(exc, client)}",
            fatal=False,
            status=status,
        ) from None
    except openai.APITimeoutError:
        timeout = getattr(client, "timeout", None)
        raise DescribeError(
            f"{where} did not answer within the client's timeout ({timeout}){after}", fatal=False
        ) from None
    except openai.APIConnectionError as exc:
        raise DescribeError(
            f"cannot reach {where}{after}: {_scrub(str(exc.__cause__ or exc), client)}. "
            "Is the server running, and is the base URL right?"
        ) from None
    except openai.APIStatusError as exc:
        status = getattr(exc, "status_code", None)
        raise DescribeError(
            f"{where} refused the request ({status}): {_server_message(exc, client)}", status=status
        ) from None
    choices = getattr(response, "choices", None) or []
    content = choices[0].message.content if choices else None
    if not content or not content.strip():
        raise DescribeError(f"{where} returned an empty answer for model {model!r}", fatal=False)
    return Completion(
        text=content.strip(),
        model=getattr(response, "model", model) or model,
        finish_reason=getattr(choices[0], "finish_reason", None),
    )


#: The text before the samples in a description prompt.
PROMPT_PREFIX = (
    "Below are examples of how one attention head of a transformer language model spreads its "
    "attention while the model reads the last token of a text. Each example gives the text, then, "
    "on the next line, the tokens that received more than the average attention of that row, as "
    '`"token" multiple` pairs separated by commas. The multiple is the token\'s attention divided '
    "by the average attention over the tokens the last token can see (2.0 means twice the "
    "average); the pairs are sorted from the highest multiple to the lowest."
)
#: The request after the samples (and after a custom prompt).
PROMPT_SUFFIX = (
    "Summarise what this attention head pays attention to, generalising from the specific "
    "examples. Be as specific as possible: consider the position of the attended tokens relative "
    "to the last token, what the tokens are and mean, the size of the multiples, and how these "
    "interact. Do not explain how attention heads or transformers work in general. Answer in one "
    "paragraph."
)


@dataclass(frozen=True)
class HeadDescription:
    """One row of :meth:`AttentionData.describe_heads`' table (``error`` is set when it failed)."""

    layer: int
    head: int
    description: str | None
    prompt: str
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class HeadDescriptions:
    """The results of :meth:`AttentionData.describe_heads`, one row per head, in (layer, head) order.

    Renders as a table in notebooks; ``str()`` gives a plain-text table.
    """

    rows: list[HeadDescription]

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[HeadDescription]:
        return iter(self.rows)

    def __getitem__(self, index: int) -> HeadDescription:
        return self.rows[index]

    def get(self, layer: int, head: int) -> HeadDescription:
        for row in self.rows:
            if (row.layer, row.head) == (layer, head):
                return row
        raise KeyError((layer, head))

    def to_records(self) -> list[dict[str, Any]]:
        return [asdict(row) for row in self.rows]

    def to_pandas(self) -> Any:
        import pandas as pd

        return pd.DataFrame(self.to_records())

    def _repr_html_(self) -> str:
        cells = "".join(
            f"<tr><td>{r.layer}</td><td>{r.head}</td>"
            f"<td style='text-align:left'>{escape(r.description or '')}"
            f"{'<b>error:</b> ' + escape(r.error) if r.error else ''}</td></tr>"
            for r in self.rows
        )
        return (
            "<table class='attnlens-descriptions'><tr><th>layer</th><th>head</th>"
            f"<th>description</th></tr>{cells}</table>"
        )

    def __str__(self) -> str:
        lines = []
        for r in self.rows:
            text = r.description if r.ok else f"error: {r.error}"
            lines.append(f"L{r.layer}H{r.head}: {text}")
        return "\n".join(lines)
