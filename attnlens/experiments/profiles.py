"""What the experiments, ``attnlens tune`` and ``attnlens compare`` do with a steering method: its profile.

A steering method (:class:`attnlens.steering.SteeringMethod`) says what it does to a run. How the
experiments use it is a :class:`Profile`, looked up by the method's name (:func:`profile`):

- ``focus_tag``: as an experiment condition, the tag the study's focus is wrapped in (a GUIDE tag
  gives a ``guide`` span, an influence tag an ``influence`` span, which becomes an ``emphasis`` span
  for a method with ``spans="emphasis"``); default: the one that gives the spans the method steers
  (GUIDE's level-2 tag for ``spans="guide"``, else the influence tag);
- ``condition_order``: where its conditions run among the others (``none`` is 0, ``emphatic`` 20);
- ``default_condition``: whether an experiment that names no conditions runs it (when its
  settings are complete);
- ``sweeps_strength``: one condition per strength of ``ExperimentConfig.deltas`` (``guide@2``);
- ``strength`` and ``strength_grid``: the parameter that sets its strength, and the values a
  strength search tries by default (weakest first: ties go to the later one);
- ``paper_strength`` and ``paper_source``: the strength its paper (or its authors' code) uses by
  default, which ``compare`` scores beside the tuned one, and where that value comes from;
- ``experiment_hint``: how an experiment gives the parameters it needs (for the error when it does not);
- ``compare_order``: where it stands among the methods ``compare`` runs when none are named
  (:func:`compared_methods`); None (the default): it runs only when named.

:func:`register_profile` adds one (also from a plugin: a :class:`Profile` a plugin names is put
in this registry, as its methods and studies are). The built-in methods' profiles are declared
here. A method without a registered profile gets one from the same names set as class attributes
on the method (the way plugins declared them before profiles), else the safe defaults: it joins no
default experiment, has no paper default, and its grid comes from its strength parameter (its
``choices``, else its default alone), else it must be given.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields, replace
from typing import Any

from ..core.errors import ExperimentError
from ..core.registry import Registry

logger = logging.getLogger(__name__)

__all__ = ["Profile", "compared_methods", "profile", "profiles", "register_profile", "unregister_profile"]

_DEFAULT_TAG = ("<?->", "<-?>")
_GUIDE_TAG = ("<!!->", "<-!!>")


@dataclass(frozen=True)
class Profile:
    """How the experiments, ``tune`` and ``compare`` use the steering method called ``name`` (see the module)."""

    name: str
    focus_tag: tuple[str, str] | None = None
    condition_order: int = 100
    default_condition: bool = False
    sweeps_strength: bool = False
    strength: str | None = None
    strength_grid: tuple[Any, ...] = ()
    paper_strength: Any = None
    paper_source: str = ""
    experiment_hint: str = ""
    compare_order: int | None = None

    def __post_init__(self) -> None:
        for name in ("focus_tag", "strength_grid"):  # a list given is kept as a tuple (hashable, unchanged)
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))

    def grid(self) -> tuple[Any, ...]:
        """The strengths a search tries by default: :attr:`strength_grid`, else from the strength parameter
        (its ``choices``, else its default alone); empty when there is none (the caller must give one)."""
        if self.strength_grid or self.strength is None:
            return tuple(self.strength_grid)
        from .. import steering

        param = steering.get(self.name).param(self.strength)
        if param.choices:
            return tuple(param.choices)
        return () if param.required or param.default is None else (param.default,)

    def reference_strength(self) -> Any:
        """The strength a comparison reads as the method's default: :attr:`paper_strength`, else the strength
        parameter's default (None when the method has no strength)."""
        if self.strength is None:
            return None
        if self.paper_strength is not None:
            return self.paper_strength
        from .. import steering

        return steering.get(self.name).param(self.strength).default

    def source(self) -> str:
        """Where the reference strength comes from (for a comparison's notes)."""
        return self.paper_source or f"the {self.strength} parameter's default"


def _fail(profile: Any, message: str) -> None:
    raise ExperimentError(f"the profile of steering method {getattr(profile, 'name', None)!r}: {message}")


def _check(profile: Profile) -> None:
    """A profile names a registered method; its fields have their types; its strength is one of the method's
    parameters, and every strength it names is a valid value of it."""
    from .. import steering

    if profile.name not in steering.methods():
        raise ExperimentError(f"a profile for unknown steering method {profile.name!r}: register the method "
                              f"first; registered: {', '.join(steering.methods())}")
    method = steering.get(profile.name)
    tag = profile.focus_tag
    if tag is not None and not (isinstance(tag, tuple) and len(tag) == 2 and all(isinstance(t, str) and t for t in tag)):
        _fail(profile, f"focus_tag must be a pair of tags (opener, closer), got {tag!r}")
    if isinstance(profile.condition_order, bool) or not isinstance(profile.condition_order, int):
        _fail(profile, f"condition_order must be an integer, got {profile.condition_order!r}")
    order = profile.compare_order
    if order is not None and (isinstance(order, bool) or not isinstance(order, int)):
        _fail(profile, f"compare_order must be an integer or None, got {order!r}")
    for name in ("default_condition", "sweeps_strength"):
        if not isinstance(getattr(profile, name), bool):
            _fail(profile, f"{name} must be True or False, got {getattr(profile, name)!r}")
    for name in ("paper_source", "experiment_hint"):
        if not isinstance(getattr(profile, name), str):
            _fail(profile, f"{name} must be text, got {getattr(profile, name)!r}")
    if not isinstance(profile.strength_grid, tuple):
        _fail(profile, f"strength_grid must be a list of strengths, got {profile.strength_grid!r}")
    if profile.strength is None:
        if profile.strength_grid or profile.paper_strength is not None:
            _fail(profile, "a strength_grid or paper_strength needs strength (the parameter it sets)")
        return
    try:
        param = method.param(profile.strength)
    except Exception as exc:  # an AttnlensError naming the method's parameters
        _fail(profile, f"strength: {exc}")
    named = [*profile.strength_grid, *(() if profile.paper_strength is None else (profile.paper_strength,))]
    for value in named:
        try:
            param.convert(value, method.name)
        except Exception as exc:
            _fail(profile, f"strength {value!r} is not a valid {profile.strength}: {exc}")


