"""attention-data's ``AttentionData``, argument for argument: change
``from attention_data import AttentionData`` to
``from attnlens.api.compat.attention_data import AttentionData`` and old code picks the head it always picked.

attention-data puts the head first in ``create_samples(head, layer)``,
``get_head_samples(head, layer, num_samples)`` and ``describe_head(head, layer, ...)``,
and the layer first in ``get_ranked_multiples(layer, head, ...)`` and
``get_random_multiples(layer, head, ...)``; this class takes each in that order.
``attnlens.AttentionData`` takes ``(layer, head)`` everywhere, as TransformerLens does.

Rows of ``get_ranked_multiples`` / ``get_random_multiples`` unpack as
``token, multiple, str_tokens, pattern = row`` and index as ``row[1]``
(:class:`~attnlens.analysis.multiples.RankedMultiple`, which also carries
``text_index``, ``query``, ``key``, ``layer`` and ``head``). ``get_head_samples``
returns the rows' text, as attention-data's does. ``display=True`` and
``print_description=True`` render in a notebook and print elsewhere.
"""

from __future__ import annotations

from typing import Any

from ..attention import AttentionData as _AttentionData


class AttentionData(_AttentionData):
    """``attnlens.AttentionData`` with attention-data's argument order; see the module docstring."""

    def create_samples(self, head: int = 0, layer: int = 0) -> list[Any]:  # type: ignore[override]
        """(Re)compute the samples of ``head`` in ``layer`` (head first, as attention-data has it)."""
        return super().create_samples(layer, head)

    def get_head_samples(self, head: int = 0, layer: int = 0, num_samples: int = 10) -> str:  # type: ignore[override]
        """``num_samples`` random rows of ``head`` in ``layer`` as the prompt's text (head first)."""
        return self.format_samples(super().get_head_samples(layer, head, num_samples))

    def describe_head(  # type: ignore[override]
        self,
        head: int = 0,
        layer: int = 0,
        num_samples: int = 10,
        custom_prompt: str | None = None,
        print_description: bool = True,
    ) -> tuple[str, str]:
        """Describe ``head`` in ``layer`` (head first, as attention-data has it); returns ``(prompt, description)``.

        ``print_description=True`` prints the description headed by its layer and head
        (Markdown in a notebook).
        """
        return super().describe_head(layer, head, num_samples, custom_prompt, print_description)
