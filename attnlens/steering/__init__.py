"""Steering: registered methods and what they do to a run.

A method (:class:`SteeringMethod`) is registered by name (:func:`register`,
:func:`methods`, :func:`get`); for a batch of prompts it gives a static
:class:`BiasPlan` (installed by :func:`apply_bias`) or a :class:`RunEdit`
(an edit computed during the run, :mod:`.edits`). Built in: GUIDE and PASTA
(:mod:`.guide_method`, :mod:`.pasta_method`), InstABoost, SpotLight and SPA
(:mod:`.instaboost_method`, :mod:`.spotlight_method`, :mod:`.spa_method`; see docs/methods.md).
"""

from .registry import REQUIRED, Param, SteeringMethod, get, methods, register, resolve, unregister
from . import guide_method, pasta_method  # noqa: F401  (GUIDE and PASTA register themselves)
from . import instaboost_method, spa_method, spotlight_method  # noqa: F401  (more methods, registered)
from .bias import BiasPlan, BiasTerm, apply_bias, complement
from .edits import EditContext, RunEdit, install
from .guide import LEVEL_FACTORS, guide, guide_plan, guide_plan_for, level_delta, with_strength
from .pasta import load_head_config, normalize_head_config, pasta, pasta_plan

__all__ = [
    "BiasPlan",
    "BiasTerm",
    "EditContext",
    "LEVEL_FACTORS",
    "Param",
    "REQUIRED",
    "RunEdit",
    "SteeringMethod",
    "apply_bias",
    "complement",
    "get",
    "guide",
    "guide_plan",
    "guide_plan_for",
    "install",
    "level_delta",
    "load_head_config",
    "methods",
    "normalize_head_config",
    "pasta",
    "pasta_plan",
    "register",
    "resolve",
    "unregister",
    "with_strength",
]
