"""AttentionData: what one attention head attends to, ranked, shown, and described by an LLM.

For a head ``(layer, head)`` and a batch of texts, every query position ``i`` of
every text gives one *row*: the head's attention from ``i`` over the keys it can
see. A key's *multiple* is its attention divided by the row's average::

    multiple[i, j] = A[i, j] / mean(A[i, k] for k in K(i))

``K(i)`` is the set of keys query ``i`` can see: ``k <= i``, never padding, and,
with ``suppress_first_token``, never the text's first token (position 0, often an
attention sink that takes most of the weight). Without suppression the average
is ``1 / (i + 1)`` (a row sums to one). With suppression the first key is left
out of the average *and* of the ranking. Only keys with a multiple above 1 are
kept. Rows run from query ``min_length`` to the text's last real token; texts are
cut to ``max_length`` tokens first.

A *sample* is one row: ``(text_index, query, [(token, key, multiple), ...])``,
its pairs sorted from the highest multiple down. ``describe_head`` sends a few
random samples to a chat model and asks what the head pays attention to (the
asking is :mod:`attnlens.analysis.describing`; the chat client is
:mod:`attnlens.analysis.descriptions`). ``get_ranked_multiples`` lists the individual
``(token, multiple)`` pairs of every sample, highest first.

Patterns are computed for the requested heads only: one forward pass over the
texts in batches (right padding and an attention mask; a hook on
``blocks.{layer}.attn.hook_pattern`` keeps just those heads, and the pass stops
after the last layer needed).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Union

import torch
from jaxtyping import Float

from ..core.model import Model
from ..core.errors import AttnlensError
from ..core.model import check_window, model_shape
from ..core.validate import check_text, is_int, resolve_heads, resolve_layer
from .capture import PatternSamples, capture_patterns
from .descriptions import (
    DEFAULT_DEADLINE,
    DEFAULT_SYSTEM_PROMPT,
    PROMPT_PREFIX,
    PROMPT_SUFFIX,
    check_seconds,
)
from .describing import Describing, HeadSpec, _positive_count
from .multiples import HeadData, RankedMultiple, Sample, TokenMultiple, multiples, quote_token
from .ranking import Ranking

logger = logging.getLogger(__name__)

TextBatch = Union[Sequence[str], Sequence[Sequence[str]]]


@dataclass(frozen=True)
class _Row:
    text_index: int
    ids: tuple[int, ...]
    str_tokens: tuple[str, ...]


def _flatten(text_batch: Any) -> list[str]:
    if text_batch is None:
        raise AttnlensError("text_batch is required: a list of strings")
    if isinstance(text_batch, (str, bytes)):
        raise AttnlensError("text_batch must be a list of strings, got a single string; wrap it in a list")
    texts: list[str] = []
    for i, item in enumerate(text_batch):
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, (list, tuple)) and all(isinstance(t, str) for t in item):
            texts.extend(item)
        else:
            raise AttnlensError(
                f"text_batch[{i}] is a {type(item).__name__}; expected a string or a list of strings"
            )
    if not texts:
        raise AttnlensError("text_batch is empty: give at least one text")
    return texts


def _non_negative_int(name: str, value: Any) -> int:
    if not is_int(value) or value < 0:
        raise AttnlensError(f"{name} must be a non-negative integer, got {value!r}")
    return value


class AttentionData(Ranking, Describing):
    """Rank, show and describe what single attention heads of ``model`` attend to over ``text_batch``.

    Args:
        model: a TransformerLens ``TransformerBridge`` (or ``HookedTransformer``-like model) with a tokenizer.
        openai_model: the chat model that writes descriptions (e.g. ``"gpt-4o-mini"``, or a
            local server's model name); only :meth:`describe_head` needs it.
        openai_api_key: the key for OpenAI's API; default ``$OPENAI_API_KEY``. Ignored when
            ``client`` is given.
        text_batch: the texts, a list of strings (a list of lists of strings is flattened:
            every string is one text).
        min_length: the first query position that gives a row; a text needs at least
            ``min_length + 1`` tokens to give any (shorter texts are skipped with a warning;
            when none is long enough, :class:`AttnlensError`).
        max_length: texts are cut to this many tokens.
        suppress_first_token: leave the first token out of every row's average and ranking.
        client: any ``openai.OpenAI``-compatible client (e.g. ``OpenAI(base_url=..., api_key=...)``
            for Ollama or vLLM); its own ``max_retries``/``timeout`` apply.
        seed: seeds the random choice of samples (same seed, same calls: same samples).
        batch_size: texts per forward pass.
        system_prompt: the system message sent with each description request.

    Records live in :attr:`heads`, keyed by ``(layer, head)``; every description asked
    for is kept in its record's ``descriptions``.
    """

    def __init__(
        self,
        model: Model,
        openai_model: str | None = None,
        openai_api_key: str | None = None,
        text_batch: TextBatch | None = None,
        min_length: int = 10,
        max_length: int = 30,
        suppress_first_token: bool = True,
        *,
        client: Any = None,
        seed: int | None = None,
        batch_size: int = 16,
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
        deadline: float = DEFAULT_DEADLINE,
    ) -> None:
        self.n_layers, self.n_heads = model_shape(model)
        #: seconds one description may take in all, retries included
        self.deadline = check_seconds(deadline, "deadline")
        tokenizer = getattr(model, "tokenizer", None)
        if tokenizer is None:
            raise AttnlensError("the model has no tokenizer; AttentionData needs one to read text_batch")
        self.model = model
        self.openai_model = openai_model
        self.openai_api_key = openai_api_key
        self.min_length = _non_negative_int("min_length", min_length)
        self.max_length = _positive_count("max_length", max_length)
        if self.max_length <= self.min_length:
            raise AttnlensError(
                f"max_length ({max_length}) must be larger than min_length ({min_length}): "
                "rows start at query min_length"
            )
        self.suppress_first_token = bool(suppress_first_token)
        self.batch_size = _positive_count("batch_size", batch_size)
        self.system_prompt = system_prompt
        self.client = client
        self.seed = seed
        self._rng = random.Random(seed)
        self.text_batch = _flatten(text_batch)
        for index, text in enumerate(self.text_batch):
            check_text(text, f"text {index}")
        self.heads: dict[tuple[int, int], HeadData] = {}
        self._rows = self._tokenize(tokenizer)

    # ------------------------------------------------------------------ texts

    @property
    def first_query(self) -> int:
        """The first query position that gives a row (a row needs a key to average over)."""
        return max(self.min_length, 1 if self.suppress_first_token else 0)

    def _tokenize(self, tokenizer: Any) -> list[_Row]:
        encoded = tokenizer(list(self.text_batch), truncation=True, max_length=self.max_length)["input_ids"]
        rows, short = [], []
        for index, ids in enumerate(encoded):
            ids = [int(t) for t in ids][: self.max_length]
            check_window(self.model, len(ids), what=f"text {index} (cut to max_length={self.max_length})")
            if len(ids) <= self.first_query:
                short.append((index, len(ids)))
                continue
            str_tokens = tuple(tokenizer.decode([t]) for t in ids)
            rows.append(_Row(index, tuple(ids), str_tokens))
        need = self.first_query + 1
        if not rows:
            longest = max(n for _, n in short)
            raise AttnlensError(
                f"every text in text_batch is too short: a text needs at least {need} tokens "
                f"(min_length={self.min_length}) and the longest has {longest}; "
                "give longer texts or lower min_length"
            )
        if short:
            shown = ", ".join(str(i) for i, _ in short[:10]) + (", ..." if len(short) > 10 else "")
            logger.warning(
                "%d of %d texts have fewer than %d tokens (min_length=%d) and give no rows: text(s) %s",
                len(short), len(self.text_batch), need, self.min_length, shown,
            )
        return rows

    @property
    def texts_used(self) -> list[int]:
        """Indices (into the flattened ``text_batch``) of the texts long enough to give rows."""
        return [r.text_index for r in self._rows]

    def str_tokens(self, text_index: int) -> list[str]:
        """The token strings of text ``text_index`` (as cut to ``max_length``)."""
        for row in self._rows:
            if row.text_index == text_index:
                return list(row.str_tokens)
        raise AttnlensError(f"text {text_index} is not in use (out of range, or shorter than min_length)")

    # ------------------------------------------------------------------ patterns and samples

    def _check(self, layer: Any, head: Any) -> tuple[int, int]:
        if not is_int(head):
            raise AttnlensError(f"head must be an integer, got {head!r}")
        return resolve_layer(layer, self.n_layers), resolve_heads(head, self.n_heads)[0]  # type: ignore[index]

    def multiples(self, patterns: Float[torch.Tensor, "text query key"]) -> Float[torch.Tensor, "text query key"]:  # noqa: F821
        """Every row's multiples; see :func:`attnlens.analysis.multiples.multiples`."""
        lengths = [len(r.ids) for r in self._rows]
        return multiples(patterns, lengths, self.first_query, self.suppress_first_token)

    def _patterns(self, wanted: dict[int, tuple[int, ...]]) -> dict[tuple[int, int], torch.Tensor]:
        """The attention patterns of the wanted heads over every text: ``[text, query, key]`` each."""
        return capture_patterns(self.model, [r.ids for r in self._rows], wanted, batch_size=self.batch_size)

    def _build_samples(self, patterns: torch.Tensor) -> list[Sample]:
        multiples = self.multiples(patterns)
        hits = (multiples > 1).nonzero().tolist()
        grouped: dict[tuple[int, int], list[TokenMultiple]] = {}
        for r, i, j in hits:
            grouped.setdefault((r, i), []).append(
                TokenMultiple(self._rows[r].str_tokens[j], j, float(multiples[r, i, j]))
            )
        samples = []
        for (r, i), pairs in grouped.items():
            pairs.sort(key=lambda tm: (-tm.multiple, tm.key))
            samples.append(Sample(self._rows[r].text_index, i, tuple(pairs)))
        return samples

    def head_data(self, layer: int = 0, head: int = 0) -> HeadData:
        """The record of one head, computing its patterns and samples on first use."""
        layer, head = self._check(layer, head)
        self._ensure({layer: (head,)})
        return self.heads[(layer, head)]

    def _ensure(self, wanted: dict[int, tuple[int, ...]]) -> None:
        missing: dict[int, tuple[int, ...]] = {}
        for layer, heads in wanted.items():
            todo = tuple(h for h in heads if (layer, h) not in self.heads)
            if todo:
                missing[layer] = todo
        if not missing:
            return
        for (layer, head), patterns in self._patterns(missing).items():
            samples = self._build_samples(patterns)
            logger.info("layer %d head %d: %d rows with above-average keys", layer, head, len(samples))
            self.heads[(layer, head)] = HeadData(layer, head, patterns, samples)

    def create_samples(self, layer: int = 0, head: int = 0) -> list[Sample]:
        """(Re)compute one head's patterns and samples; keeps its descriptions."""
        layer, head = self._check(layer, head)
        old = self.heads.pop((layer, head), None)
        self._ensure({layer: (head,)})
        if old is not None:
            self.heads[(layer, head)].descriptions[:0] = old.descriptions
            self.heads[(layer, head)].prompts[:0] = old.prompts
        return self.heads[(layer, head)].samples

    def pattern_samples(
        self,
        layer: int,
        head: int,
        texts: Sequence[int] | None = None,
        *,
        max_texts: int = 4,
        suppress_first_token: bool | None = None,
    ) -> PatternSamples:
        """One head's patterns over a few texts, as :func:`attnlens.viz.head_patterns` shows them.

        Args:
            texts: text indices (into ``text_batch``); default: the texts of the head's
                highest multiples, at most ``max_texts``.
            suppress_first_token: hide the first token's column and renormalise the rows
                without it (default: as this AttentionData).

        The head's patterns are computed here if they are not yet.
        """
        record = self.head_data(layer, head)
        layer, head = record.layer, record.head
        max_texts = _positive_count("max_texts", max_texts)
        hide = self.suppress_first_token if suppress_first_token is None else bool(suppress_first_token)
        if texts is None:
            chosen: list[int] = []
            for ranked in self.ranked_multiples(layer, head):
                if ranked.text_index not in chosen:
                    chosen.append(ranked.text_index)
                if len(chosen) >= max_texts:
                    break
            texts = chosen or self.texts_used[:max_texts]
        elif isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence) or not all(is_int(t) for t in texts):
            raise AttnlensError(f"texts must be a list of text indices, got {texts!r}")
        if not texts:
            raise AttnlensError("texts is empty: give at least one text index")
        tokens, patterns, previews = [], [], []
        for index in texts:
            r = self.row_of(index)
            str_tokens = self.str_tokens(index)
            n = len(str_tokens)
            pattern = record.patterns[r, :n, :n].clone()
            if hide and n > 1:
                pattern[:, 0] = 0.0
                sums = pattern.sum(-1, keepdim=True)
                pattern = torch.where(sums > 0, pattern / sums.clamp_min(1e-12), pattern)
            preview = self.text_batch[index].replace("\n", " ")
            tokens.append(tuple(str_tokens))
            patterns.append(pattern)
            previews.append(preview if len(preview) <= 80 else preview[:77] + "...")
        return PatternSamples(layer, head, tuple(texts), tuple(tokens), tuple(patterns), tuple(previews), hide)

    # ------------------------------------------------------------------ display (the seam views plug into)

    def display_multiples(self, rows: Sequence[RankedMultiple], title: str) -> None:
        """Show ranked multiples; here a log record at INFO (:class:`attnlens.api.AttentionData` shows a table)."""
        logger.info("%s: %s", title, ", ".join(f"{quote_token(r.token)} {r.multiple:.2f}" for r in rows))

    def display_description(self, layer: int, head: int, description: str) -> None:
        """Show a head's description; here a log record at INFO."""
        logger.info("layer %d head %d: %s", layer, head, description)

    def row_of(self, text_index: int) -> int:
        """The row (into every head's ``patterns``) of text ``text_index``."""
        return self._row_index(text_index)

    def _row_index(self, text_index: int) -> int:
        for r, row in enumerate(self._rows):
            if row.text_index == text_index:
                return r
        raise AttnlensError(f"text {text_index} is not in use")

    def _clamp(self, name: str, wanted: int, available: int, what: str) -> int:
        _positive_count(name, wanted)
        if available == 0:
            raise AttnlensError(f"there are no {what} to choose from")
        if wanted > available:
            logger.warning("%s=%d but only %d %s exist; using %d", name, wanted, available, what, available)
        return min(wanted, available)

    def get_head_samples(self, layer: int = 0, head: int = 0, num_samples: int = 10) -> list[Sample]:
        """``num_samples`` random rows of the head (all of them, with a warning, if fewer exist)."""
        return self._head_samples(layer, head, num_samples)

    def _head_samples(self, layer: int, head: int, num_samples: int) -> list[Sample]:
        data = self.head_data(layer, head)
        k = self._clamp("num_samples", num_samples, len(data.samples), f"rows for layer {data.layer} head {data.head}")
        return [data.samples[i] for i in sorted(self._rng.sample(range(len(data.samples)), k))]

    def sample_text(self, sample: Sample) -> str:
        """The text of a sample up to (and including) its query token."""
        row = self._rows[self._row_index(sample.text_index)]
        return self.model.tokenizer.decode(list(row.ids[: sample.query + 1]), skip_special_tokens=True)

    def format_samples(self, samples: Sequence[Sample]) -> str:
        """Samples as prompt rows: the text, then its ``"token" multiple`` pairs (highest first)."""
        blocks = []
        for k, sample in enumerate(samples, 1):
            text = " ".join(self.sample_text(sample).split("\n"))
            pairs = ", ".join(f"{quote_token(tm.token)} {tm.multiple:.2f}" for tm in sample.multiples)
            blocks.append(f"Example {k}:\n{text}\n{pairs}\n")
        return "\n".join(blocks)

    def build_prompt(self, samples: Sequence[Sample], custom_prompt: str | None = None) -> str:
        """The description prompt: :data:`PROMPT_PREFIX`, the samples, ``custom_prompt``, :data:`PROMPT_SUFFIX`."""
        _check_custom_prompt(custom_prompt)
        prompt = f"{PROMPT_PREFIX}\n\n{self.format_samples(samples)}"
        if custom_prompt:
            prompt += f"\n{custom_prompt}"
        return f"{prompt}\n{PROMPT_SUFFIX}"

    def _resolve_heads(self, heads: HeadSpec) -> tuple[int, ...]:
        return resolve_heads(heads, self.n_heads)  # type: ignore[return-value]

    def __repr__(self) -> str:
        return (
            f"AttentionData({len(self._rows)} texts, min_length={self.min_length}, max_length={self.max_length}, "
            f"suppress_first_token={self.suppress_first_token}, openai_model={self.openai_model!r}, "
            f"heads computed={sorted(self.heads)})"
        )


def _check_custom_prompt(custom_prompt: Any) -> None:
    """``custom_prompt`` is None or text, else an AttnlensError naming it."""
    if custom_prompt is not None:
        check_text(custom_prompt, "custom_prompt")
