"""Score a head's description on held-out texts: does it predict where the head attends?

The description becomes a prediction of the keys each marked query attends to:

- a **fixed pattern** when the description names a known one (previous token, first
  token, same token, induction: :data:`KNOWN_PATTERNS`, matched by keywords);
- otherwise the **chat model** (the same client as the describer), given the
  description and a held-out text whose query positions are marked, names the
  positions the head attends to (``Q1: 3, 7`` per line).

The score is the share of the head's real attention on the predicted keys,
averaged over the marked queries (0: nothing predicted right; 1: all of it).
A query without a usable prediction scores 0. The texts must be ones the
describer never saw; the control score is the same score for another head's
description of the same head's pattern.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..core.errors import AttnlensError
from .capture import capture_patterns
from .descriptions import complete

logger = logging.getLogger(__name__)

#: known patterns and the words that name them (checked in this order, lowercase)
KNOWN_PATTERNS: dict[str, tuple[str, ...]] = {
    "induction": ("induction", "token after the previous occurrence", "token that followed"),
    "previous": ("previous token", "preceding token", "prior token", "token before", "immediately before"),
    "first": ("first token", "beginning of the sequence", "beginning of the text", "start of the sequence",
              "start of the text", "bos token", "attention sink"),
    "same": ("same token", "identical token", "repeated token", "earlier occurrences of the same"),
}

SCORE_PROMPT = (
    "An attention head of a language model was described as follows:\n\n{description}\n\n"
    "Below is a text, one token a line as `index: token`. Some tokens are query positions, marked Q1, Q2, ... "
    "For each query, name the indices of the earlier tokens (at most {k}, from 0 up to the query's own index) "
    "that this head attends to most, according to the description. Answer with one line per query, exactly like "
    "`Q1: 4, 7` and nothing else.\n\n{tokens}"
)


def fixed_pattern(description: str) -> str | None:
    """The known pattern a description names, or None."""
    text = description.lower()
    for name, words in KNOWN_PATTERNS.items():
        if any(w in text for w in words):
            return name
    return None


def predicted_keys(pattern: str, ids: Sequence[int], query: int) -> list[int]:
    """The keys a fixed pattern predicts for ``query`` in the token row ``ids``."""
    if pattern == "previous":
        return [max(query - 1, 0)]
    if pattern == "first":
        return [0]
    if pattern == "same":
        same = [j for j in range(query) if ids[j] == ids[query]]
        return same or [query]
    if pattern == "induction":
        return [j + 1 for j in range(query - 1) if ids[j] == ids[query]]
    raise AttnlensError(f"unknown pattern {pattern!r}; choose from {', '.join(KNOWN_PATTERNS)}")


def parse_prediction(text: str, queries: Sequence[int]) -> list[list[int]]:
    """The chat model's ``Q1: 4, 7`` lines as key lists (keys after their query are dropped)."""
    out: list[list[int]] = [[] for _ in queries]
    for match in re.finditer(r"Q\s*(\d+)\s*[:=-]\s*([\d,\s]*)", text):
        i = int(match.group(1)) - 1
        if 0 <= i < len(queries):
            keys = [int(k) for k in re.findall(r"\d+", match.group(2))]
            out[i] = sorted({k for k in keys if 0 <= k <= queries[i]})
    return out


def share_on(pattern_row: Any, keys: Sequence[int]) -> float:
    """The share of one query's attention on ``keys``."""
    if not keys:
        return 0.0
    return float(sum(float(pattern_row[k]) for k in set(keys)))


@dataclass
class DescriptionScore:
    """A description's score on held-out texts: ``score`` in [0, 1], how it was predicted, over how many queries."""

    score: float
    how: str
    queries: int

    def to_dict(self) -> dict[str, Any]:
        return {"score": self.score, "how": self.how, "queries": self.queries}


def _marked(tokens: Sequence[str], queries: Sequence[int]) -> str:
    label = {q: f"   <- Q{i + 1}" for i, q in enumerate(queries)}
    return "\n".join(f"{j}: {t!r}{label.get(j, '')}" for j, t in enumerate(tokens))


def score_description(model: Any, layer: int, head: int, description: str, texts: Sequence[str], *,
                      client: Any = None, openai_model: str | None = None, system_prompt: str | None = None,
                      deadline: float = 120.0, queries_per_text: int = 3, keys_per_query: int = 3,
                      first_query: int = 1, max_length: int = 30, seed: int = 0,
                      patterns: dict[int, Any] | None = None) -> DescriptionScore:
    """Score ``description`` of head ``(layer, head)`` on held-out ``texts`` (see the module's text).

    ``client`` and ``openai_model`` are needed when the description names no known pattern.
    ``patterns`` (text index -> ``[query, key]``) reuses captured patterns.
    """
    if not isinstance(description, str) or not description.strip():
        raise AttnlensError("the description to score is empty")
    if isinstance(texts, str) or not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise AttnlensError("held-out texts must be a non-empty list of non-empty strings")
    if queries_per_text < 1 or keys_per_query < 1:
        raise AttnlensError("queries_per_text and keys_per_query must be positive")
    tokenizer = model.tokenizer
    rows = [list(tokenizer(t)["input_ids"])[:max_length] for t in texts]
    if patterns is None:
        captured = capture_patterns(model, rows, {layer: (head,)})[(layer, head)]
        patterns = {i: captured[i] for i in range(len(rows))}
    rng = random.Random(f"{seed}|{layer}|{head}")
    fixed = fixed_pattern(description)
    if fixed is None and (client is None or not openai_model):
        raise AttnlensError("the description names no known pattern, so scoring it needs a chat client and "
                            "openai_model")
    shares = []
    for i, ids in enumerate(rows):
        candidates = list(range(min(first_query, len(ids) - 1), len(ids)))
        if not candidates:
            continue
        queries = sorted(rng.sample(candidates, min(queries_per_text, len(candidates))))
        if fixed is not None:
            keys = [predicted_keys(fixed, ids, q) for q in queries]
        else:
            tokens = [tokenizer.decode([t]) for t in ids]
            prompt = SCORE_PROMPT.format(description=description.strip(), k=keys_per_query,
                                         tokens=_marked(tokens, queries))
            answer = complete(client, openai_model, prompt, system=system_prompt, deadline=deadline)
            keys = [k[:keys_per_query] for k in parse_prediction(answer.text, queries)]
            if not any(keys):
                logger.warning("layer %d head %d: no usable prediction in %r", layer, head, answer.text[:120])
        shares += [share_on(patterns[i][q], k) for q, k in zip(queries, keys)]
    if not shares:
        raise AttnlensError("the held-out texts give no query positions (too short)")
    return DescriptionScore(sum(shares) / len(shares), f"pattern:{fixed}" if fixed else "chat", len(shares))
