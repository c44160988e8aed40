"""Head descriptions: the prompt a chat model is asked with, and the table of answers.

The request itself (retries, deadlines, errors, keys kept out of messages) is
:mod:`attnlens.analysis.chat_client`; its public names are re-exported here.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from html import escape
from typing import Any

from ..core.errors import DescribeError
from ..core.records import Showable
from .chat_client import (
    DEFAULT_DEADLINE,
    DEFAULT_MAX_RETRIES,
    DEFAULT_SYSTEM_PROMPT,
    DEFAULT_TIMEOUT,
    NO_KEY_PLACEHOLDER,
    Completion,
    check_seconds,
    complete,
    endpoint,
    make_client,
)

__all__ = [
    "DEFAULT_DEADLINE", "DEFAULT_MAX_RETRIES", "DEFAULT_SYSTEM_PROMPT", "DEFAULT_TIMEOUT", "NO_KEY_PLACEHOLDER",
    "PROMPT_PREFIX", "PROMPT_SUFFIX", "Completion", "DescribeError", "HeadDescription", "HeadDescriptions",
    "check_seconds", "complete", "endpoint", "make_client",
]


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
class HeadDescription(Showable):
    """One row of :meth:`AttentionData.describe_heads`' table (``error`` is set when it failed).

    ``show()`` / ``view()``: the row as a one-row table (that of :class:`HeadDescriptions`); ``to_json()``."""

    layer: int
    head: int
    description: str | None
    prompt: str
    error: str | None = None
    #: the description's held-out score (share of attention on the predicted keys) and a control's
    score: float | None = None
    control_score: float | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class HeadDescriptions(Showable):
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
