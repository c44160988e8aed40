"""Does steering help? The GUIDE paper's studies as runnable experiments.

Three studies (French summaries, needle in a haystack, JSON generation), each
run under the same conditions (no emphasis, GUIDE at each delta, an emphatic
plain prompt, PASTA) with one shared runner::

    from attnlens.experiments import SummarizeConfig, run_experiment

    result = run_experiment("summarize", SummarizeConfig(out="results/fr", deltas=[0, 1, 2], limit=20))
    result.table()   # per-condition means with bootstrap intervals

On the command line: ``attnlens experiment {summarize,needle,json,...} --help``.

The studies are registered (:mod:`.registry`): :func:`register_study` adds one (also from a plugin),
:func:`studies` lists them, :func:`get_study` returns one; :data:`STUDY_NAMES`, :data:`STUDIES` and
:data:`CONFIGS` read the registry each time.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ..core.errors import ExperimentError

# Names load on first use (PEP 562): the command line reads this package's
# names without importing torch.
_EXPORTS = {
    "JSONConfig": ".json_generation", "JSONStudy": ".json_generation",
    "NeedleConfig": ".needle", "NeedleStudy": ".needle",
    "CONDITION_METHODS": ".config", "Condition": ".config", "ExperimentConfig": ".config",
    "resolve_conditions": ".config", "validate_config": ".config",
    "run_experiment": ".runner", "read_rows": ".store",
    "Item": ".study", "Score": ".study", "Segments": ".study", "Study": ".study", "build_messages": ".study",
    "ConditionSummary": ".summary", "ExperimentResult": ".summary",
    "SummarizeConfig": ".summarize", "SummarizeStudy": ".summarize",
    "BiosConfig": ".bios", "PronounsConfig": ".bios", "CounterFactConfig": ".counterfact",
    "InstructionsConfig": ".instructions",
    "FaithfulnessConfig": ".faithfulness",
}
#: the study registry's functions (:mod:`.registry`): loaded on first use, like the names above
_REGISTRY_NAMES = ("register_study", "unregister_study", "studies", "get_study", "study_config")


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    elif name in _REGISTRY_NAMES:
        value = getattr(importlib.import_module(".registry", __name__), name)
    elif name in ("STUDY_NAMES", "STUDIES", "CONFIGS"):  # read from the registry at each use: plugins add studies
        from . import registry

        names = registry.studies()
        if name == "STUDY_NAMES":
            return names
        if name == "STUDIES":
            return {key: type(registry.get_study(key)) for key in names}
        return {key: registry.study_config(key) for key in names}
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from .json_generation import JSONConfig, JSONStudy
    from .needle import NeedleConfig, NeedleStudy
    from .config import CONDITION_METHODS, Condition, ExperimentConfig, resolve_conditions, validate_config
    from .runner import run_experiment
    from .store import read_rows
    from .study import Item, Score, Segments, Study, build_messages
    from .summary import ConditionSummary, ExperimentResult
    from .summarize import SummarizeConfig, SummarizeStudy
    from .registry import get_study, register_study, studies, study_config, unregister_study
    STUDY_NAMES: tuple[str, ...]
    STUDIES: dict[str, type[Study]]
    CONFIGS: dict[str, type[ExperimentConfig]]


__all__ = [
    "CONFIGS",
    "CONDITION_METHODS",
    "STUDIES",
    "STUDY_NAMES",
    "Condition",
    "ConditionSummary",
    "ExperimentConfig",
    "ExperimentError",
    "ExperimentResult",
    "Item",
    "JSONConfig",
    "JSONStudy",
    "NeedleConfig",
    "NeedleStudy",
    "Score",
    "Segments",
    "Study",
    "SummarizeConfig",
    "SummarizeStudy",
    "build_messages",
    "get_study",
    "read_rows",
    "register_study",
    "resolve_conditions",
    "run_experiment",
    "studies",
    "study_config",
    "unregister_study",
    "validate_config",
]
