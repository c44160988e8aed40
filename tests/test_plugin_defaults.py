"""A plugin's steering method joins experiments that name it, and default experiments only when it asks to."""

from __future__ import annotations

from attnlens.experiments.config import ExperimentConfig, resolve_conditions
from attnlens.steering import Param, SteeringMethod, register


class _Plugin(SteeringMethod):
    name = "plugin_bias"
    params = (Param("value", float, 1.0),)
    spans = "guide"

    def steering(self, model, prompts, settings):  # pragma: no cover - never run here
        return None


def _names(config):
    return [c.method for c in resolve_conditions(config)]


def test_a_plugin_joins_default_experiments_only_when_it_asks(tmp_path):
    register(_Plugin())
    default = ExperimentConfig(out=str(tmp_path))
    assert "plugin_bias" not in _names(default)
    assert "guide" in _names(default)  # the built-in that asks for it still runs
    named = ExperimentConfig(out=str(tmp_path), conditions=["none", "plugin_bias"])
    assert "plugin_bias" in _names(named)

    class Asking(_Plugin):
        name = "plugin_asking"
        default_condition = True

    register(Asking())
    assert "plugin_asking" in _names(default)
