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
random samples to a chat model (see :mod:`attnlens.describe`) and asks what the
head pays attention to. ``get_ranked_multiples`` lists the individual
``(token, multiple)`` pairs of every sample, highest first.

Patterns are computed for the requested heads only: one forward pass over the
texts in batches (right padding and an attention mask; a hook on
``blocks.{layer}.attn.hook_pattern`` keeps just those heads, and the pass stops
after the last layer needed).
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from html import escape
from typing import Any, Union

import torch
from jaxtyping import Float
from tqdm.auto import tqdm

from ..core.errors import DescribeError
from .descriptions import DEFAULT_SYSTEM_PROMPT, complete, make_client
from ..core.validate import is_int
from ..core.errors import AttnlensError
from ..core.model import model_shape
from ..core.validate import LayerSpec, resolve_heads, resolve_layer, resolve_layers

logger = logging.getLogger(__name__)

PATTERN_HOOK = "blocks.{layer}.attn.hook_pattern"

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

TextBatch = Union[Sequence[str], Sequence[Sequence[str]]]
HeadSpec = Union[str, int, Iterable[int]]


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
    """One ``(token, multiple)`` pair with its row: the tokens up to the query and their attention."""

    token: str
    multiple: float
    str_tokens: tuple[str, ...]
    pattern: Float[torch.Tensor, "key"]  # noqa: F821 (jaxtyping dimension name)
    text_index: int
    query: int
    key: int


@dataclass
class HeadData:
    """What AttentionData keeps for one head: its patterns, samples, and every description asked for."""

    layer: int
    head: int
    patterns: Float[torch.Tensor, "text query key"]  # noqa: F821
    samples: list[Sample]
    descriptions: list[str] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    _ranked: list[RankedMultiple] | None = field(default=None, repr=False)


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


def _positive_count(name: str, value: Any) -> int:
    if not is_int(value) or value < 1:
        raise AttnlensError(f"{name} must be a positive integer, got {value!r}")
    return value


def _quote_token(token: str) -> str:
    return json.dumps(token.strip() or token, ensure_ascii=False)


def same_token(a: str, b: str) -> bool:
    """Whether two token strings match, ignoring surrounding whitespace (``" Paris"`` is ``"Paris"``)."""
    return a == b or (a.strip() == b.strip() and bool(a.strip()))


