"""attnlens: steer and explain where a language model's attention goes.

The package is layered; each layer imports only the ones listed before it:
``core`` (model facts, hook names, checks, errors), ``prompts``, ``steering``
(plan builders), ``runtime``, ``attribution``, ``analysis``, ``viz``, ``api``,
``experiments``, ``cli``.
"""

from . import viz

from .api import compat
from .api import PASTA, AttentionData, HeadProfile, PastaSettings, PayAttentionPipeline, pipeline, prepare, profile_heads
from .api.chain import influence_report, measure_influence, plans_for, steered_generation
from .attribution import InfluenceTrace, influence, rollout, trace_influence
from .core.errors import (
    AttnlensError,
    CLIError,
    DescribeError,
    DirectUnavailable,
    ExperimentError,
    HeadConfigError,
    ModelLoadError,
    SpanError,
    TagError,
    UpstreamDriftError,
)
from .core.model import Model
from .experiments import ExperimentConfig, run_experiment
from .prompts import ParsedText, Prompt, TagSpan, TokenSpan, encode_chat, encode_text, escape_tags, parse_tags
from .prompts.prompt import locate_substrings, tokenize_prompt
from .runtime import Generation, generate_batch, load_model
from .steering import (
    BiasPlan,
    apply_bias,
    guide,
    guide_plan,
    guide_plan_for,
    level_delta,
    load_head_config,
    pasta,
    pasta_plan,
    with_strength,
)

__version__ = "0.1.0"

compat.register_on_import()  # transformers.pipeline("pay-attention", model=...) after `import attnlens`

__all__ = [
    "AttentionData", "AttnlensError", "BiasPlan", "CLIError", "DescribeError", "DirectUnavailable",
    "ExperimentConfig", "ExperimentError", "compat", "Generation", "HeadConfigError", "HeadProfile", "InfluenceTrace",
    "Model", "ModelLoadError", "PASTA", "ParsedText", "PastaSettings", "PayAttentionPipeline", "Prompt",
    "SpanError", "TagError", "TagSpan", "TokenSpan", "UpstreamDriftError", "apply_bias", "encode_chat", "encode_text", "escape_tags",
    "generate_batch", "guide", "guide_plan", "guide_plan_for", "influence", "influence_report", "level_delta",
    "load_head_config", "load_model", "locate_substrings", "measure_influence", "parse_tags", "pasta",
    "pasta_plan", "pipeline", "plans_for", "prepare", "profile_heads", "rollout", "run_experiment",
    "steered_generation", "tokenize_prompt", "trace_influence", "viz", "with_strength",
]
