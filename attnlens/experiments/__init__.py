"""Does steering help? The GUIDE paper's studies as runnable experiments.

Three studies (French summaries, needle in a haystack, JSON generation), each
run under the same conditions (no emphasis, GUIDE at each delta, an emphatic
plain prompt, PASTA) with one shared runner::

    from attnlens.experiments import SummarizeConfig, run_experiment

    result = run_experiment("summarize", SummarizeConfig(out="results/fr", deltas=[0, 1, 2], limit=20))
    result.table()   # per-condition means with bootstrap intervals

On the command line: ``attnlens experiment {summarize,needle,json} --help``.
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
#: the studies by name, as ``(module, study class, config class)``
_STUDIES = {"summarize": (".summarize", "SummarizeStudy", "SummarizeConfig"),
            "needle": (".needle", "NeedleStudy", "NeedleConfig"),
            "json": (".json_generation", "JSONStudy", "JSONConfig"),
            "bios-json": (".bios", "BiosJSONStudy", "BiosConfig"),
            "pronouns": (".bios", "PronounsStudy", "PronounsConfig"),
            "bios": (".bios", "BiasInBiosStudy", "BiosConfig"),
            "counterfact": (".counterfact", "CounterFactStudy", "CounterFactConfig"),
            "instructions": (".instructions", "InstructionsStudy", "InstructionsConfig"),
            "faithfulness": (".faithfulness", "FaithfulnessStudy", "FaithfulnessConfig")}
STUDY_NAMES = tuple(_STUDIES)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    elif name in ("STUDIES", "CONFIGS"):
        which = 1 if name == "STUDIES" else 2
        value = {key: getattr(importlib.import_module(spec[0], __name__), spec[which]) for key, spec in _STUDIES.items()}
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
    STUDIES: dict[str, type[Study]]
    CONFIGS: dict[str, type[ExperimentConfig]]


def get_study(name: str) -> Study:
    """The study called ``name`` (one of :data:`STUDY_NAMES`)."""
    try:
        return __getattr__("STUDIES")[name]()
    except (KeyError, TypeError):
        raise ExperimentError(f"unknown study {name!r}; choose from {', '.join(STUDIES)}") from None


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
    "resolve_conditions",
    "run_experiment",
    "validate_config",
]
