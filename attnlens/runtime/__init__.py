"""Runtimes: how a model runs. The bridge as it is, the direct run, profiling's prefix-cache run.

:func:`generate_batch` picks one (``backend="auto" | "direct" | "bridge"``) and
its result says which ran (``.backend``).
"""

from .direct import direct_reason
from .generate import BACKENDS, Generation, generate_batch, left_pad
from .models import load_model
from .prefix import PrefixRun

__all__ = ["BACKENDS", "Generation", "PrefixRun", "direct_reason", "generate_batch", "left_pad",
           "load_model"]