class AttentionData:
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
        model: Any,
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
    ) -> None:
        self.n_layers, self.n_heads = model_shape(model)
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

    def _patterns(self, wanted: dict[int, tuple[int, ...]]) -> dict[tuple[int, int], torch.Tensor]:
        """The attention patterns of the wanted heads over every text: ``[text, query, key]`` each."""
        from ..core.model import model_device, pad_id

        rows = self._rows
        width = max(len(r.ids) for r in rows)
        out = {
            (layer, head): torch.zeros(len(rows), width, width)
            for layer, heads in wanted.items()
            for head in heads
        }
        where = {"start": 0}

        def make_hook(layer: int, heads: tuple[int, ...]) -> Any:
            index = torch.tensor(heads)

            def hook(pattern: torch.Tensor, hook: Any = None) -> None:
                kept = pattern.detach().index_select(1, index.to(pattern.device)).float().cpu()
                start, n, q = where["start"], kept.shape[0], kept.shape[2]
                for i, h in enumerate(heads):
                    out[(layer, h)][start : start + n, :q, :q] = kept[:, i]

            return hook

        hooks = [(PATTERN_HOOK.format(layer=layer), make_hook(layer, heads)) for layer, heads in wanted.items()]
        stop = max(wanted) + 1
        device, pad = model_device(self.model), pad_id(self.model.tokenizer)
        starts = range(0, len(rows), self.batch_size)
        names = ", ".join(f"L{layer}H{h}" for layer, heads in wanted.items() for h in heads)
        logger.info("computing attention patterns of %s over %d texts", names, len(rows))
        for start in tqdm(starts, desc="attention patterns", disable=len(starts) < 2, leave=False):
            chunk = rows[start : start + self.batch_size]
            n = max(len(r.ids) for r in chunk)
            tokens = torch.tensor([list(r.ids) + [pad] * (n - len(r.ids)) for r in chunk], device=device)
            mask = torch.tensor([[1] * len(r.ids) + [0] * (n - len(r.ids)) for r in chunk], device=device)
            where["start"] = start
            with torch.no_grad():
                self._run(tokens, mask, hooks, stop)
        return out

    def _run(self, tokens: torch.Tensor, mask: torch.Tensor, hooks: list, stop: int) -> None:
        kwargs: dict[str, Any] = {"attention_mask": mask, "return_type": None}
        if stop < self.n_layers:
            kwargs["stop_at_layer"] = stop
        try:
            self.model.run_with_hooks(tokens, fwd_hooks=hooks, **kwargs)
        except NotImplementedError:  # a model without a blocks stack cannot stop early
            kwargs.pop("stop_at_layer", None)
            self.model.run_with_hooks(tokens, fwd_hooks=hooks, **kwargs)

    def multiples(self, patterns: Float[torch.Tensor, "text query key"]) -> Float[torch.Tensor, "text query key"]:  # noqa: F821
        """Every row's multiples: ``multiple[t, i, j] = A[t, i, j] / average[t, i]``.

        ``patterns[t, i, j] = A[t, i, j]`` is the attention of query ``i`` on key ``j``
        in text ``t`` (of :attr:`texts_used`), padded on the right. The row's average
        is the mean of ``A[t, i, k]`` over the keys query ``i`` can see,
        ``K(i) = {k : k <= i, k < length(t)}``, minus ``k = 0`` (the text's first
        token) when ``suppress_first_token``. Entries are 0 where no multiple is
        defined: keys outside ``K(i)``, padded queries, queries before
        :attr:`first_query`, and rows whose average is 0.
        """
        n, width, _ = patterns.shape
        lengths = torch.tensor([len(r.ids) for r in self._rows])[:n]
        pos = torch.arange(width)
        keys, queries = pos[None, None, :], pos[None, :, None]
        visible = (keys <= queries) & (keys < lengths[:, None, None])
        if self.suppress_first_token:
            visible = visible & (keys >= 1)
        p = torch.nan_to_num(patterns.double())
        counts = visible.sum(-1)
        average = torch.where(visible, p, 0.0).sum(-1) / counts.clamp(min=1)
        rows_ok = (pos[None, :] >= self.first_query) & (pos[None, :] < lengths[:, None]) & (average > 0)
        ratio = p / torch.where(average > 0, average, 1.0)[..., None]
        return torch.where(visible & rows_ok[..., None], ratio, 0.0)

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
            pairs = ", ".join(f"{_quote_token(tm.token)} {tm.multiple:.2f}" for tm in sample.multiples)
            blocks.append(f"Example {k}:\n{text}\n{pairs}\n")
        return "\n".join(blocks)

    def build_prompt(self, samples: Sequence[Sample], custom_prompt: str | None = None) -> str:
        """The description prompt: :data:`PROMPT_PREFIX`, the samples, ``custom_prompt``, :data:`PROMPT_SUFFIX`."""
        prompt = f"{PROMPT_PREFIX}\n\n{self.format_samples(samples)}"
        if custom_prompt:
            prompt += f"\n{custom_prompt}"
        return f"{prompt}\n{PROMPT_SUFFIX}"

    # ------------------------------------------------------------------ ranking

    def ranked_multiples(self, layer: int = 0, head: int = 0) -> list[RankedMultiple]:
        """Every ``(token, multiple)`` pair of the head's rows, highest multiple first."""
        data = self.head_data(layer, head)
        if data._ranked is None:
            ranked = []
            for sample in data.samples:
                r = self._row_index(sample.text_index)
                row, i = self._rows[r], sample.query
                for tm in sample.multiples:
                    ranked.append(
                        RankedMultiple(
                            tm.token, tm.multiple, row.str_tokens[: i + 1], data.patterns[r, i, : i + 1],
                            sample.text_index, i, tm.key,
                        )
                    )
            ranked.sort(key=lambda m: -m.multiple)  # stable: ties keep text/query/key order
            data._ranked = ranked
        return data._ranked

    def get_ranked_multiples(
        self,
        layer: int = 0,
        head: int = 0,
        str_token: str | None = None,
        num_multiples: int = 10,
        reverse: bool = False,
        display: bool = False,
    ) -> list[RankedMultiple]:
        """The ``num_multiples`` highest multiples of the head (lowest first with ``reverse=True``).

        ``str_token`` keeps only that token (surrounding whitespace ignored). Fewer than
        ``num_multiples`` are returned when fewer exist. ``display=True`` shows the
        table of :func:`attnlens.viz.multiples_table` (see :func:`attnlens.viz.show`).
        """
        _positive_count("num_multiples", num_multiples)
        layer, head = self._check(layer, head)
        ranked = self.ranked_multiples(layer, head)
        total = len(ranked)
        if str_token is not None:
            ranked = [m for m in ranked if same_token(m.token, str_token)]
        if reverse:
            ranked = ranked[::-1]
        chosen = ranked[:num_multiples]
        if display:
            from .. import viz

            title = f"Layer {layer} Head {head}, {'bottom' if reverse else 'top'} {len(chosen)} / {total} multiples"
            if str_token is not None:
                title += f" for {str_token!r}"
            table = viz.multiples_table(chosen, title=title, suppress_first_token=self.suppress_first_token)
            viz.show(table, text=viz.multiples_text(chosen, title=title))
        return chosen

    def get_random_multiples(
        self, layer: int = 0, head: int = 0, num_multiples: int = 10, display: bool = False
    ) -> list[RankedMultiple]:
        """``num_multiples`` random pairs of the head (all of them, with a warning, if fewer exist)."""
        layer, head = self._check(layer, head)
        ranked = self.ranked_multiples(layer, head)
        k = self._clamp("num_multiples", num_multiples, len(ranked), f"multiples for layer {layer} head {head}")
        chosen = [ranked[i] for i in self._rng.sample(range(len(ranked)), k)]
        if display:
            from .. import viz

            title = f"Layer {layer} Head {head}, {k} / {len(ranked)} random multiples"
            table = viz.multiples_table(chosen, title=title, suppress_first_token=self.suppress_first_token)
            viz.show(table, text=viz.multiples_text(chosen, title=title))
        return chosen

    # ------------------------------------------------------------------ descriptions

    def _client(self) -> Any:
        if self.client is None:
            self.client = make_client(self.openai_api_key)
        return self.client

    def _model_name(self) -> str:
        if not self.openai_model:
            raise DescribeError(
                "openai_model is not set: pass AttentionData(..., openai_model='gpt-4o-mini') "
                "or the name of the local server's model"
            )
        return self.openai_model

    def describe_head(
        self,
        layer: int = 0,
        head: int = 0,
        num_samples: int = 10,
        custom_prompt: str | None = None,
        print_description: bool = True,
    ) -> tuple[str, str]:
        """Ask the chat model what the head attends to; returns ``(prompt, description)``.

        The prompt is :data:`PROMPT_PREFIX`, ``num_samples`` random rows (see
        :meth:`format_samples`), ``custom_prompt`` and :data:`PROMPT_SUFFIX`; it goes
        with the system message through ``client.chat.completions.create``. The
        description is kept in ``heads[(layer, head)].descriptions``.

        ``print_description=True`` shows it: as Markdown output in a notebook, else a
        log record at INFO (the library never prints; the ``attnlens heads describe``
        command prints it).

        Raises:
            DescribeError: no key, a rejected key (401), an unknown model (404), or
                failures left after the client's retries (429, 5xx, timeouts).
        """
        model_name = self._model_name()
        data = self.head_data(layer, head)
        samples = self.get_head_samples(data.layer, data.head, num_samples)
        prompt = self.build_prompt(samples, custom_prompt)
        answer = complete(self._client(), model_name, prompt, system=self.system_prompt)
        data.prompts.append(prompt)
        data.descriptions.append(answer.text)
        if print_description:
            from .. import viz

            viz.show_description(data.layer, data.head, answer.text)
        return prompt, answer.text

    def describe_heads(
        self,
        layers: LayerSpec = "all",
        heads: HeadSpec = "all",
        num_samples: int = 10,
        custom_prompt: str | None = None,
        max_concurrency: int = 4,
        progress: bool = True,
    ) -> HeadDescriptions:
        """Describe many heads: ``layers`` x ``heads``, at most ``max_concurrency`` requests at once.

        Patterns of a layer's heads come from one forward pass; samples are drawn
        in (layer, head) order, so a seed makes the prompts reproducible. A
        failure that retrying cannot fix (no key, 401, 404, unreachable server)
        stops everything and raises; other failures (429 or 5xx left after the
        client's retries) are logged and recorded in the row's ``error``.
        """
        _positive_count("max_concurrency", max_concurrency)
        _positive_count("num_samples", num_samples)
        model_name = self._model_name()
        layer_list = resolve_layers(layers, self.n_layers)
        if not layer_list:
            raise AttnlensError(f"layers={layers!r} selects no layer")
        head_list = self._resolve_heads(heads)
        pairs = [(layer, head) for layer in layer_list for head in head_list]
        self._ensure({layer: head_list for layer in layer_list})
        prompts = {}
        for layer, head in pairs:
            samples = self.get_head_samples(layer, head, num_samples)
            prompts[(layer, head)] = self.build_prompt(samples, custom_prompt)
        client = self._client()
        results: dict[tuple[int, int], HeadDescription] = {}
        with ThreadPoolExecutor(max_workers=max_concurrency) as pool, tqdm(
            total=len(pairs), desc="describing heads", disable=not progress
        ) as bar:
            futures = {
                pool.submit(complete, client, model_name, prompts[p], system=self.system_prompt): p for p in pairs
            }
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    layer, head = futures[future]
                    exc = future.exception()
                    if isinstance(exc, DescribeError) and not exc.fatal:
                        logger.warning("layer %d head %d: %s", layer, head, exc)
                        results[(layer, head)] = HeadDescription(layer, head, None, prompts[(layer, head)], str(exc))
                    elif exc is not None:
                        for other in pending:
                            other.cancel()
                        raise exc
                    else:
                        text = future.result().text
                        record = self.heads[(layer, head)]
                        record.prompts.append(prompts[(layer, head)])
                        record.descriptions.append(text)
                        results[(layer, head)] = HeadDescription(layer, head, text, prompts[(layer, head)])
                    bar.update(1)
        return HeadDescriptions([results[p] for p in pairs])

    def _resolve_heads(self, heads: HeadSpec) -> tuple[int, ...]:
        return resolve_heads(heads, self.n_heads)  # type: ignore[return-value]

    def __repr__(self) -> str:
        return (
            f"AttentionData({len(self._rows)} texts, min_length={self.min_length}, max_length={self.max_length}, "
            f"suppress_first_token={self.suppress_first_token}, openai_model={self.openai_model!r}, "
            f"heads computed={sorted(self.heads)})"
        )
