"""AttentionData with its views: ``display=True`` and ``print_description=True`` show tables and text,
and :meth:`AttentionData.patterns_view` shows a head's patterns.

:class:`attnlens.analysis.attention_data.AttentionData` computes; this
subclass adds the display through :mod:`attnlens.viz` (a table in a notebook,
a log record elsewhere). ``attnlens.AttentionData`` is this class.
"""

from __future__ import annotations

from collections.abc import Sequence

from .. import viz
from ..analysis.attention_data import AttentionData as _AttentionData
from ..analysis.multiples import RankedMultiple
from ..viz import HTMLView


class AttentionData(_AttentionData):
    __doc__ = _AttentionData.__doc__

    def display_multiples(self, rows: Sequence[RankedMultiple], title: str) -> None:
        table = viz.multiples_table(rows, title=title, suppress_first_token=self.suppress_first_token)
        viz.show(table, text=viz.multiples_text(rows, title=title))

    def display_description(self, layer: int, head: int, description: str) -> None:
        viz.show_description(layer, head, description)

    def patterns_view(
        self,
        layer: int,
        head: int,
        texts: Sequence[int] | None = None,
        *,
        max_texts: int = 4,
        suppress_first_token: bool | None = None,
    ) -> HTMLView:
        """One head's attention pattern over sample texts, as interactive circuitsvis views.

        :meth:`pattern_samples` (computing the head's patterns if needed), then
        :func:`attnlens.viz.head_patterns`; the arguments are :meth:`pattern_samples`'.
        """
        samples = self.pattern_samples(layer, head, texts, max_texts=max_texts,
                                       suppress_first_token=suppress_first_token)
        return viz.head_patterns(samples)
