"""The study base: what a study says (items, prompt segments, scores) and how a condition presents its focus."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from ..prompts.tags import escape_tags
from .config import Condition, ExperimentConfig

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- studies


@dataclass(frozen=True)
class Segments:
    """A prompt in three parts: each condition presents ``focus`` differently."""

    before: str
    focus: str
    after: str
    system: str | None = None


@dataclass(frozen=True)
class Item:
    """One unit of a study: an id, the study's fields and the fields rows are grouped by."""

    id: str
    data: Mapping[str, Any]
    groups: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Score:
    """An output's numeric metrics (averaged in summaries) and any other details kept in the row."""

    metrics: Mapping[str, float]
    details: Mapping[str, Any] = field(default_factory=dict)


class Study(ABC):
    """What one experiment measures; the runner generates and records.

    A study is registered under its ``name`` (:func:`attnlens.experiments.register_study`); ``help`` is its
    one line in ``attnlens experiment --help``, and ``config_class`` the configuration it runs with (its
    own fields beyond :class:`ExperimentConfig`'s become options of its subcommand).
    """

    name: str = ""
    #: one line for ``attnlens experiment --help`` (default: the first line of the class docstring)
    help: str = ""
    #: the configuration class the study runs with
    config_class: type[ExperimentConfig] = ExperimentConfig
    #: the metric plotted against delta
    primary: str = ""
    #: every numeric metric :meth:`score` returns, in the order the summary lists them
    metrics: tuple[str, ...] = ()
    #: the metrics :meth:`model_scores` reads from the model's probabilities, not from the generated
    #: text; a strength search (which scores generated text) cannot use them
    model_metrics: tuple[str, ...] = ()
    #: item fields the rows carry for breakdowns (needle: length, depth)
    group_fields: tuple[str, ...] = ()
    #: the row field (one of ``group_fields``) by which items share a source; summaries then
    #: resample sources, not items (a cluster bootstrap). None: every item is independent
    cluster_field: str | None = None

    @abstractmethod
    def load_data(self, config: ExperimentConfig) -> Any:
        """The raw data (shipped files, a local file or a Hugging Face data set); runs before the model loads."""

    @abstractmethod
    def items(self, data: Any, config: ExperimentConfig, tokenizer: Any) -> list[Item]:
        """The study's items (``config.limit`` applied)."""

    @abstractmethod
    def segments(self, item: Item, config: ExperimentConfig) -> Segments:
        """The prompt of an item, with its focus."""

    def metric_names(self, config: ExperimentConfig) -> tuple[str, ...]:
        """The metrics a run with ``config`` records (:attr:`metrics` unless a setting adds some)."""
        return self.metrics

    def emphatic(self, focus: str) -> str:
        """The plain-prompt emphasis of the focus: ``IMPORTANT:`` and upper case."""
        return "IMPORTANT: " + focus.strip().upper()

    @abstractmethod
    def score(self, items: Sequence[Item], outputs: Sequence[str], config: ExperimentConfig) -> list[Score]:
        """Score each output against its item."""

    def data_fingerprints(self, data: Any) -> dict[str, str]:
        """Each part of the loaded data (an item, a shared text) and its fingerprint, for the run file:
        a folder's rows are only resumed from the same data."""
        from .store import fingerprint

        return {"data": fingerprint(data)}

    def model_scores(self, items: Sequence[Item], config: ExperimentConfig,
                     scorer: Any) -> list[Mapping[str, float]] | None:
        """Metrics read from the model under the condition's steering, added to :meth:`score`'s (None: none).

        ``scorer(item, texts)`` gives the mean log-probability per token of each text as the
        continuation of ``item``'s prompt under the condition.
        """
        return None

    def profile_target(self, item: Item) -> str | None:
        """What a right answer to ``item`` begins with, for PASTA head profiling (None: the study has none)."""
        return None

    def extra_outputs(self, rows: Sequence[Mapping[str, Any]], out: Path, config: ExperimentConfig) -> list[Path]:
        """Study-specific tables and plots; returns the files written."""
        return []



def tag_focus(condition: Condition, focus: str) -> str:
    """The focus as the condition presents it, wrapped in its steering method's tag (GUIDE's for ``guide``),
    else an influence tag."""
    from .. import steering
    from .profiles import profile

    opener, closer = ("<?->", "<-?>")
    if condition.method in steering.methods():
        opener, closer = profile(condition.method).focus_tag
    # the focus' surrounding whitespace stays outside the span
    lead = focus[: len(focus) - len(focus.lstrip())]
    trail = focus[len(focus.rstrip()) :]
    return f"{lead}{opener}{escape_tags(focus.strip())}{closer}{trail}"


def build_messages(study: Study, item: Item, condition: Condition,
                   config: ExperimentConfig) -> list[dict[str, str]]:
    """The chat of one item under one condition; the focus carries a GUIDE or influence tag."""
    seg = study.segments(item, config)
    focus = study.emphatic(seg.focus) if condition.method == "emphatic" else seg.focus
    content = escape_tags(seg.before) + tag_focus(condition, focus) + escape_tags(seg.after)
    messages = [{"role": "system", "content": escape_tags(seg.system)}] if seg.system else []
    messages.append({"role": "user", "content": content})
    return messages
