"""Steering: the bias mechanism and the methods built on it."""

from .bias import BiasPlan, BiasTerm, apply_bias, complement, resolve_layers
from .guide import LEVEL_FACTORS, guide, guide_plan, level_delta
from .pasta import PASTA, load_head_config, pasta_plan
from ..api.profile import HeadProfile, profile_heads

__all__ = [
    "BiasPlan",
    "BiasTerm",
    "HeadProfile",
    "LEVEL_FACTORS",
    "PASTA",
    "apply_bias",
    "complement",
    "guide",
    "guide_plan",
    "level_delta",
    "load_head_config",
    "pasta_plan",
    "profile_heads",
    "resolve_layers",
]
