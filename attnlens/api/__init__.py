"""The API most callers use: the pipeline, the PASTA class, head profiling, the views that capture then show, and the chain they share."""

from . import chain
from .chain import PastaSettings, influence_report, measure_influence, plans_for, prepare, steered_generation
from .attention import AttentionData
from .pasta import PASTA
from .pipeline import PayAttentionPipeline, pipeline, run_prompts
from .profile import HeadProfile, profile_heads
from .views import steering_diff

__all__ = [
    "AttentionData", "HeadProfile", "PASTA", "PastaSettings", "PayAttentionPipeline", "chain", "influence_report",
    "measure_influence", "pipeline", "plans_for", "prepare", "profile_heads", "run_prompts", "steered_generation",
    "steering_diff",
]
