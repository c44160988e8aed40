"""Analysis: what single heads attend to (AttentionData), captured patterns, and LLM descriptions."""

from .attention_data import AttentionData

__all__ = ["AttentionData"]
