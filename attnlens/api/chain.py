"""The one steer -> plan -> run chain that the pipeline, PASTA, the CLI and the experiments share.

text -> :func:`prepare` (tags, tokens, spans; a :class:`~attnlens.prompts.prompt.Prompt`)
-> :func:`plans_for` (each steering method's plan or run-time edit, from :mod:`attnlens.steering.registry`)
-> :func:`generate` (batched :func:`~attnlens.runtime.generate.generate_batch`, steerings added up)
-> outputs, and :func:`measure_influence` for Influence and rollout under the same steering.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from tqdm.auto import tqdm

from ..core.model import Model
from ..attribution.influence import InfluenceTrace, trace_influence
from ..core.errors import AttnlensError, SpanError
from ..core.records import Record
from ..core.model import check_window, model_shape
from ..core.validate import LayerSpec, check_int, resolve_layers
from ..prompts.prompt import Prompt, PromptInput, SubstringLike, locate_substrings, tokenize_prompt
from ..prompts.tags import parse_tags
from ..runtime.generate import Generation, check_generation_kwargs, generate_batch
from .. import steering as registry
from ..steering.edits import install, rows_of
from ..steering.kinds import Steering, checked
from ..steering.edits import check_rows, select_rows as _select_rows
from ..steering.registry import check_tags_steered
from ..steering.guide import with_strength
from ..steering.pasta import HeadConfigLike, check_alpha, check_scale_position

logger = logging.getLogger(__name__)


def prepare(
    tokenizer: Any,
    item: PromptInput,
    *,
    delta_mid: float = 1.0,
    chat: bool | None = False,
    add_generation_prompt: bool = True,
    raw: bool = False,
    whitespace: str = "collapse",
) -> Prompt:
    """Parse the tags of a string or chat, tokenize it, and give its GUIDE spans the strength ``delta_mid``.

    A string is tokenized as written; ``chat=None`` applies the one rule for plain strings
    (:func:`attnlens.prompts.prompt.resolve_chat`), as the pipeline and ``steered_generation`` do.
    """
    prompt = tokenize_prompt(tokenizer, item, chat=chat, add_generation_prompt=add_generation_prompt, raw=raw,
                             whitespace=whitespace)
    return with_strength(prompt, delta_mid)


def clean_text(item: PromptInput, whitespace: str = "collapse") -> PromptInput:
    """The prompt with its tags removed (a string, or a chat with clean contents)."""
    if isinstance(item, str):
        return parse_tags(item, whitespace=whitespace).text
    return [{**m, "content": parse_tags(m["content"], whitespace=whitespace).text} for m in item]


def warn_unsteered(prompt: Prompt, where: str = "the prompt") -> None:
    """A WARNING when a steering call's prompt has no span to steer (no tags, no emphasised substring)."""
    if not prompt.spans:
        logger.warning("%s has no tags (<!-> ... <-!>) and no emphasised substrings: nothing is steered",
                       where, extra={"attnlens_unsteered": True})


def with_emphasis(
    tokenizer: Any,
    prompt: Prompt,
    item: PromptInput,
    substrings: SubstringLike | Sequence[SubstringLike],
    *,
    occurrence: int | None = 0,
    chat: bool | None = False,
) -> Prompt:
    """``prompt`` (from tagged ``item``) with the token spans of ``substrings`` of its clean text added."""
    if chat is None:
        chat = prompt.format == "chat"
    located = locate_substrings(tokenizer, clean_text(item), substrings, occurrence=occurrence, chat=chat)
    if located.input_ids != prompt.input_ids:  # pragma: no cover - both tokenize the same clean prompt
        raise SpanError("the prompt tokenizes differently with and without its tags")
    return replace(prompt, spans=prompt.spans + located.spans, substrings=located.substrings)


