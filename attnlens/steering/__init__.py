"""Steering: plan builders only. Every method is a :class:`BiasPlan`; :func:`apply_bias` installs one."""

from .bias import BiasPlan, BiasTerm, apply_bias, complement
from .guide import LEVEL_FACTORS, guide, guide_plan, guide_plan_for, level_delta, with_strength
from .pasta import load_head_config, normalize_head_config, pasta, pasta_plan

__all__ = [
    "BiasPlan",
    "BiasTerm",
    "LEVEL_FACTORS",
    "apply_bias",
    "complement",
    "guide",
    "guide_plan",
    "guide_plan_for",
    "level_delta",
    "load_head_config",
    "normalize_head_config",
    "pasta",
    "pasta_plan",
    "with_strength",
]
