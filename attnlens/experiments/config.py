"""Experiment configuration: the conditions, :class:`ExperimentConfig` and its checks."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


from ..core.errors import AttnlensError, ExperimentError
from ..core.validate import LayerSpec, is_int, resolve_layers
from .profiles import profile

logger = logging.getLogger(__name__)

#: the conditions that present the focus without steering: the plain prompt, and the focus
#: rewritten as ``IMPORTANT: ...`` in upper case; with their places among the steering methods'
PROMPT_CONDITIONS: dict[str, int] = {"none": 0, "emphatic": 20}


def condition_methods() -> tuple[str, ...]:
    """Every condition kind, in the order they run: the prompt-only ones and every registered steering method."""
    from .. import steering

    order = dict(PROMPT_CONDITIONS)
    order.update({name: profile(name).condition_order for name in steering.methods()})
    return tuple(sorted(order, key=lambda name: order[name]))


def __getattr__(name: str) -> Any:  # CONDITION_METHODS follows the registry (PEP 562)
    if name == "CONDITION_METHODS":
        return condition_methods()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


IDENTITY_FIELDS = (
    "model", "max_new_tokens", "layers", "seed", "do_sample", "temperature", "top_p",
    "dataset", "pasta_heads", "pasta_alpha", "chat",
)
#: the prefix of a content digest in a run's identity (``pasta_heads``)
DIGEST_PREFIX = "sha256:"
#: a study's own settings that only choose which items run (a rerun with more of them adds items)
SELECTION_FIELDS = ("context_lengths", "depths")



# ----------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class Condition:
    """One way of presenting the focus: ``none``, ``emphatic`` or a steering method (``guide`` with ``delta``)."""

    method: str
    delta: float = 0.0

    @property
    def name(self) -> str:
        return f"{self.method}@{self.delta:g}" if self.delta else self.method


@dataclass
class ExperimentConfig:
    """Settings shared by every study; see ``attnlens experiment --help``."""

    out: str | os.PathLike
    deltas: Sequence[float] = (0.0, 1.0, 2.0)
    conditions: Sequence[str] | None = None  # None: every applicable method
    layers: LayerSpec = "all"
    model: str | None = None
    max_new_tokens: int = 64
    num_generations: int = 1
    do_sample: bool | None = None  # None: sample when num_generations > 1
    temperature: float = 0.7
    top_p: float | None = 0.95
    batch_size: int = 16
    max_batch_tokens: int = 8192  # rows x padded length per batch
    seed: int = 0
    limit: int | None = None
    dataset: str | None = None
    dataset_split: str = "train"
    text_field: str = "text"
    pasta_heads: str | None = None
    pasta_alpha: float = 0.01
    #: settings of steering methods by name (``{"pasta": {"alpha": 0.05}}``); a user's registered
    #: method takes its parameters from here
    steering: Mapping[str, Mapping[str, Any]] | None = None
    influence: bool = True
    chat: bool | None = None  # None: use the chat template when the tokenizer has one
    raw: bool = False  # True: prompts as written, without the chat template (``--raw``; the same as chat=False)
    bootstrap: int = 1000
    confidence: float = 0.95
    plots: bool = True
    fresh: bool = False

    def __post_init__(self) -> None:
        if self.raw:  # the one rule's switch, named as in the pipeline and on the command line
            if self.chat:
                raise ExperimentError("raw=True and chat=True disagree: give one")
            self.chat = False

    def identity(self) -> dict[str, Any]:
        """The settings that change outputs: the shared ones, then each study's own (its config's extra fields)."""
        out = {name: getattr(self, name) for name in IDENTITY_FIELDS}
        shared = {f.name for f in dataclasses.fields(ExperimentConfig)}
        for f in dataclasses.fields(self):
            if f.name not in shared and f.name not in SELECTION_FIELDS:
                value = getattr(self, f.name)
                out[f.name] = list(value) if isinstance(value, tuple) else value
        out["layers"] = _layers_key(self.layers)
        out["pasta_heads"] = content_digest(self.pasta_heads)
        out["do_sample"] = self.sampling
        if not self.sampling:
            out["temperature"] = out["top_p"] = None
        if self.steering:
            out["steering"] = {k: dict(v) for k, v in self.steering.items()}
        return out

    @property
    def sampling(self) -> bool:
        return self.num_generations > 1 if self.do_sample is None else bool(self.do_sample)


def content_digest(path: str | os.PathLike | None) -> str | None:
    """What a settings file holds, as ``sha256:<hex>``: the SHA-256 of its JSON in a canonical form (keys
    sorted, no spaces), or of its bytes when it is not JSON. A file is part of a run's identity by its
    content, not its path: the same heads under another name resume, an edited file does not.
    A file that cannot be read stays its path (the step that reads it refuses it)."""
    import hashlib
    import json

    if path is None:
        return None
    try:
        data = Path(path).expanduser().read_bytes()
    except (OSError, ValueError, TypeError):
        return str(path)
    try:
        canonical = json.dumps(json.loads(data.decode("utf-8-sig")), sort_keys=True, ensure_ascii=False,
                               separators=(",", ":")).encode("utf-8", "surrogatepass")
    except (UnicodeDecodeError, ValueError, RecursionError):
        canonical = data
    return DIGEST_PREFIX + hashlib.sha256(canonical).hexdigest()


def _layers_key(layers: LayerSpec) -> Any:
    if isinstance(layers, (str, int)) or layers is None:
        return layers
    return list(layers)


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool):
        raise ExperimentError(f"{what} must be a number, got {value!r}")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ExperimentError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(x):
        raise ExperimentError(f"{what} must be finite, got {value!r}")
    return x


def _positive_int(value: Any, what: str, *, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if not is_int(value) or value < 1:
        raise ExperimentError(f"{what} must be a positive integer, got {value!r}")
    return value


def resolve_conditions(config: ExperimentConfig) -> list[Condition]:
    """The conditions a config asks for, validated (GUIDE at delta 0 is the ``none`` condition)."""
    if isinstance(config.deltas, (str, bytes)) or not isinstance(config.deltas, Iterable):
        raise ExperimentError(f"deltas must be a list of numbers, got {config.deltas!r}")
    deltas = [_number(d, f"delta {d!r}") for d in config.deltas]
    from .. import steering

    kinds = condition_methods()
    methods = list(config.conditions) if config.conditions else None
    if methods is None:
        methods = [m for m in kinds if m in PROMPT_CONDITIONS or steering.get(m).on_by_default
                   or (profile(m).default_condition and steering.get(m).ready(config))]
    unknown = [m for m in methods if m not in kinds]
    if unknown:
        raise ExperimentError(
            f"unknown condition(s) {', '.join(map(repr, unknown))}; choose from {', '.join(kinds)}"
        )
    out: list[Condition] = []
    for method in kinds:
        if method not in methods:
            continue
        if method in PROMPT_CONDITIONS:
            if Condition(method) not in out:
                out.append(Condition(method))
            continue
        steerer, policy = steering.get(method), profile(method)
        if not steerer.ready(config):
            missing = [p for p in steerer.params if p.required]
            raise ExperimentError(
                f"the {method!r} condition needs "
                + ", ".join(f"{p.name} ({p.help})" if p.help else p.name for p in missing)
                + ": " + (policy.experiment_hint or f"pass it in ExperimentConfig.steering={{{method!r}: {{...}}}}")
            )
        if policy.sweeps_strength:
            if not deltas:
                raise ExperimentError(f"the {method!r} condition needs at least one delta")
            for d in deltas:
                cond = Condition("none") if d == 0 else Condition(method, d)
                if cond not in out:
                    out.append(cond)
        elif Condition(method) not in out:
            out.append(Condition(method))
    return out


def validate_config(config: ExperimentConfig) -> list[Condition]:
    """Check every setting that can be checked without a model; returns the conditions."""
    conditions = resolve_conditions(config)
    if config.steering is not None:
        from .. import steering

        if not isinstance(config.steering, Mapping):
            raise ExperimentError(f"steering must be {{method: {{parameter: value}}}}, got {config.steering!r}")
        unknown = sorted(set(config.steering) - set(steering.methods()))
        if unknown:
            raise ExperimentError(f"steering names unknown method(s) {', '.join(map(repr, unknown))}; "
                                  f"registered: {', '.join(steering.methods())}")
    _positive_int(config.max_new_tokens, "max_new_tokens")
    _positive_int(config.num_generations, "num_generations")
    _positive_int(config.batch_size, "batch_size")
    _positive_int(config.max_batch_tokens, "max_batch_tokens")
    _positive_int(config.limit, "limit", allow_none=True)
    if not is_int(config.seed):
        raise ExperimentError(f"seed must be an integer, got {config.seed!r}")
    if _number(config.temperature, "temperature") <= 0:
        raise ExperimentError(f"temperature must be > 0, got {config.temperature!r}")
    if config.top_p is not None and not 0 < _number(config.top_p, "top_p") <= 1:
        raise ExperimentError(f"top_p must be in (0, 1], got {config.top_p!r}")
    if not 0 < _number(config.pasta_alpha, "pasta_alpha") <= 1:
        raise ExperimentError(f"pasta_alpha must be in (0, 1], got {config.pasta_alpha!r}")
    if not 0 < _number(config.confidence, "confidence") < 1:
        raise ExperimentError(f"confidence must be in (0, 1), got {config.confidence!r}")
    if config.num_generations > 1 and config.do_sample is False:
        raise ExperimentError(
            "greedy decoding makes every generation of an item identical: "
            "use num_generations=1 or sampling (do_sample)"
        )
    try:  # syntax only; the range is checked against the model
        resolve_layers(config.layers, 10**6)
    except AttnlensError as exc:
        raise ExperimentError(f"layers: {exc}") from None
    out = Path(config.out).expanduser()
    if out.exists() and not out.is_dir():
        raise ExperimentError(f"output directory {str(out)!r} is a file")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ExperimentError(f"output directory {str(out)!r}: {str(parent)!r} is a file")
            break
    return conditions

