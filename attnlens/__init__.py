"""attnlens: steer and explain where a language model's attention goes."""

from . import viz
from .attribution import InfluenceTrace, influence, rollout, trace_influence
from .core.errors import (
    AttnlensError, CLIError, DescribeError, DirectUnavailable, ExperimentError, HeadConfigError, ModelLoadError,
    SpanError, TagError,
)
from .core.errors import AttnlensError, ModelLoadError, SpanError, TagError
from .experiments import ExperimentConfig, run_experiment
from .analysis.attention_data import AttentionData
from .runtime.models import load_model
from .api.pipeline import PayAttentionPipeline, Prompt, TokenSpan, pipeline, prepare
from .prompts.spans import encode_chat, encode_text
from .steering import BiasPlan, apply_bias, guide, guide_plan, level_delta
from .steering.pasta import PASTA, load_head_config, pasta
from .api.profile import HeadProfile, profile_heads
from .prompts.tags import ParsedText, TagSpan, escape_tags, parse_tags

__version__ = "0.1.0"

__all__ = [
    "AttentionData",
    "AttnlensError",
    "BiasPlan",
    "DescribeError",
    "ExperimentConfig",
    "HeadProfile",
    "InfluenceTrace",
    "ModelLoadError",
    "PASTA",
    "ParsedText",
    "PayAttentionPipeline",
    "Prompt",
    "SpanError",
    "TagError",
    "TagSpan",
    "TokenSpan",
    "apply_bias",
    "encode_chat",
    "encode_text",
    "escape_tags",
    "guide",
    "guide_plan",
    "influence",
    "level_delta",
    "load_head_config",
    "load_model",
    "parse_tags",
    "pasta",
    "pipeline",
    "prepare",
    "profile_heads",
    "rollout",
    "run_experiment",
    "trace_influence",
    "viz",
]
