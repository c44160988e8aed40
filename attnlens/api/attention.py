"""AttentionData with its views: ``display=True`` and ``print_description=True`` show tables and text.

:class:`attnlens.analysis.attention_data.AttentionData` computes; this
subclass adds the display through :mod:`attnlens.viz` (a table in a notebook,
a log record elsewhere). ``attnlens.AttentionData`` is this class.
"""

from __future__ import annotations

from collections.abc import Sequence

from .. import viz
from ..analysis.attention_data import AttentionData as _AttentionData
from ..analysis.multiples import RankedMultiple


class AttentionData(_AttentionData):
    __doc__ = _AttentionData.__doc__

    def display_multiples(self, rows: Sequence[RankedMultiple], title: str) -> None:
        table = viz.multiples_table(rows, title=title, suppress_first_token=self.suppress_first_token)
        viz.show(table, text=viz.multiples_text(rows, title=title))

    def display_description(self, layer: int, head: int, description: str) -> None:
        viz.show_description(layer, head, description)
