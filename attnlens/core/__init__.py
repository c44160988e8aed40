"""The base layer: model facts, hook names, shared checks and every exception. Imports nothing else of attnlens."""

from . import hooks
from .errors import (
    AttnlensError,
    CLIError,
    ContextWindowError,
    DescribeError,
    DirectUnavailable,
    ExperimentError,
    HeadConfigError,
    ModelLoadError,
    PluginError,
    SpanError,
    SweepError,
    TagError,
    UpstreamDriftError,
)
from .model import Model, context_window, model_device, model_dtype, model_shape, pad_id
from .validate import LayerSpec, check_int, is_int, resolve_heads, resolve_layer, resolve_layers

__all__ = [
    "AttnlensError", "CLIError", "ContextWindowError", "DescribeError", "DirectUnavailable", "ExperimentError", "HeadConfigError",
    "LayerSpec", "Model", "ModelLoadError", "PluginError", "SpanError", "SweepError", "TagError", "UpstreamDriftError", "check_int", "context_window", "hooks",
    "is_int", "model_device", "model_dtype", "model_shape", "pad_id", "resolve_heads", "resolve_layer",
    "resolve_layers",
]
