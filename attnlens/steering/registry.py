"""Steering methods as registered objects.

A steering method is one object: its ``name``, its parameters (:class:`Param`:
name, type, default, help) and :meth:`SteeringMethod.steering`, which says
what it does to a run for a batch of prompts:

- a :class:`~attnlens.steering.kinds.KeyBias` (a
  :class:`~attnlens.steering.bias.BiasPlan`): a static per-key bias (GUIDE,
  PASTA), which the fused path of a direct run executes without a score matrix;
- a :class:`~attnlens.steering.kinds.SpanReweight` (a
  :class:`~attnlens.steering.edits.RunEdit`): an edit computed during the run
  (of the scores, the pattern or the logits), which runs on the reference path
  (a method that has a static form of its edit returns a plan instead);
- a :class:`~attnlens.steering.kinds.DecodingOverride`: a steering that runs the
  decoding steps itself (SPA);
- ``None``: nothing to steer in these prompts.

Anything else is an AttnlensError naming the method (:func:`attnlens.steering.kinds.checked`).

:func:`register` adds a method (also from a user's own module), :func:`methods`
lists the names, :func:`get` returns one. GUIDE and PASTA register
themselves in their modules (:mod:`attnlens.steering.guide`,
:mod:`attnlens.steering.pasta`), which the package imports first. The chain, the pipeline, the
experiment conditions and the command line read this registry; nothing outside
a method's own module branches on its name.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..core.errors import AttnlensError
from ..core.registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    from ..core.model import Model
    from ..prompts.prompt import Prompt
    from .kinds import Steering

logger = logging.getLogger(__name__)


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


#: the default of a parameter that has none (the caller must give it)
REQUIRED: Any = _Required()

#: which spans of a prompt a method steers
SPAN_KINDS = ("guide", "emphasis", "influence")


@dataclass(frozen=True)
class Param:
    """One parameter of a steering method.

    ``type`` converts (and checks) a given value, e.g. ``float``; it may raise
    ``ValueError``/``TypeError`` or an :class:`~attnlens.core.errors.AttnlensError`.
    ``flag`` is its command-line option (default ``--{method}-{name}``).
    """

    name: str
    type: Callable[[Any], Any] = str
    default: Any = REQUIRED
    help: str = ""
    choices: tuple[Any, ...] | None = None
    flag: str | None = None

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def convert(self, value: Any, method: str) -> Any:
        if value is None and not self.required and self.default is None:
            return None
        try:
            out = self.type(value)
        except AttnlensError:
            raise
        except (TypeError, ValueError) as exc:
            raise AttnlensError(f"{method}: parameter {self.name}={value!r} is not valid: {exc}") from None
        if self.choices is not None and out not in self.choices:
            raise AttnlensError(
                f"{method}: parameter {self.name}={value!r} must be one of {', '.join(map(repr, self.choices))}"
            )
        return out


def layers_param(note: str = "", flag: str | None = None) -> Param:
    """The ``layers`` parameter the attention methods share (checked against the model when the plan is
    built); ``note`` ends its help, e.g. what the method's paper uses."""
    return Param("layers", lambda value: value, "all",
                 "all | none | first | last | layer indices" + (f" ({note})" if note else ""), flag=flag)


class SteeringMethod:
    """The base of a steering method; subclass it, set the class attributes, implement :meth:`steering`.

    Attributes:
        name: the registry key (also the experiment condition's name).
        help: one line for ``--help`` and listings.
        params: the method's :class:`Param` s.
        spans: which spans of a prompt it steers: ``"guide"`` (GUIDE tags),
            ``"emphasis"`` (substrings given with ``emphasize``) or ``"influence"``.
        edits: what it changes: ``"bias"`` (a static per-key bias) or
            ``"scores"``, ``"pattern"``, ``"logits"`` (an edit during the run).
        on_by_default: applied without being asked for (GUIDE: the tags ask).
        replaces: methods on by default that it replaces on the command line
            when asked for (they steer the same spans).

    How the experiments, ``attnlens tune`` and ``attnlens compare`` use a method (its
    focus tag, condition order, whether it joins default experiments, its strength,
    grid and paper default) is its profile, owned by the experiments layer
    (:mod:`attnlens.experiments.profiles`), not part of the method.
    """

    name: str = ""
    help: str = ""
    params: tuple[Param, ...] = ()
    spans: str = "emphasis"
    edits: str = "bias"
    on_by_default: bool = False
    #: methods on by default that it replaces on the command line when asked for (they steer the same spans)
    replaces: tuple[str, ...] = ()

    # ------------------------------------------------------------------ settings

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise AttnlensError(
            f"steering method {self.name!r} has no parameter {name!r}; its parameters: "
            f"{', '.join(p.name for p in self.params) or 'none'}"
        )

    def settings(self, values: Mapping[str, Any] | None = None, **more: Any) -> dict[str, Any]:
        """Every parameter's value: the given ones converted and checked, the others their defaults."""
        given = {**dict(values or {}), **more}
        if not isinstance(values or {}, Mapping):
            raise AttnlensError(f"{self.name}: settings must be a mapping of parameter names to values")
        known = {p.name for p in self.params}
        unknown = sorted(set(given) - known)
        if unknown:
            raise AttnlensError(
                f"steering method {self.name!r} has no parameter(s) {', '.join(unknown)}; its parameters: "
                f"{', '.join(sorted(known)) or 'none'}"
            )
        out: dict[str, Any] = {}
        for p in self.params:
            if p.name in given:
                out[p.name] = p.convert(given[p.name], self.name)
            elif p.required:
                raise AttnlensError(f"steering method {self.name!r} needs {p.name}" + (f" ({p.help})" if p.help else ""))
            else:
                out[p.name] = p.default
        return self.check(out)

    def check(self, settings: dict[str, Any]) -> dict[str, Any]:
        """Checks across parameters; returns the settings (override to add some)."""
        return settings

    def prompt_spans(self, prompt: "Prompt") -> list[tuple[int, int]]:
        """The ``(start, end)`` token spans of ``prompt`` this method steers."""
        return [(s.start, s.end) for s in prompt.spans if s.kind == self.spans]

    # ------------------------------------------------------------------ what it does to a run

    def steering(
        self, model: "Model", prompts: Sequence["Prompt"], settings: Mapping[str, Any]
    ) -> "Steering | None":
        """The steering of ``prompts`` (one row each, unpadded positions), or None (nothing to do).

        One of the kinds in :mod:`attnlens.steering.kinds`: a KeyBias (a BiasPlan), a SpanReweight
        (a RunEdit) or a DecodingOverride; anything else is an AttnlensError naming the method."""
        raise NotImplementedError(f"steering method {self.name!r} does not say what it does to a run")

    def describe(self, model: "Model", prompts: Sequence["Prompt"], settings: Mapping[str, Any]) -> dict[str, Any]:
        """Extra fields for a steered generation's result (e.g. PASTA's heads); none by default."""
        return {}

    # ------------------------------------------------------------------ experiments

    def experiment_settings(self, config: Any) -> dict[str, Any]:
        """The method's raw settings for an experiment: parameters named like a config field take
        its value, and ``config.steering[name]`` adds or overrides."""
        out = {p.name: getattr(config, p.name) for p in self.params if hasattr(config, p.name)}
        out.update(dict((getattr(config, "steering", None) or {}).get(self.name, {})))
        return out

    def ready(self, config: Any) -> bool:
        """Whether the experiment ``config`` gives every required parameter (a default condition then)."""
        given = self.experiment_settings(config)
        return all(p.name in given and given[p.name] is not None for p in self.params if p.required)

    def __repr__(self) -> str:
        return f"<steering method {self.name!r}>"