@dataclass(frozen=True)
class PastaSettings:
    """PASTA's part of a steering: the heads and how strongly (spans come from the prompt's emphasis)."""

    head_config: HeadConfigLike
    alpha: float = 0.01
    scale_position: str = "exclude"

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale_position", check_scale_position(self.scale_position))
        object.__setattr__(self, "alpha", check_alpha(self.alpha, self.scale_position))


#: what a steering argument may be: ``{method name: settings}``, a list of names or ``(name, settings)`` pairs
SteerLike = Any


def default_steer(layers: LayerSpec = "all", delta_mid: float | None = None,
                  pasta: PastaSettings | None = None, steer: SteerLike = None) -> dict[Any, dict[str, Any]]:
    """The methods a call applies: ``steer`` as given, else every method on by default (GUIDE: the tags).

    ``layers`` and ``delta_mid`` go to the methods that take them; ``pasta`` is the
    older way of asking for PASTA (``steer={"pasta": {...}}``).
    """
    if steer is None:
        chosen: dict[Any, dict[str, Any]] = {m: {} for m in registry.methods() if registry.get(m).on_by_default}
    elif isinstance(steer, Mapping):
        chosen = {k: dict(v or {}) for k, v in steer.items()}
    else:
        chosen = {}
        for entry in ([steer] if isinstance(steer, (str, registry.SteeringMethod)) else steer):
            name, values = (entry, {}) if isinstance(entry, (str, registry.SteeringMethod)) else tuple(entry)
            chosen[name] = dict(values or {})
    if pasta is not None:
        chosen["pasta"] = {"head_config": pasta.head_config, "alpha": pasta.alpha,
                           "scale_position": pasta.scale_position}
    shared = {"layers": layers, "delta_mid": delta_mid}
    for name, values in chosen.items():
        method = registry.get(name)
        for key, value in shared.items():
            if key not in values and any(p.name == key for p in method.params):
                values[key] = value
    return chosen


def plans_for(
    model: Model,
    prompts: Sequence[Prompt],
    *,
    layers: LayerSpec = "all",
    delta_mid: float | None = None,
    pasta: PastaSettings | None = None,
    steer: SteerLike = None,
) -> list[Steering]:
    """The steerings of ``prompts`` (one row each): one per method that has work (:mod:`attnlens.steering.kinds`).

    ``steer``: ``{method: settings}`` (names from :func:`attnlens.steering.methods`); without it
    GUIDE steers the prompts' tags. ``pasta`` adds PASTA on the prompts' emphasis spans.
    """
    out = []
    chosen = registry.resolve(default_steer(layers, delta_mid, pasta, steer))
    if steer is None:  # the tags ask for the registered "guide"
        check_tags_steered(list(prompts), [m for m, _ in chosen])
    for method, settings in chosen:
        made = checked(method.steering(model, list(prompts), settings), method.name)
        if made is not None:
            out.append(made)
    return out


def select_rows(plan: Steering, start: int, count: int) -> Steering:
    """The part of ``plan`` (a steering of any kind) for rows ``[start, start + count)``, renumbered from 0."""
    return _select_rows(plan, start, count)


