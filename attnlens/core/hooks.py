"""TransformerLens hook names attnlens uses: the public contract between a model and its hooks.

Each is a format string over ``layer``: ``SCORES.format(layer=3)``.
"""

from __future__ import annotations

#: pre-softmax attention scores, ``[batch, head, query, key]`` (``[batch, head, 1, key]`` when decoding)
SCORES = "blocks.{layer}.attn.hook_attn_scores"
#: the attention pattern after the softmax, ``[batch, head, query, key]``
PATTERN = "blocks.{layer}.attn.hook_pattern"
#: the per-head values, ``[batch, pos, head, d_head]``
VALUES = "blocks.{layer}.attn.hook_v"
#: the residual stream entering a block, ``[batch, pos, d_model]``
RESID_PRE = "blocks.{layer}.hook_resid_pre"
#: the attention sub-layer's output, ``[batch, pos, d_model]``
ATTN_OUT = "blocks.{layer}.hook_attn_out"
#: the attention's normalised input (the first norm's output), ``[batch, pos, d_model]``
ATTN_INPUT = "blocks.{layer}.ln1.hook_out"
#: every head's output before the output projection, ``[batch, pos, head, d_head]``
HEAD_OUT = "blocks.{layer}.attn.hook_z"
#: a block's input (the bridge's block-level hook), ``[batch, pos, d_model]``
BLOCK_IN = "blocks.{layer}.hook_in"


def name(template: str, layer: int) -> str:
    """``template`` for ``layer``: ``name(SCORES, 2) == "blocks.2.attn.hook_attn_scores"``."""
    return template.format(layer=layer)
