"""The one steer -> plan -> run chain that the pipeline, PASTA, the CLI and the experiments share.

text -> :func:`prepare` (tags, tokens, spans; a :class:`~attnlens.prompts.prompt.Prompt`)
-> :func:`plans_for` (GUIDE's and PASTA's :class:`~attnlens.steering.bias.BiasPlan`)
-> :func:`generate` (batched :func:`~attnlens.runtime.generate.generate_batch`, plans added up)
-> outputs, and :func:`measure_influence` for Influence and rollout under the same steering.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from tqdm.auto import tqdm

from ..core.model import Model
from ..attribution.influence import InfluenceTrace, trace_influence
from ..core.errors import AttnlensError, SpanError
from ..core.model import check_window, model_shape
from ..core.validate import LayerSpec, check_int, resolve_layers
from ..prompts.prompt import Prompt, PromptInput, SubstringLike, locate_substrings, tokenize_prompt
from ..prompts.tags import parse_tags
from ..runtime.generate import Generation, check_generation_kwargs, generate_batch
from ..steering.bias import BiasPlan, apply_bias
from ..steering.guide import guide_plan_for, with_strength
from ..steering.pasta import (
    HeadConfigLike,
    check_alpha,
    check_scale_position,
    head_config_to_json,
    normalize_head_config,
    pasta_plan,
)

logger = logging.getLogger(__name__)


def prepare(
    tokenizer: Any,
    item: PromptInput,
    *,
    delta_mid: float = 1.0,
    chat: bool = False,
    add_generation_prompt: bool = True,
) -> Prompt:
    """Parse the tags of a string or chat, tokenize it, and give its GUIDE spans the strength ``delta_mid``."""
    prompt = tokenize_prompt(tokenizer, item, chat=chat, add_generation_prompt=add_generation_prompt)
    return with_strength(prompt, delta_mid)


def clean_text(item: PromptInput) -> PromptInput:
    """The prompt with its tags removed (a string, or a chat with clean contents)."""
    if isinstance(item, str):
        return parse_tags(item).text
    return [{**m, "content": parse_tags(m["content"]).text} for m in item]


def with_emphasis(
    tokenizer: Any,
    prompt: Prompt,
    item: PromptInput,
    substrings: SubstringLike | Sequence[SubstringLike],
    *,
    occurrence: int | None = 0,
    chat: bool = False,
) -> Prompt:
    """``prompt`` (from tagged ``item``) with the token spans of ``substrings`` of its clean text added."""
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


def plans_for(
    model: Model,
    prompts: Sequence[Prompt],
    *,
    layers: LayerSpec = "all",
    delta_mid: float | None = None,
    pasta: PastaSettings | None = None,
) -> list[BiasPlan]:
    """The plans that steer ``prompts`` (one row each): GUIDE's from their tags, PASTA's from their emphasis."""
    plans = []
    if any(p.guide_spans() for p in prompts):
        plans.append(guide_plan_for(model, list(prompts), layers, delta_mid=delta_mid))
    if pasta is not None:
        spans = [[(s.start, s.end) for s in p.emphasis_spans()] for p in prompts]
        plans.append(pasta_plan(model, spans, pasta.head_config, pasta.alpha, pasta.scale_position,
                                seq_len=[len(p) for p in prompts]))
    return plans


def select_rows(plan: BiasPlan, start: int, count: int) -> BiasPlan:
    """The part of ``plan`` for rows ``[start, start + count)``, renumbered from 0."""
    out = BiasPlan(plan.n_layers, plan.n_heads)
    for t in plan.terms:
        if t.row is None:
            out.terms.append(t)
        elif start <= t.row < start + count:
            out.terms.append(replace(t, row=t.row - start))
    if any(t.row is not None for t in out.terms):
        out.n_rows = count
    return out


def generate(
    model: Model,
    prompts: Sequence[Prompt] | Sequence[Sequence[int]],
    plans: Sequence[BiasPlan] = (),
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
    backend_kwargs = {k: generate_kwargs.pop(k) for k in ("backend", "direct") if k in generate_kwargs}
    check_generation_kwargs(generate_kwargs)
    # every prompt is checked against the window before the first batch runs
    longest = max(range(len(rows)), key=lambda i: len(rows[i]))
    check_window(model, len(rows[longest]), new_tokens=generate_kwargs["max_new_tokens"],
                 what=f"prompt {longest}" if len(rows) > 1 else "the prompt")
    out = Generation(backend="bridge")
    starts = range(0, len(rows), batch_size)
    for start in tqdm(starts, desc=desc, unit="batch", disable=not progress or len(starts) < 2):
        chunk = rows[start : start + batch_size]
        chunk_plans = [select_rows(p, start, len(chunk)) if p.rows is not None else p for p in plans]
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
) -> InfluenceTrace:
    """Follow a prompt's ``<?->`` spans in one forward pass, under its GUIDE steering.

    ``generated`` tokens are appended to the prompt, so the result covers them too.
    ``convention``: ``"stated"`` or ``"pap"`` (see :mod:`attnlens.attribution.influence`).
    """
    spans = prompt.influence_spans()
    if not spans:
        raise AttnlensError("the prompt has no influence tag: wrap the text to measure in <?-> ... <-?>")
    tokens = list(prompt.input_ids) + [int(t) for t in generated]
    plan = guide_plan_for(model, prompt, layers, delta_mid=delta_mid)
    with apply_bias(model, plan):
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
    **generate_kwargs: Any,
) -> dict[str, Any]:
    """One prompt steered by its GUIDE tags and, with ``pasta``, PASTA on the ``emphasize`` substrings.

    Returns ``prompt``, ``spans`` (GUIDE and influence), ``steered`` (the new text),
    ``backend``, and with PASTA ``pasta_spans`` and ``pasta_heads``.
    """
    if (pasta is None) != (not emphasize):
        raise AttnlensError("PASTA needs both a head config and at least one substring to emphasise")
    tokenizer = model.tokenizer
    resolve_layers(layers, model_shape(model)[0])  # a bad layer fails with or without GUIDE tags
    prompt = prepare(tokenizer, item, delta_mid=delta_mid)
    if pasta is not None:
        prompt = with_emphasis(tokenizer, prompt, item, list(emphasize))
    tokens = generate(model, [prompt], plans_for(model, [prompt], layers=layers, pasta=pasta), **generate_kwargs)
    result: dict[str, Any] = {
        "prompt": prompt.text,
        "spans": [span.as_dict() for span in prompt.spans if span.kind != "emphasis"],
        "steered": tokenizer.decode(tokens[0], skip_special_tokens=True),
        "backend": tokens.backend,
    }
    if pasta is not None:
        result["pasta_spans"] = [
            {"start": s.start, "end": s.end, "text": sub}
            for s, sub in zip(prompt.emphasis_spans(), prompt.substrings)
        ]
        result["pasta_heads"] = head_config_to_json(normalize_head_config(pasta.head_config, *model_shape(model)))
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
) -> dict[str, Any]:
    """Influence (and/or rollout) of a prompt's ``<?->`` spans, optionally over ``max_new_tokens`` generated ones.

    Returns ``prompt``, ``tokens``, ``prompt_length``, ``generated_text``, ``methods``,
    ``convention`` and ``spans`` (``start``, ``end``, ``text`` and one ``[n_layers + 1, seq]`` tensor per method).
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
    return {
        "prompt": prompt.text,
        "tokens": [tokenizer.decode([t]) for t in trace.tokens],
        "prompt_length": len(prompt.input_ids),
        "generated_text": tokenizer.decode(generated, skip_special_tokens=True),
        "methods": list(methods),
        "convention": convention,
        "spans": spans,
    }