def generate(
    model: Model,
    prompts: Sequence[Prompt] | Sequence[Sequence[int]],
    plans: Sequence[Any] = (),
    *,
    batch_size: int = 8,
    desc: str = "generating",
    progress: bool = True,
    **generate_kwargs: Any,
) -> Generation:
    """New tokens for every prompt, ``batch_size`` at a time, with ``plans`` (one row per prompt) added up.

    ``generate_kwargs`` are :func:`~attnlens.runtime.generate.generate_batch`'s
    (``max_new_tokens``, ``backend``, ...). The result's ``backend`` names the
    runtime of the last batch.
    """
    check_int(batch_size, "batch_size", minimum=1)
    rows = [list(p.input_ids) if isinstance(p, Prompt) else list(p) for p in prompts]
    if not rows:
        raise AttnlensError("no prompts given")
    generate_kwargs.setdefault("max_new_tokens", 64)
    backend_kwargs = {k: generate_kwargs.pop(k) for k in ("backend", "direct", "on_step") if k in generate_kwargs}
    check_generation_kwargs(generate_kwargs)
    # every prompt is checked against the window before the first batch runs
    longest = max(range(len(rows)), key=lambda i: len(rows[i]))
    check_window(model, len(rows[longest]), new_tokens=generate_kwargs["max_new_tokens"],
                 what=f"prompt {longest}" if len(rows) > 1 else "the prompt")
    for i, plan in enumerate(plans):  # a part for a row past the prompts would be dropped by select_rows
        check_rows(plan, len(rows), what=f"steering {i}")
    out = Generation(backend="bridge")
    starts = range(0, len(rows), batch_size)
    for start in tqdm(starts, desc=desc, unit="batch", disable=not progress or len(starts) < 2):
        chunk = rows[start : start + batch_size]
        chunk_plans = [select_rows(p, start, len(chunk)) if rows_of(p) is not None else p for p in plans]
        new = generate_batch(model, chunk, chunk_plans, **backend_kwargs, **generate_kwargs)
        out.extend(new)
        out.backend = new.backend
    return out


def measure_influence(
    model: Model,
    prompt: Prompt,
    *,
    methods: Sequence[str] = ("influence",),
    generated: Sequence[int] = (),
    layers: LayerSpec = "all",
    delta_mid: float | None = None,
    use_values: bool = False,
    convention: str = "stated",
    steer: SteerLike = None,
) -> InfluenceTrace:
    """Follow a prompt's ``<?->`` spans in one forward pass, under its steering (GUIDE's tags, or ``steer``).

    ``generated`` tokens are appended to the prompt, so the result covers them too.
    ``convention``: ``"stated"`` or ``"pap"`` (see :mod:`attnlens.attribution.influence`).
    """
    spans = prompt.influence_spans()
    if not spans:
        raise AttnlensError("the prompt has no influence tag: wrap the text to measure in <?-> ... <-?>")
    tokens = list(prompt.input_ids) + [int(t) for t in generated]
    with ExitStack() as stack:
        for plan in plans_for(model, [prompt], layers=layers, delta_mid=delta_mid, steer=steer):
            stack.enter_context(install(model, plan))
        return trace_influence(model, tokens, [(s.start, s.end) for s in spans], methods=methods,
                               use_values=use_values, convention=convention)


