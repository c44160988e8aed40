"""The multiples maths: how far above a row's average attention each key is, and the rows (samples) it gives."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float

from ..core.records import Showable


@dataclass(frozen=True)
class TokenMultiple:
    """One above-average key of a row: its token string, position and multiple."""

    token: str
    key: int
    multiple: float


@dataclass(frozen=True)
class Sample:
    """One row: query ``query`` of text ``text_index``, its above-average keys sorted highest first."""

    text_index: int
    query: int
    multiples: tuple[TokenMultiple, ...]


@dataclass(frozen=True)
class RankedMultiple:
    """One ``(token, multiple)`` pair with its row: the tokens up to the query and their attention.

    It unpacks and indexes as attention-data's rows do, over its first four fields
    (``token, multiple, str_tokens, pattern = row``; ``row[1]`` is the multiple);
    ``text_index``, ``query``, ``key``, ``layer`` and ``head`` are attributes.
    """

    token: str
    multiple: float
    str_tokens: tuple[str, ...]
    pattern: Float[torch.Tensor, "key"]  # noqa: F821 (jaxtyping dimension name)
    text_index: int
    query: int
    key: int
    layer: int = -1
    head: int = -1

    def _row(self) -> tuple:
        return (self.token, self.multiple, self.str_tokens, self.pattern)

    def __iter__(self):
        return iter(self._row())

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index):
        return self._row()[index]


class RankedMultiples(Showable, list):
    """A list of :class:`RankedMultiple` (what ``AttentionData.get_ranked_multiples`` returns) that shows
    itself as :func:`attnlens.viz.multiples_table` (``show()``) and converts to JSON (``to_json()``)."""

    def to_dict(self) -> list[dict[str, Any]]:
        return [
            {"token": m.token, "multiple": m.multiple, "str_tokens": list(m.str_tokens), "text_index": m.text_index,
             "query": m.query, "key": m.key, "layer": m.layer, "head": m.head,
             "pattern": [round(float(v), 6) for v in m.pattern.tolist()]}
            for m in self
        ]


@dataclass
class HeadData:
    """What AttentionData keeps for one head: its patterns, samples, and every description asked for."""

    layer: int
    head: int
    patterns: Float[torch.Tensor, "text query key"]  # noqa: F821
    samples: list[Sample]
    descriptions: list[str] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    #: every held-out score asked for: ``{"description", "score", "control_score", "how", "queries"}``
    scores: list[dict] = field(default_factory=list)
    _ranked: list[RankedMultiple] | None = field(default=None, repr=False)


def quote_token(token: str) -> str:
    return json.dumps(token.strip() or token, ensure_ascii=False)


def same_token(a: str, b: str) -> bool:
    """Whether two token strings match, ignoring surrounding whitespace (``" Paris"`` is ``"Paris"``)."""
    return a == b or (a.strip() == b.strip() and bool(a.strip()))


def multiples(
patterns: Float[torch.Tensor, "text query key"],  # noqa: F821
lengths: Sequence[int],
first_query: int,
suppress_first_token: bool,
) -> Float[torch.Tensor, "text query key"]:  # noqa: F821
    """Every row's multiples: ``multiple[t, i, j] = A[t, i, j] / average[t, i]``.

    ``patterns[t, i, j] = A[t, i, j]`` is the attention of query ``i`` on key ``j``
    in text ``t`` (``lengths[t]`` real tokens), padded on the right. The row's average
    is the mean of ``A[t, i, k]`` over the keys query ``i`` can see,
    ``K(i) = {k : k <= i, k < length(t)}``, minus ``k = 0`` (the text's first
    token) when ``suppress_first_token``. Entries are 0 where no multiple is
    defined: keys outside ``K(i)``, padded queries, queries before
    ``first_query``, and rows whose average is 0.
    """
    n, width, _ = patterns.shape
    lengths_t = torch.tensor(list(lengths))[:n]
    pos = torch.arange(width)
    keys, queries = pos[None, None, :], pos[None, :, None]
    visible = (keys <= queries) & (keys < lengths_t[:, None, None])
    if suppress_first_token:
        visible = visible & (keys >= 1)
    p = torch.nan_to_num(patterns.double())
    counts = visible.sum(-1)
    average = torch.where(visible, p, 0.0).sum(-1) / counts.clamp(min=1)
    rows_ok = (pos[None, :] >= first_query) & (pos[None, :] < lengths_t[:, None]) & (average > 0)
    ratio = p / torch.where(average > 0, average, 1.0)[..., None]
    return torch.where(visible & rows_ok[..., None], ratio, 0.0)
