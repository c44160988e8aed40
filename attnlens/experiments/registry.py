"""The studies, in the one registry type (:class:`attnlens.core.registry.Registry`).

A study is a :class:`~attnlens.experiments.study.Study` subclass registered under its ``name``; it
names its configuration class (``config_class``) and says what it measures in one line (``help``).
:func:`register_study` adds one (also from a plugin: ``attnlens --plugin MODULE`` or an entry point of
the ``attnlens.plugins`` group), and from then on it runs in every door: :func:`run_experiment
<attnlens.experiments.runner.run_experiment>`, ``attnlens experiment NAME`` (a subcommand of its own,
with an option for each of its configuration's own fields), and, when it generates text (no
``run_study`` of its own), ``attnlens tune`` and ``attnlens compare``.

The built-in studies are declared by name and imported the first time they are asked for, so listing
the names imports none of them.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from ..core.errors import ExperimentError
from ..core.registry import Registry
from .config import ExperimentConfig
from .study import Study

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")


def _check(study: Study) -> None:
    config = getattr(study, "config_class", None)
    if not (isinstance(config, type) and issubclass(config, ExperimentConfig)):
        raise ExperimentError(f"study {study.name!r}: config_class must be an ExperimentConfig subclass, "
                              f"got {config!r}")
    if study.name in ("none", "emphatic"):
        raise ExperimentError(f"{study.name!r} is an experiment condition; choose another name for the study")


def _unknown(name: Any, registered: tuple[str, ...]) -> str:
    return f"unknown study {name!r}; choose from {', '.join(registered)}"


_STUDIES: Registry[Study] = Registry(
    "study", Study, check=_check, aliases=lambda study: (), error=ExperimentError, unknown=_unknown,
    name_rule=lambda name: _NAME.fullmatch(name) is not None,
    name_help="a letter, then letters, digits, '_' or '-' (it is a subcommand)",
)

for _name, _target in (
    ("summarize", "attnlens.experiments.summarize:SummarizeStudy"),
    ("needle", "attnlens.experiments.needle:NeedleStudy"),
    ("json", "attnlens.experiments.json_generation:JSONStudy"),
    ("bios-json", "attnlens.experiments.bios:BiosJSONStudy"),
    ("pronouns", "attnlens.experiments.bios:PronounsStudy"),
    ("bios", "attnlens.experiments.bios:BiasInBiosStudy"),
    ("counterfact", "attnlens.experiments.counterfact:CounterFactStudy"),
    ("instructions", "attnlens.experiments.instructions:InstructionsStudy"),
    ("faithfulness", "attnlens.experiments.faithfulness:FaithfulnessStudy"),
):
    _STUDIES.declare(_name, _target)


def register_study(study: Study | type[Study], *, replace: bool = False) -> Any:
    """Add a study (an instance, or a subclass to instantiate: usable as a class decorator); returns what
    it was given. A second study under a registered name raises unless ``replace=True``."""
    return _STUDIES.register(study, replace=replace)


def unregister_study(name: str) -> None:
    """Remove a registered study."""
    _STUDIES.unregister(name)


def studies() -> tuple[str, ...]:
    """The registered studies' names, in registration order (the built-in ones first)."""
    return _STUDIES.names()


def get_study(name: str | Study) -> Study:
    """The study called ``name`` (a study object is returned as it is); an unknown name is an ExperimentError
    listing the registered ones."""
    study = _STUDIES.get(name)
    return study if study is name else copy.copy(study)


def study_config(name: str) -> type[ExperimentConfig]:
    """The configuration class of the study called ``name``."""
    return _STUDIES.get(name).config_class


def generates(name: str | Study) -> bool:
    """Whether a study generates text the runner scores (a strength search and a comparison need that);
    a study that runs itself (``run_study``: faithfulness) does not."""
    return not callable(getattr(_STUDIES.get(name), "run_study", None))