def steered_generation(
    model: Model,
    item: PromptInput,
    *,
    delta_mid: float = 1.0,
    layers: LayerSpec = "all",
    emphasize: Sequence[SubstringLike] = (),
    pasta: PastaSettings | None = None,
    steer: SteerLike = None,
    chat: bool | None = None,
    raw: bool = False,
    **generate_kwargs: Any,
) -> Record:
    """One prompt steered by its GUIDE tags and, with ``pasta`` (or ``steer``), methods on the ``emphasize`` substrings.

    A plain string follows the one rule (:func:`attnlens.prompts.prompt.resolve_chat`: the chat
    template when the tokenizer has one; ``raw=True`` sends it as written); ``prompt_format`` in
    the result says which was used. A prompt with nothing to steer logs a warning.

    ``steer``: ``{method: settings}`` of registered steering methods (GUIDE's tags steer
    unless ``steer`` is given without ``"guide"``). Returns ``prompt``, ``spans`` (GUIDE
    and influence), ``steered`` (the new text), ``backend``, ``methods`` (the methods
    that steered something), with emphasised substrings ``emphasis_spans``, and what each method adds
    (PASTA: ``pasta_spans`` and ``pasta_heads``), as a :class:`~attnlens.core.records.Record` (a ``dict`` with
    ``show()``: the prompt with its spans marked and the new text; ``to_json()``).
    """
    chosen = registry.resolve(default_steer(layers, None, pasta, steer))
    wants_emphasis = [m.name for m, _ in chosen if m.spans == "emphasis"]
    if bool(wants_emphasis) != bool(emphasize):
        if emphasize:
            raise AttnlensError("emphasised substrings need a method that steers them (PASTA: a head config)")
        raise AttnlensError(f"{' and '.join(wants_emphasis)} need(s) at least one substring to emphasise")
    tokenizer = model.tokenizer
    resolve_layers(layers, model_shape(model)[0])  # a bad layer fails with or without GUIDE tags
    prompt = prepare(tokenizer, item, delta_mid=delta_mid, chat=chat, raw=raw)
    if emphasize:
        prompt = with_emphasis(tokenizer, prompt, item, list(emphasize), chat=prompt.format == "chat")
    warn_unsteered(prompt)
    if steer is None:  # the tags ask for the registered "guide"
        check_tags_steered([prompt], [m for m, _ in chosen])
    plans, applied = [], []
    for method, settings in chosen:
        made = checked(method.steering(model, [prompt], settings), method.name)
        if made is not None:
            plans.append(made)
            applied.append(method.name)
    tokens = generate(model, [prompt], plans, **generate_kwargs)
    result = Record({
        "prompt": prompt.text,
        "spans": [span.as_dict() for span in prompt.spans if span.kind != "emphasis"],
        "steered": tokenizer.decode(tokens[0], skip_special_tokens=True),
        "backend": tokens.backend,
        "methods": applied,
        "prompt_format": prompt.format,
    })
    if prompt.system_tokens:  # the chat template's own system prompt, which views leave out unless asked
        result["system_text"] = tokenizer.decode(prompt.input_ids[: prompt.system_tokens])
    if emphasize:
        result["emphasis_spans"] = [{"start": s.start, "end": s.end, "text": sub}
                                    for s, sub in zip(prompt.emphasis_spans(), prompt.substrings)]
    for method, settings in chosen:
        result.update(method.describe(model, [prompt], settings))
    return result


def influence_report(
    model: Model,
    item: PromptInput,
    *,
    methods: Sequence[str] = ("influence",),
    delta_mid: float = 1.0,
    layers: LayerSpec = "all",
    max_new_tokens: int = 0,
    use_values: bool = False,
    convention: str = "stated",
) -> Record:
    """Influence (and/or rollout) of a prompt's ``<?->`` spans, optionally over ``max_new_tokens`` generated ones.

    Returns ``prompt``, ``tokens``, ``prompt_length``, ``generated_text``, ``methods``,
    ``convention`` and ``spans`` (``start``, ``end``, ``text`` and one ``[n_layers + 1, seq]`` tensor per method),
    as a :class:`~attnlens.core.records.Record`: ``report.show()`` draws every span
    (:func:`attnlens.viz.influence_view`, which takes the report too), ``report.to_json()``.
    """
    tokenizer = model.tokenizer
    resolve_layers(layers, model_shape(model)[0])
    prompt = prepare(tokenizer, item, delta_mid=delta_mid)
    if not prompt.influence_spans():
        raise AttnlensError("the prompt has no influence tag: wrap the text to follow in <?-> ... <-?>")
    generated: list[int] = []
    if max_new_tokens:
        generated = generate(model, [prompt], plans_for(model, [prompt], layers=layers),
                             max_new_tokens=max_new_tokens)[0]
    trace = measure_influence(model, prompt, methods=methods, generated=generated, layers=layers,
                              use_values=use_values, convention=convention)
    spans = []
    for i, span in enumerate(prompt.influence_spans()):
        entry: dict[str, Any] = {"start": span.start, "end": span.end, "text": span.text}
        for m in methods:
            entry[m] = trace[m][i]
        spans.append(entry)
    return Record({
        "prompt": prompt.text,
        "tokens": [tokenizer.decode([t]) for t in trace.tokens],
        "prompt_length": len(prompt.input_ids),
        "generated_text": tokenizer.decode(generated, skip_special_tokens=True),
        "methods": list(methods),
        "convention": convention,
        "spans": spans,
        **({"system_tokens": prompt.system_tokens} if prompt.system_tokens else {}),
    })
