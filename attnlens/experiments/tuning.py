"""A steering method's strength chosen on a study's items (``attnlens tune STUDY --method NAME``).

The study's items are presented as the method's experiment condition presents
them (the focus in the method's tag) and scored with the study's metric; the
search itself is :func:`attnlens.experiments.tune.tune_strength` (development and
held-out split, repetition guard, saved and resumable).
"""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence
from pathlib import Path
from typing import Any

from ..core.errors import AttnlensError, ExperimentError
from .tune import Search, Tuning
from .config import Condition, ExperimentConfig
from .profiles import profile
from .runner import prepare_item
from .schedule import SavedOutputs
from .study import Study


def text_metric(study: Study, config: ExperimentConfig, metric: str | None) -> str:
    """``metric`` checked against the study's metrics scored on generated text (None: the first of them)."""
    names = [n for n in study.metric_names(config) if n not in study.model_metrics]
    if metric in study.model_metrics:
        raise ExperimentError(f"the {study.name} study's {metric!r} is read from the model's probabilities, not "
                              f"from the generated text a strength search scores; use one of: {', '.join(names)}")
    if metric is not None and metric not in names:
        raise ExperimentError(f"the {study.name} study has no metric {metric!r}; its metrics: {', '.join(names)}")
    if not names:
        raise ExperimentError(f"the {study.name} study has no metric scored on generated text to search on")
    return names[0] if metric is None else metric


def check_method_settings(config: ExperimentConfig) -> None:
    """Every method named in ``config.steering`` is registered and every parameter given is one of its own
    (a misspelt ``--set`` is an error naming it, not a setting silently unused)."""
    from .. import steering

    for name, values in dict(getattr(config, "steering", None) or {}).items():
        try:
            method = steering.get(name)
        except AttnlensError as exc:
            raise ExperimentError(f"steering settings for {name!r}: {exc}") from None
        known = {p.name for p in method.params}
        unknown = sorted(str(k) for k in dict(values or {}) if k not in known)
        if unknown:
            raise ExperimentError(f"steering method {method.name!r} has no parameter "
                                  f"{', '.join(repr(u) for u in unknown)}; its parameters: "
                                  f"{', '.join(sorted(known)) or 'none'}")


def search_examples(study: Study, config: ExperimentConfig, method: str, model: Any,
                    data: Any = None) -> tuple[list[dict[str, Any]], bool]:
    """The study's items (``config.limit`` of them) as a search's examples under ``method``'s condition,
    and whether they are chats."""
    tokenizer = model.tokenizer
    items = study.items(study.load_data(config) if data is None else data, config, tokenizer)
    if config.limit is not None:
        items = items[: config.limit]
    chat = config.chat if config.chat is not None else getattr(tokenizer, "chat_template", None) is not None
    condition = Condition(method)
    # prepared as the experiment runner prepares the method's condition (its focus is the kind of span it steers)
    return [{"prompt": prepare_item(study, item, condition, tokenizer, chat, config), "item": item}
            for item in items], chat


def study_search(study: Study, config: ExperimentConfig, method: str, *, model: Any, metric: str, grid: Any = None,
                 heldout: float = 0.5, max_repetition: float = 0.5, out: str | Path | None = None,
                 compare: Sequence[Any] = (), cache: MutableMapping[str, str] | None = None,
                 require_valid: bool = True, data: Any = None) -> Search:
    """The :class:`~attnlens.experiments.tune.Search` of ``method``'s strength on ``study``'s items."""
    from .. import steering

    steerer = steering.get(method)
    examples, chat = search_examples(study, config, steerer.name, model, data)

    def score(example: Any, output: str) -> float:
        return float(study.score([example["item"]], [output], config)[0].metrics[metric])

    settings = steerer.experiment_settings(config)
    strength = profile(steerer).strength
    if strength:
        settings.pop(strength, None)  # the search sets it
    path = out if out is not None else Path(config.out).expanduser() / f"tune-{steerer.name}.json"
    return Search(model, examples, steerer.name, score, grid=grid, settings=settings, heldout=heldout,
                  max_repetition=max_repetition, max_new_tokens=config.max_new_tokens, chat=chat,
                  seed=config.seed, confidence=getattr(config, "confidence", 0.95), out=path,
                  compare=compare, cache=cache, require_valid=require_valid,
                  identity={"study": study.name, "metric": metric})


def tune_study(
    study: Study | str,
    config: ExperimentConfig,
    method: str,
    *,
    model: Any = None,
    grid: Any = None,
    metric: str | None = None,
    heldout: float = 0.5,
    max_repetition: float = 0.5,
    out: str | Path | None = None,
    compare: Sequence[Any] = (),
    cache: MutableMapping[str, str] | None = None,
    require_valid: bool = True,
) -> Tuning:
    """Search ``method``'s strength on ``study``'s items (``config.limit`` of them) and score the held-out part.

    ``metric``: one of the study's metrics (default: its first); ``out``: the
    search's JSON file (default: ``{config.out}/tune-{method}.json``); ``compare``,
    ``cache`` and ``require_valid``: as :func:`~attnlens.experiments.tune.tune_strength`'s.
    """
    from .. import steering

    if isinstance(study, str):
        from . import get_study

        study = get_study(study)
    steerer = steering.get(method)
    check_method_settings(config)
    metric = text_metric(study, config, metric)
    data = study.load_data(config)  # a bad data file fails before the model loads
    if model is None:
        from ..runtime.models import load_model

        model = load_model(config.model) if config.model else load_model()
    search = study_search(study, config, steerer.name, model=model, metric=metric, grid=grid, heldout=heldout,
                          max_repetition=max_repetition, out=out, compare=compare, cache=cache,
                          require_valid=require_valid, data=data)
    if cache is None and search.path is not None:  # every strength's outputs as one stream, saved beside it
        outputs = SavedOutputs(search.path.parent, model, {}, name=f"{search.path.stem}.outputs.jsonl")
        search.cache = outputs.cache
        outputs.fill([search], config)
        search.develop()
        outputs.fill([search], config, chosen=True)
    else:
        search.develop()
    return search.finish()