def _check(method: SteeringMethod) -> None:
    name = method.name
    if name in ("none", "emphatic"):
        raise AttnlensError(f"{name!r} is an experiment condition without steering; choose another name")
    if method.spans not in SPAN_KINDS:
        raise AttnlensError(f"steering method {name!r}: spans must be one of {', '.join(SPAN_KINDS)}")
    names = [p.name for p in method.params]
    if len(set(names)) != len(names):
        raise AttnlensError(f"steering method {name!r} declares a parameter twice")


_REGISTRY: Registry[SteeringMethod] = Registry("steering method", SteeringMethod, check=_check, aliases=lambda m: ())


def register(method: SteeringMethod | type[SteeringMethod], *, replace: bool = False) -> SteeringMethod:
    """Add a steering method (an instance or a subclass to instantiate); returns it.

    A second method under a registered name raises unless ``replace=True``.
    Usable as a class decorator: ``@register`` over a ``SteeringMethod`` subclass.
    """
    return _REGISTRY.register(method, replace=replace)


def unregister(name: str) -> None:
    """Remove a registered method (a user's; the built-in ones can be registered again)."""
    _REGISTRY.unregister(name)


def methods() -> tuple[str, ...]:
    """The registered steering methods' names, in registration order."""
    return _REGISTRY.names()


def get(method: str | SteeringMethod) -> SteeringMethod:
    """A registered method by name (a method object is returned as it is)."""
    return _REGISTRY.get(method)


def check_tags_steered(prompts: Sequence["Prompt"], methods: Sequence[SteeringMethod]) -> None:
    """With the default steering (no ``steer`` given), a prompt's GUIDE tags ask for the registered methods
    that are on by default: the method registered as ``"guide"`` (the built-in GUIDE, or one registered in its
    place with ``replace=True``) steers them. When none of ``methods`` steers tags (``unregister("guide")``, or a
    ``"guide"`` that is not on by default), a tagged prompt is an AttnlensError saying so, rather than a
    generation that silently ignores its tags."""
    tagged = [i for i, p in enumerate(prompts) if p.guide_spans()]
    if not tagged or any(m.spans == "guide" for m in methods):
        return
    where = "the prompt has" if len(prompts) == 1 else f"prompt {tagged[0]} has"
    if "guide" not in _REGISTRY:
        why = ("no steering method is registered as 'guide' (unregister('guide') removed it); register one "
               "again (attnlens.steering.register(GuideMethod()) or a method of your own named 'guide')")
    else:
        why = (f"the method registered as 'guide' ({type(get('guide')).__name__}) is not on by default "
               "or does not steer tags (set on_by_default = True and spans = 'guide')")
    raise AttnlensError(f"{where} GUIDE tags (<!-> ... <-!>) but no steering method steers them: {why}; "
                        "or remove the tags, or choose the methods with steer=")


def resolve(steer: Mapping[Any, Any] | Sequence[Any] | None) -> list[tuple[SteeringMethod, dict[str, Any]]]:
    """``{method: settings}`` (or a list of names, or ``(method, settings)`` pairs) as checked pairs."""
    if steer is None:
        return []
    if isinstance(steer, Mapping):
        items = list(steer.items())
    elif isinstance(steer, (str, SteeringMethod)):
        items = [(steer, {})]
    else:
        items = [(s, {}) if isinstance(s, (str, SteeringMethod)) else tuple(s) for s in steer]
    out = []
    seen = set()
    for item in items:
        if len(item) != 2:
            raise AttnlensError(f"a steering entry must be a method name or (method, settings), got {item!r}")
        method = get(item[0])
        if method.name in seen:
            raise AttnlensError(f"steering method {method.name!r} is given twice")
        seen.add(method.name)
        out.append((method, method.settings(item[1] or {})))
    return out
