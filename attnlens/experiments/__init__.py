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

from .json_generation import JSONConfig, JSONStudy
from .needle import NeedleConfig, NeedleStudy
from ..core.errors import ExperimentError
from .config import CONDITION_METHODS, METHODS, Condition, ExperimentConfig, resolve_conditions, validate_config
from .runner import run_experiment
from .store import read_rows
from .study import Item, Score, Segments, Study, build_messages
from .summary import ConditionSummary, ExperimentResult
from .summarize import SummarizeConfig, SummarizeStudy

STUDIES: dict[str, type[Study]] = {"summarize": SummarizeStudy, "needle": NeedleStudy, "json": JSONStudy}
CONFIGS: dict[str, type[ExperimentConfig]] = {
    "summarize": SummarizeConfig, "needle": NeedleConfig, "json": JSONConfig,
}


def get_study(name: str) -> Study:
    """The study called ``name`` (``summarize``, ``needle`` or ``json``)."""
    try:
        return STUDIES[name]()
    except (KeyError, TypeError):
        raise ExperimentError(f"unknown study {name!r}; choose from {', '.join(STUDIES)}") from None


__all__ = [
    "CONFIGS",
    "CONDITION_METHODS",
    "METHODS",
    "STUDIES",
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
