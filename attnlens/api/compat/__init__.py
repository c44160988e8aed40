"""Code written for pay-attention-pipeline, pastalib, AISteer360's PASTA or attention-data, run by changing the import.

- :mod:`attnlens.api.compat.pap`: ``transformers.pipeline("pay-attention", model=...)`` (registered
  with transformers' ``PIPELINE_REGISTRY`` when ``attnlens`` is imported);
- :mod:`attnlens.api.compat.pastalib`: ``PASTA(model, tokenizer, head_config=..., alpha=...,
  scale_position=...)`` with ``inputs_from_batch`` and ``apply_steering``;
- :mod:`attnlens.api.compat.attention_data`: ``AttentionData`` with attention-data's
  argument order (``describe_head(head, layer, ...)``) and its rows.

The docs' page "Coming from other tools" (docs/coming-from.md) lists what differs from each original and why.
"""

from .attention_data import AttentionData
from .pap import TransformersPayAttentionPipeline, register
from .pastalib import PASTA

__all__ = ["AttentionData", "PASTA", "TransformersPayAttentionPipeline", "register"]
