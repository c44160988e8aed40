"""A study's items as PASTA profiling examples: the plain prompt, its focus to emphasise, the wanted answer."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from ..core.errors import ExperimentError
from .config import ExperimentConfig

logger = logging.getLogger(__name__)


def study_examples(study: Any, config: ExperimentConfig | None = None, *, tokenizer: Any = None) -> list[Any]:
    """:class:`~attnlens.api.profile_examples.ProfileExample` objects from ``study``'s items (``config.limit`` of them).

    Each example's prompt is the item's unsteered chat, its emphasis the focus and its target what
    :meth:`Study.profile_target` says a right answer begins with.
    """
    from ..api.profile_examples import ProfileExample
    from . import get_study

    if isinstance(study, str):
        study = get_study(study)
    config = config or ExperimentConfig(out=".")
    items = study.items(study.load_data(config), config, tokenizer)
    out = []
    for item in items:
        target = study.profile_target(item)
        if not target:
            continue
        seg = study.segments(item, config)
        messages = [{"role": "system", "content": seg.system}] if seg.system else []
        messages.append({"role": "user", "content": seg.before + seg.focus + seg.after})
        out.append(ProfileExample(tuple(messages), (seg.focus.strip(),), target))
    if not out:
        raise ExperimentError(f"the {study.name} study gives no profiling examples (its items have no target answer)")
    return out


def examples_of(studies: Sequence[str], limit: int | None, *, tokenizer: Any = None) -> list[Any]:
    """The first ``limit`` examples of each study in ``studies``, one list."""
    out = []
    for name in studies:
        out += study_examples(name, ExperimentConfig(out=".", limit=limit), tokenizer=tokenizer)
    return out
