"""PASTA as a registered steering method: steer chosen heads towards a prompt's emphasised substrings.

The method's declaration imports nothing heavy (the command line reads it to
build its options); the plan comes from :mod:`attnlens.steering.pasta`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..core.errors import AttnlensError, HeadConfigError
from .registry import Param, SteeringMethod, register

#: PASTA's scale positions (:data:`attnlens.steering.pasta.SCALE_POSITIONS`)
SCALE_POSITIONS = ("exclude", "include")


def _head_config(value: Any) -> Any:
    if value is None or isinstance(value, bool):
        raise HeadConfigError(f"head_config must be {{layer: [heads]}}, a list of layers or a JSON path, got {value!r}")
    return value  # checked against the model's shape when the plan is built


def _alpha(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise AttnlensError(f"alpha must be a number, got {value!r}")
    try:
        return float(value)
    except ValueError:
        raise AttnlensError(f"alpha must be a number, got {value!r}") from None


class PastaMethod(SteeringMethod):
    """PASTA: ``log(alpha)`` on the other prompt keys (or ``log(1/alpha)`` on the spans) in chosen heads."""

    name = "pasta"
    help = "PASTA: steer chosen heads towards --emphasize substrings (adds up with GUIDE tags)"
    params = (
        Param("head_config", _head_config, help="a head configuration: JSON {\"layer\": [heads]} "
              "(pastalib's format, or `attnlens pasta profile`), a mapping or a list of layers",
              flag="--pasta-heads"),
        Param("alpha", _alpha, 0.01, "PASTA's scaling coefficient (exclude: in (0, 1])", flag="--alpha"),
        Param("scale_position", str, "exclude",
              "exclude: scale the rest of the prompt by alpha; include: scale the spans by 1/alpha",
              choices=SCALE_POSITIONS, flag="--scale-position"),
    )
    spans = "emphasis"
    edits = "bias"

    def check(self, settings: dict[str, Any]) -> dict[str, Any]:
        from .pasta import check_alpha, check_scale_position

        settings["scale_position"] = check_scale_position(settings["scale_position"])
        settings["alpha"] = check_alpha(settings["alpha"], settings["scale_position"])
        return settings

    def steering(self, model: Any, prompts: Sequence[Any], settings: Mapping[str, Any]) -> Any:
        from .pasta import pasta_plan

        spans = [self.prompt_spans(p) for p in prompts]
        return pasta_plan(model, spans, settings["head_config"], settings["alpha"], settings["scale_position"],
                          seq_len=[len(p) for p in prompts])

    def describe(self, model: Any, prompts: Sequence[Any], settings: Mapping[str, Any]) -> dict[str, Any]:
        """The emphasised spans (``pasta_spans``) of the first prompt and the heads steered (``pasta_heads``)."""
        from ..core.model import model_shape
        from .pasta import head_config_to_json, normalize_head_config

        spans = [{"start": s.start, "end": s.end, "text": sub}
                 for s, sub in zip(prompts[0].emphasis_spans(), prompts[0].substrings)] if prompts else []
        heads = normalize_head_config(settings["head_config"], *model_shape(model))
        return {"pasta_spans": spans, "pasta_heads": head_config_to_json(heads)}

    def experiment_settings(self, config: Any) -> dict[str, Any]:
        """``config.pasta_heads`` (a JSON file, read once) and ``config.pasta_alpha``; the paper's
        ``exclude``; ``config.steering["pasta"]`` overrides."""
        from .pasta import load_head_config

        out: dict[str, Any] = {"alpha": getattr(config, "pasta_alpha", 0.01), "scale_position": "exclude"}
        path = getattr(config, "pasta_heads", None)
        if path:
            if not Path(str(path)).expanduser().is_file():
                raise HeadConfigError(f"PASTA head configuration {str(path)!r} is not a file")
            out["head_config"] = load_head_config(path)
        out.update(dict((getattr(config, "steering", None) or {}).get(self.name, {})))
        return out

    def ready(self, config: Any) -> bool:
        return bool(getattr(config, "pasta_heads", None)) or "head_config" in (
            (getattr(config, "steering", None) or {}).get(self.name, {}))


register(PastaMethod())
