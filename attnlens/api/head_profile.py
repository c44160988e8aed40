"""What profiling heads gives: each head's score, ranked, with the unsteered score beside it.

A :class:`HeadProfile` is what :func:`attnlens.api.profile.profile_heads` returns:
it ranks the heads, picks a PASTA head config (``head_config``), saves and loads
itself as JSON, and shows itself as a grid of scores.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import AttnlensError
from ..core.records import Showable
from ..core.validate import is_int
from ..steering.pasta import head_config_to_json


@dataclass(frozen=True, order=True)
class HeadScore:
    """One head's mean score (sorting orders by score, then gain)."""

    score: float
    gain: float  # score minus the unsteered baseline
    layer: int = field(compare=False)
    head: int = field(compare=False)


@dataclass
class HeadProfile(Showable):
    """The result of :func:`profile_heads`.

    ``scores[layer, head]`` is the mean score over the examples with that head
    alone steered (NaN for heads not profiled); ``baseline`` the unsteered mean.
    ``show()`` / ``view()``: the gains as a layer x head grid with its colour scale.
    ``to_json()`` is pastalib's head config as JSON text (what :meth:`save` writes);
    :meth:`as_dict` / ``to_dict()`` give everything.
    """

    scores: np.ndarray  # [n_layers, n_heads]
    per_example: np.ndarray  # [n_layers, n_heads, n_examples]
    baseline: float
    baseline_per_example: np.ndarray  # [n_examples]
    alpha: float
    scale_position: str
    scorer: str
    seconds: float = 0.0

    @property
    def n_layers(self) -> int:
        return int(self.scores.shape[0])

    @property
    def n_heads(self) -> int:
        return int(self.scores.shape[1])

    @property
    def n_examples(self) -> int:
        return int(self.per_example.shape[-1])

    @property
    def gains(self) -> np.ndarray:
        """``scores - baseline``: positive where steering the head alone helps."""
        return self.scores - self.baseline

    def ranking(self) -> list[HeadScore]:
        """Every profiled head, best first."""
        heads = [
            HeadScore(float(self.scores[l, h]), float(self.scores[l, h] - self.baseline), l, h)
            for l in range(self.n_layers)
            for h in range(self.n_heads)
            if not math.isnan(self.scores[l, h])
        ]
        return sorted(heads, reverse=True)

    def __len__(self) -> int:
        return int(np.count_nonzero(~np.isnan(self.scores)))

    def __iter__(self):
        return iter(self.ranking())

    def top(self, k: int, *, only_helpful: bool = False) -> dict[int, list[int]]:
        """A head config (``{layer: [heads]}``) of the ``k`` best heads.

        ``only_helpful=True`` keeps only heads that beat the unsteered baseline.
        """
        if not is_int(k) or k < 1:
            raise AttnlensError(f"k must be a positive integer, got {k!r}")
        chosen = [s for s in self.ranking() if not only_helpful or s.gain > 0][:k]
        config: dict[int, list[int]] = {}
        for s in chosen:  # layers in the order of their best head, as pastalib's files do
            config.setdefault(s.layer, []).append(s.head)
        return {layer: sorted(heads) for layer, heads in config.items()}

    def head_config(self, k: int | None = None, *, only_helpful: bool = False) -> dict[str, list[int]]:
        """pastalib's head config as JSON data (``{"layer": [heads]}``) of the ``k`` best heads (all: None)."""
        return head_config_to_json(self.top(k or max(len(self), 1), only_helpful=only_helpful))

    def to_json(self, k: int | None = None, *, only_helpful: bool = False, **kwargs: Any) -> str:
        """The JSON text of :meth:`head_config` (what :meth:`save` writes; ``json.dumps`` keywords pass through)."""
        return json.dumps(self.head_config(k, only_helpful=only_helpful), **kwargs)

    def save(self, path: str | os.PathLike, k: int | None = None, *, only_helpful: bool = False) -> Path:
        """Write :meth:`to_json` to ``path`` (readable by ``load_head_config`` and pastalib)."""
        file = Path(path).expanduser()
        file.write_text(self.to_json(k, only_helpful=only_helpful) + "\n")
        return file

    def to_dict(self) -> dict[str, Any]:
        return self.as_dict()

    def view(self, **options: Any) -> Any:
        from ..viz import head_grid_view

        return head_grid_view(
            self.gains.tolist(), f"Heads profiled: score gain over the unsteered baseline ({self.scorer})",
            caption=(f"each cell: the mean {self.scorer} score over n = {self.n_examples} examples with that head "
                     f"alone steered (alpha {self.alpha:g}), minus the unsteered mean {self.baseline:.4g}; red: "
                     "steering the head helps, blue: it hurts; grey: not profiled. Hover a cell for its value."),
            **options)

    def as_dict(self) -> dict[str, Any]:
        """Everything, JSON-ready: settings, baseline and the ranking."""
        return {
            "alpha": self.alpha,
            "scale_position": self.scale_position,
            "scorer": self.scorer,
            "n_examples": self.n_examples,
            "baseline": self.baseline,
            "seconds": self.seconds,
            "ranking": [
                {"layer": s.layer, "head": s.head, "score": s.score, "gain": s.gain} for s in self.ranking()
            ],
        }
