"""Analysis: what single heads attend to (AttentionData), captured patterns, and LLM descriptions."""

from typing import TYPE_CHECKING, Any

__all__ = ["AttentionData"]


def __getattr__(name: str) -> Any:  # loaded on first use: the chat client needs no torch
    if name == "AttentionData":
        from .attention_data import AttentionData

        return AttentionData
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if TYPE_CHECKING:
    from .attention_data import AttentionData