_PROFILES: Registry[Profile] = Registry("steering profile", Profile, check=_check, aliases=lambda p: (),
                                        error=ExperimentError)

#: the names a profile reads from a method's class attributes when none is registered for it
LEGACY_FIELDS = tuple(f.name for f in fields(Profile) if f.name != "name")

# ----------------------------------------------------------------------------- the built-in methods

GUIDE = Profile("guide", focus_tag=_GUIDE_TAG, condition_order=10, default_condition=True, sweeps_strength=True,
                compare_order=10,
                strength="delta_mid", strength_grid=(0.5, 1.0, 1.5, 2.0, 3.0), paper_strength=1.0,
                paper_source="pay-attention-pipeline's default delta_mid (the GUIDE authors' package)")
#: smaller alpha is stronger (the rest of the prompt is scaled by alpha), so the grid runs from weak to strong
PASTA = Profile("pasta", condition_order=30, default_condition=True, strength="alpha", compare_order=50,
                strength_grid=(0.5, 0.2, 0.1, 0.05, 0.01, 0.001), paper_strength=0.01,
                paper_source="the PASTA paper's alpha (Zhang et al., 2023)",
                experiment_hint="pass pasta_heads (--pasta-heads FILE)")
INSTABOOST = Profile("instaboost", focus_tag=_GUIDE_TAG, condition_order=40, strength="alpha", compare_order=20,
                     strength_grid=(1.5, 2.0, 3.0, 5.0, 8.0, 12.0),
                     paper_source="the paper tunes alpha per task and names no default; this package's 5.0")
SPOTLIGHT = Profile("spotlight", focus_tag=_GUIDE_TAG, condition_order=45, strength="target", compare_order=30,
                    strength_grid=(0.05, 0.1, 0.2, 0.3, 0.5), paper_strength=0.2,
                    paper_source="the target proportion of IBM's agent lifecycle toolkit")
SPA = Profile("spa", focus_tag=_GUIDE_TAG, condition_order=50, strength="omega", compare_order=40,
              strength_grid=(1.1, 1.25, 1.5, 2.0, 3.0), paper_strength=1.4,
              paper_source="the authors' package's default anchoring_strength (its probability modulation is "
                           "not used here)")

for _name in ("GUIDE", "PASTA", "INSTABOOST", "SPOTLIGHT", "SPA"):  # checked when first asked for
    _PROFILES.declare(globals()[_name].name, f"{__name__}:{_name}")


# ----------------------------------------------------------------------------- the registry


def register_profile(profile: Profile, *, replace: bool = False) -> Profile:
    """Add ``profile`` (its method must be registered first); a second one for a method raises unless
    ``replace=True``. A bad profile (an unknown method, a strength the method does not have, a grid value
    its strength parameter refuses) is an :class:`~attnlens.core.errors.ExperimentError` naming it."""
    return _PROFILES.register(profile, replace=replace)


def unregister_profile(name: str) -> None:
    """Remove the profile registered for the method ``name``."""
    _PROFILES.unregister(name)


def profiles() -> tuple[str, ...]:
    """The methods that have a registered profile (the built-in ones first)."""
    return _PROFILES.names()


def compared_methods() -> tuple[str, ...]:
    """The methods ``compare`` runs when none are named: every registered steering method whose profile has a
    ``compare_order``, in that order (the built-ins: guide, instaboost, spotlight, spa, pasta)."""
    from .. import steering

    chosen = []
    for i, name in enumerate(steering.methods()):
        order = profile(name).compare_order
        if order is not None:
            chosen.append((order, i, name))
    return tuple(name for _, _, name in sorted(chosen))


def _from_method(method: Any) -> Profile:
    """The profile of a method with none registered: its class attributes of the profile's names (the way
    plugins declared them before profiles), else the safe defaults."""
    given = {name: getattr(method, name) for name in LEGACY_FIELDS if hasattr(method, name)}
    out = Profile(method.name, **given)
    if given:
        _check(out)
    return out


def profile(method: Any) -> Profile:
    """The profile of a steering method (a name or the method): the registered one, else one read from the
    method's class attributes, else the safe defaults (see the module)."""
    from .. import steering

    method = steering.get(method)
    found = _PROFILES.get(method.name) if method.name in _PROFILES else _from_method(method)
    if found.focus_tag is None:  # the tag that gives the spans the method steers
        found = replace(found, focus_tag=_GUIDE_TAG if method.spans == "guide" else _DEFAULT_TAG)
    return found
