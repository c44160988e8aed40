"""Ranking what a head attends to: every ``(token, multiple)`` pair of its rows, highest first.

:class:`Ranking` is the part of :class:`~attnlens.analysis.attention_data.AttentionData`
that lists the pairs of the samples it captured (``ranked_multiples``,
``get_ranked_multiples``, ``get_random_multiples``); the class it is mixed into
supplies the captured rows, the head checks and the display.
"""

from __future__ import annotations

from .describing import _positive_count
from .multiples import RankedMultiple, RankedMultiples, same_token


class Ranking:
    """The ranking methods of AttentionData (mixed in: it reads the rows and heads AttentionData keeps)."""

    def ranked_multiples(self, layer: int = 0, head: int = 0) -> RankedMultiples:
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
                            sample.text_index, i, tm.key, data.layer, data.head,
                        )
                    )
            ranked.sort(key=lambda m: -m.multiple)  # stable: ties keep text/query/key order
            data._ranked = RankedMultiples(ranked)
        return data._ranked

    def get_ranked_multiples(
        self,
        layer: int = 0,
        head: int = 0,
        str_token: str | None = None,
        num_multiples: int = 10,
        reverse: bool = False,
        display: bool = False,
    ) -> RankedMultiples:
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
        chosen = RankedMultiples(ranked[:num_multiples])
        if display:
            title = f"Layer {layer} Head {head}, {'bottom' if reverse else 'top'} {len(chosen)} / {total} multiples"
            if str_token is not None:
                title += f" for {str_token!r}"
            self.display_multiples(chosen, title)
        return chosen

    def get_random_multiples(
        self, layer: int = 0, head: int = 0, num_multiples: int = 10, display: bool = False
    ) -> RankedMultiples:
        """``num_multiples`` random pairs of the head (all of them, with a warning, if fewer exist)."""
        layer, head = self._check(layer, head)
        ranked = self.ranked_multiples(layer, head)
        k = self._clamp("num_multiples", num_multiples, len(ranked), f"multiples for layer {layer} head {head}")
        chosen = RankedMultiples(ranked[i] for i in self._rng.sample(range(len(ranked)), k))
        if display:
            title = f"Layer {layer} Head {head}, {k} / {len(ranked)} random multiples"
            self.display_multiples(chosen, title)
        return chosen
