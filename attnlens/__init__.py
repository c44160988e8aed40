"""attnlens: steer and explain where a language model's attention goes.

The package is layered; each layer imports only the ones listed before it:
``core`` (model facts, hook names, checks, errors), ``prompts``, ``steering``
(plan builders), ``runtime``, ``attribution``, ``analysis``, ``viz``, ``api``,
``experiments``, ``cli``.
"""

import importlib
import importlib.abc
import importlib.util
import sys
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if "ipykernel" in sys.modules:  # in Jupyter without ipywidgets, tqdm.auto warns on import and uses its text bars:
    import warnings  # import it once, quietly, so attnlens' progress bars add no warning to a notebook's outputs

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="IProgress not found")
        import tqdm.auto  # noqa: F401

# Names load on first use (PEP 562), so ``import attnlens`` and ``attnlens --help``
# stay fast: torch, transformers and TransformerLens are imported when needed.
_EXPORTS: dict[str, str] = {
    "PASTA": ".api",
    "AttentionData": ".api",
    "HeadProfile": ".api",
    "PastaSettings": ".api",
    "PayAttentionPipeline": ".api",
    "pipeline": ".api",
    "prepare": ".api",
    "profile_heads": ".api",
    "influence_report": ".api.chain",
    "measure_influence": ".api.chain",
    "plans_for": ".api.chain",
    "steered_generation": ".api.chain",
    "steering_diff": ".api.views",
    "InfluenceTrace": ".attribution",
    "attribute": ".attribution",
    "faithfulness": ".attribution.faithfulness",
    "compare_faithfulness": ".attribution.faithfulness",
    "influence": ".attribution",
    "rollout": ".attribution",
    "trace_influence": ".attribution",
    "AttnlensError": ".core.errors",
    "CLIError": ".core.errors",
    "ContextWindowError": ".core.errors",
    "DescribeError": ".core.errors",
    "DirectUnavailable": ".core.errors",
    "ExperimentError": ".core.errors",
    "HeadConfigError": ".core.errors",
    "ModelLoadError": ".core.errors",
    "PluginError": ".core.errors",
    "SpanError": ".core.errors",
    "SweepError": ".core.errors",
    "TagError": ".core.errors",
    "UpstreamDriftError": ".core.errors",
    "Model": ".core.model",
    "ExperimentConfig": ".experiments",
    "run_experiment": ".experiments",
    "ParsedText": ".prompts",
    "Prompt": ".prompts",
    "TagSpan": ".prompts",
    "TokenSpan": ".prompts",
    "encode_chat": ".prompts",
    "encode_text": ".prompts",
    "escape_tags": ".prompts",
    "parse_tags": ".prompts",
    "locate_substrings": ".prompts.prompt",
    "tokenize_prompt": ".prompts.prompt",
    "Generation": ".runtime",
    "generate_batch": ".runtime",
    "load_model": ".runtime",
    "BiasPlan": ".steering",
    "apply_bias": ".steering",
    "guide": ".steering",
    "guide_plan": ".steering",
    "guide_plan_for": ".steering",
    "level_delta": ".steering",
    "load_head_config": ".steering",
    "pasta": ".steering",
    "pasta_plan": ".steering",
    "with_strength": ".steering",
}
#: modules reached as attributes: ``attnlens.compat`` is the compatibility layer
_MODULES = {"compat": ".api.compat"}
_SUBMODULES = {"viz", "core", "prompts", "steering", "runtime", "attribution", "analysis", "api", "experiments", "cli"}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    elif name in _MODULES:
        value = importlib.import_module(_MODULES[name], __name__)
    elif name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'attnlens' has no attribute {name!r}")
    globals()[name] = value
    return value


class _RegisterPayAttention(importlib.abc.MetaPathFinder):
    """Adds the ``"pay-attention"`` task to transformers' pipelines right after ``transformers.pipelines`` loads.

    ``transformers.pipelines`` takes seconds to import, so ``import attnlens`` does not
    import it; ``transformers.pipeline(...)`` does, and then the task is there
    (:func:`attnlens.api.compat.pap.register`).
    """

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != "transformers.pipelines":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:  # a transformers without pipelines
            return spec
        execute = spec.loader.exec_module

        def exec_module(module: Any) -> None:
            execute(module)
            from .api.compat.pap import register

            register()

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def _register_pay_attention() -> None:
    """Register the task now if ``transformers.pipelines`` is loaded, else as soon as it is."""
    if "transformers.pipelines" in sys.modules:
        from .api.compat.pap import register

        register()
    elif not any(isinstance(f, _RegisterPayAttention) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterPayAttention())


_register_pay_attention()  # transformers.pipeline("pay-attention", model=...) after `import attnlens`


def _wire_views() -> None:
    """The views live in ``attnlens.viz``, above the layers whose records they draw; the record layer
    (:mod:`attnlens.core.views`) imports none of them, and the package root gives its registry a source
    that imports them the first time a record asks for its view."""
    from .core.views import add_view_source

    add_view_source(lambda: importlib.import_module(".viz", __name__))


_wire_views()


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS) | set(_MODULES) | _SUBMODULES)


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from . import viz
    from .api import compat
    from .api import PASTA, AttentionData, HeadProfile, PastaSettings, PayAttentionPipeline, pipeline, prepare, profile_heads
    from .api.chain import influence_report, measure_influence, plans_for, steered_generation
    from .api.views import steering_diff
    from .attribution import InfluenceTrace, influence, rollout, trace_influence
    from .core.errors import (
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


__all__ = [
    "AttentionData", "AttnlensError", "BiasPlan", "CLIError", "ContextWindowError", "DescribeError", "DirectUnavailable",
    "ExperimentConfig", "ExperimentError", "compat", "Generation", "HeadConfigError", "HeadProfile", "InfluenceTrace",
    "Model", "ModelLoadError", "PASTA", "PluginError", "ParsedText", "PastaSettings", "PayAttentionPipeline", "Prompt",
    "SpanError", "SweepError", "TagError", "TagSpan", "TokenSpan", "UpstreamDriftError", "apply_bias", "encode_chat", "encode_text", "escape_tags",
    "generate_batch", "guide", "guide_plan", "guide_plan_for", "influence", "influence_report", "level_delta",
    "load_head_config", "load_model", "locate_substrings", "measure_influence", "parse_tags", "pasta",
    "pasta_plan", "pipeline", "plans_for", "prepare", "profile_heads", "rollout", "run_experiment",
    "steered_generation", "steering_diff", "tokenize_prompt", "trace_influence", "viz", "with_strength",
]
