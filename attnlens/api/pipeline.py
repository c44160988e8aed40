"""The tag-driven pipeline: what a user calls first.

``pipeline("pay-attention", model=...)`` mirrors ``transformers.pipeline`` for
text generation: call it with a string, a chat (a list of ``{"role", "content"}``
dicts) or a list of either. Text wrapped in GUIDE tags is emphasised while the
model generates::

    pipe = attnlens.pipeline("pay-attention", delta_mid=1.0)
    pipe("<!-> Answer in French. <-!> What is the capital of Italy?", max_new_tokens=30)
    # [{"generated_text": "...", "spans": [...], "prompt": "...", "backend": "direct"}]

A plain string follows the one rule (:func:`attnlens.prompts.prompt.resolve_chat`):
it goes to the model as a user message through its chat template when the
tokenizer has one (an instruct model), and as written otherwise; ``raw=True``
sends it as written (``--raw`` on the command line). Each record's
``prompt_format`` (``"chat"`` or ``"raw"``) says which was used. Whitespace just
inside tags is markup (:mod:`attnlens.prompts.tags`), so
``"<!-> Rewrite in French: <-!> Paris"`` reads ``"Rewrite in French: Paris"``.
A prompt with no tags steers nothing and logs a warning. A single input
returns a list with one dict; a list of inputs returns one such list per input.

transformers' text-generation keywords work as they do there:
``num_return_sequences`` (with ``do_sample=True``: that many records per input),
``return_tensors=True`` (``generated_token_ids``, the prompt's and the new token ids,
in place of ``generated_text``)
and ``streamer`` (a ``transformers`` streamer, e.g. ``TextStreamer``, fed the
prompt and then each new token; one input at a time).

Text wrapped in influence tags (``<?-> … <-?>``) is measured instead: each
result gets an ``"influence"`` list, one dict per tagged span with its token
range (``start``, ``end``), ``text``, the measuring ``method`` and ``tensor``,
the ``[n_layers + 1, seq]`` Influence (see :mod:`attnlens.attribution`) over
the prompt's tokens, or over prompt and generated tokens with
``influence_generated=True`` (one forward pass over both). GUIDE tags in the
same prompt steer that forward pass too::

    out = pipe("<?-> Rewrite in French <-?> Paris is the most visited city.", max_new_tokens=40)
    out[0]["influence"][0]["tensor"]   # [n_layers + 1, seq]

Every record is a :class:`~attnlens.core.records.Record`: a ``dict`` with
``to_dict()`` (tensors as nested lists) and ``to_json()``; ``as_json=True`` in
the call returns those plain dicts directly, so ``json.dumps(pipe(..., as_json=True))``
works.

pay-attention-pipeline's keywords are accepted too: ``metric="influence" |
"attention_rollout" | "influence_heads"`` (for ``influence_method``) and
``convention="pap"`` for its Influence numbers (see :mod:`attnlens.attribution.influence`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from ..core.model import Model
from .. import attribution
from ..attribution.influence import InfluenceTrace, check_convention
from ..core.errors import AttnlensError
from ..core.records import Record
from ..core.validate import LayerSpec, check_int, is_int, resolve_layers
from ..prompts.prompt import Prompt, PromptInput, is_chat, resolve_chat
from ..prompts.tags import check_whitespace
from ..runtime.generate import check_generation_kwargs
from .. import steering
from ..steering.guide import check_delta
from .autofocus import check_focus, focus_input
from . import chain
from .pipeline_args import _check_influence_request, _check_return_sequences, _short, _streamer_step

logger = logging.getLogger(__name__)

PipelineInput = PromptInput

TASKS = ("pay-attention", "guide")

def metrics() -> dict[str, str]:
    """pay-attention-pipeline's ``metric`` names (and every attribution method's own) -> attnlens' methods."""
    return attribution.aliases()


def __getattr__(name: str) -> Any:  # METRICS and INFLUENCE_METHODS follow the registry (PEP 562)
    if name == "METRICS":
        return metrics()
    if name == "INFLUENCE_METHODS":
        return attribution.span_methods()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def metric_method(metric: Any) -> str:
    """pay-attention-pipeline's ``metric`` as an attnlens influence method."""
    known = metrics()
    if not isinstance(metric, str) or metric not in known:
        raise AttnlensError(f"unknown metric {metric!r}; choose from {', '.join(known)}")
    return known[metric]



def _call_inputs(inputs: Any) -> tuple[bool, list[Any]]:
    """Whether the call has one input, and the inputs as a list, each a string or a chat."""
    single = isinstance(inputs, str) or is_chat(inputs)
    if not single and (isinstance(inputs, (Mapping, bytes)) or not isinstance(inputs, Sequence)):
        raise AttnlensError(
            "the pipeline takes a string, a chat (a list of {'role', 'content'} messages) or a list of those; "
            f"got {type(inputs).__name__} {_short(inputs)}"
            + (" (wrap one message in a list: [message])" if isinstance(inputs, Mapping) else "")
        )
    items = [inputs] if single else list(inputs)
    if not items:
        raise AttnlensError("no inputs given")
    for i, item in enumerate(items):
        if not (isinstance(item, str) or is_chat(item)):
            raise AttnlensError(
                f"input {i} must be a string or a chat (a list of {{'role', 'content'}} messages); "
                f"got {type(item).__name__} {_short(item)}"
            )
    return single, items

class PayAttentionPipeline:
    """Tag-driven generation with GUIDE steering; see the module docstring."""

    task = "pay-attention"

    def __init__(
        self,
        model: Model,
        *,
        delta_mid: float = 1.0,
        layers: LayerSpec = "all",
        batch_size: int = 8,
        chat: bool | None = None,
        return_full_text: bool = False,
        convention: str = "stated",
        steer: Any = None,
        raw: bool = False,
        tag_whitespace: str = "collapse",
    ) -> None:
        if getattr(model, "tokenizer", None) is None:
            raise AttnlensError("the model has no tokenizer; the pipeline needs one")
        self.model = model
        self.tokenizer = model.tokenizer
        self.delta_mid = check_delta(delta_mid)
        resolve_layers(layers, model.cfg.n_layers)  # validate early
        self.layers = layers
        if not is_int(batch_size) or batch_size < 1:
            raise AttnlensError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.batch_size = batch_size
        resolve_chat(self.tokenizer, chat, raw)  # validate early
        self.chat = chat
        self.raw = raw
        #: how whitespace just inside tags is read: "collapse" (markup) or "keep" (pay-attention-pipeline's reading)
        self.tag_whitespace = check_whitespace(tag_whitespace)
        self.return_full_text = bool(return_full_text)
        self.convention = check_convention(convention)
        self.influence_method = "influence"  # the method a call without influence_method/metric uses
        #: the steering methods every call applies (``{name: settings}``; None: GUIDE on the tags)
        self.steer = steer
        if steer is not None:
            steering.resolve(chain.default_steer(layers, None, None, steer))  # validate early

    def prepare(self, item: PipelineInput, *, delta_mid: float | None = None, chat: bool | None = None,
                raw: bool | None = None) -> Prompt:
        """The prompt the model sees for ``item``, under this pipeline's rule for plain strings."""
        if raw is None and chat is None:
            chat, raw = self.chat, self.raw
        return chain.prepare(
            self.tokenizer,
            item,
            delta_mid=self.delta_mid if delta_mid is None else delta_mid,
            chat=resolve_chat(self.tokenizer, chat, bool(raw)),
            whitespace=self.tag_whitespace,
        )

    def __call__(
        self,
        inputs: PipelineInput | Sequence[PipelineInput],
        *,
        delta_mid: float | None = None,
        layers: LayerSpec | None = None,
        chat: bool | None = None,
        batch_size: int | None = None,
        return_full_text: bool | None = None,
        influence: bool | None = None,
        influence_method: str | None = None,
        influence_generated: bool = False,
        influence_use_values: bool = False,
        metric: str | None = None,
        convention: str | None = None,
        as_json: bool = False,
        steer: Any = None,
        focus: str | None = None,
        raw: bool | None = None,
        num_return_sequences: int = 1,
        return_tensors: bool | None = None,
        return_text: bool | None = None,
        streamer: Any = None,
        **generate_kwargs: Any,
    ) -> list[dict[str, Any]] | list[list[dict[str, Any]]]:
        """Generate for one input or a list of inputs; see the module docstring.

        ``return_full_text``: ``generated_text`` holds the prompt and the new text
        (default: this pipeline's setting; ``attnlens.pipeline`` leaves the prompt
        out, ``transformers.pipeline("pay-attention")`` keeps it, as transformers does).

        Influence options: ``influence`` (None: measure the prompts that have
        ``<?->`` tags; True: every prompt must have one; False: never),
        ``influence_method`` (``"influence"``, ``"rollout"`` or ``"influence_heads"``;
        ``metric`` is pay-attention-pipeline's name for it, with ``"attention_rollout"``),
        ``convention`` (``"stated"`` or ``"pap"``), ``influence_generated`` (also cover
        the generated tokens) and ``influence_use_values`` (weight keys by their value norms).

        ``steer``: ``{method: settings}`` of registered steering methods
        (:func:`attnlens.steering.methods`) for this call; default: the pipeline's
        (GUIDE on the prompts' tags).

        ``focus="auto"``: the model first names the sentences of each input that
        matter, which are then tagged (:func:`attnlens.api.autofocus.auto_focus`).

        ``chat`` / ``raw``: the rule for plain strings for this call (default: the pipeline's).

        ``num_return_sequences``, ``return_tensors`` and ``streamer``: as in transformers'
        text-generation pipeline (see the module docstring); ``return_text=True`` is accepted as there.

        ``as_json=True`` returns plain dicts (tensors as lists) that ``json.dumps`` accepts.
        """
        method, explicit, conv = self._influence_options(metric, influence_method, convention)
        full_text = self._full_text(return_full_text, return_text, return_tensors)
        single, items = _call_inputs(inputs)
        generate_kwargs.setdefault("max_new_tokens", 64)
        n_return = _check_return_sequences(num_return_sequences, generate_kwargs)
        check_generation_kwargs(generate_kwargs)
        if streamer is not None and len(items) != 1:
            raise AttnlensError(f"streamer takes one input at a time (transformers' rule); got {len(items)} inputs")
        layer_spec = self.layers if layers is None else layers
        prompts = self._call_prompts(items, single, focus=focus, delta_mid=delta_mid, layers=layer_spec, chat=chat,
                                     raw=raw, warn=steer is None and self.steer is None)
        measure = _check_influence_request(
            prompts, influence, method,
            influence_generated or influence_use_values or explicit or convention is not None,
        )
        size = self.batch_size if batch_size is None else check_int(batch_size, "batch_size", minimum=1)
        prompts, new_tokens = self._call_generate(prompts, layer_spec, self.steer if steer is None else steer,
                                                  n_return, size, streamer, generate_kwargs)
        results: list[list[dict[str, Any]]] = []
        for row, (prompt, tokens) in enumerate(zip(prompts, new_tokens)):
            result = self._result(prompt, tokens, full_text, return_tensors=bool(return_tensors))
            result["backend"] = new_tokens.backend
            if measure and prompt.influence_spans():
                trace = self.measure_influence(prompt, methods=(method,),
                                               generated=tokens if influence_generated else (), layers=layer_spec,
                                               use_values=influence_use_values, convention=conv)
                result["influence"] = self.influence_entries(prompt, trace, method)
            record = result.to_dict() if as_json else result
            if row % n_return == 0:
                results.append([record])
            else:
                results[-1].append(record)
        return results[0] if single else results

    def _influence_options(self, metric: str | None, influence_method: str | None,
                           convention: str | None) -> tuple[str, bool, str]:
        """The call's influence method (``metric`` is its pay-attention-pipeline name), whether it was asked for
        explicitly, and the convention."""
        if metric is not None:
            if influence_method is not None and metric_method(metric) != influence_method:
                raise AttnlensError(f"metric={metric!r} and influence_method={influence_method!r} disagree; give one")
            influence_method = metric_method(metric)
        explicit = influence_method is not None and influence_method != "influence"
        method = self.influence_method if influence_method is None else influence_method
        conv = self.convention if convention is None else check_convention(convention)
        return method, explicit, conv

    def _full_text(self, return_full_text: bool | None, return_text: bool | None,
                   return_tensors: bool | None) -> bool:
        """Whether ``generated_text`` holds the prompt too, with transformers' rules on the output options."""
        if return_tensors and (return_full_text is not None or return_text is not None):
            raise AttnlensError("return_tensors=True gives the token ids of prompt and new text; it cannot be "
                                "combined with return_full_text or return_text (transformers' rule)")
        if return_text is not None and return_full_text is not None:
            raise AttnlensError("return_text and return_full_text exclude each other (transformers' rule); give one")
        return self.return_full_text if return_full_text is None else bool(return_full_text)

    def _call_prompts(self, items: list[Any], single: bool, *, focus: str | None, delta_mid: float | None,
                      layers: LayerSpec | None, chat: bool | None, raw: bool | None, warn: bool) -> list[Prompt]:
        """The inputs as prompts (tagged first by the model with ``focus="auto"``); with ``warn``, a WARNING for
        each prompt that nothing steers."""
        if check_focus(focus) == "auto":
            items = [focus_input(self.model, item) for item in items]
        delta = self.delta_mid if delta_mid is None else check_delta(delta_mid)
        resolve_layers(layers, self.model.cfg.n_layers)
        prompts = [self.prepare(item, delta_mid=delta, chat=chat, raw=raw) for item in items]
        if warn:
            for i, prompt in enumerate(prompts):
                chain.warn_unsteered(prompt, "the prompt" if single else f"input {i}")
        return prompts

    def _call_generate(self, prompts: list[Prompt], layers: LayerSpec | None, steer: Any, n_return: int,
                       size: int, streamer: Any, generate_kwargs: dict[str, Any]) -> tuple[list[Prompt], Any]:
        """The rows generated (each prompt ``n_return`` times) and their new tokens, streamed when asked."""
        plans = chain.plans_for(self.model, prompts, layers=layers, steer=steer)
        if n_return > 1:  # each input repeated: its rows sample independently
            prompts = [p for p in prompts for _ in range(n_return)]
            plans = chain.plans_for(self.model, prompts, layers=layers, steer=steer)
        if streamer is None:
            return prompts, chain.generate(self.model, prompts, plans, batch_size=size, **generate_kwargs)
        if len(prompts) != 1:
            raise AttnlensError("streamer takes one sequence at a time: use num_return_sequences=1")
        step = _streamer_step(streamer, prompts[0])
        try:
            return prompts, chain.generate(self.model, prompts, plans, batch_size=size, on_step=step,
                                           **generate_kwargs)
        finally:
            streamer.end()

    # ------------------------------------------------------------------ influence

    def measure_influence(
        self,
        prompt: Prompt,
        *,
        methods: Sequence[str] = ("influence",),
        generated: Sequence[int] = (),
        layers: LayerSpec | None = None,
        use_values: bool = False,
        convention: str | None = None,
    ) -> InfluenceTrace:
        """Measure a prepared prompt's ``<?->`` spans in one forward pass, under its GUIDE steering.

        ``generated`` tokens are appended to the prompt, so the result covers them too.
        """
        return chain.measure_influence(self.model, prompt, methods=methods, generated=generated,
                                       layers=self.layers if layers is None else layers, use_values=use_values,
                                       convention=self.convention if convention is None else convention)

    def influence_entries(self, prompt: Prompt, trace: InfluenceTrace, method: str) -> list[dict[str, Any]]:
        """One dict per influence span: ``start``, ``end``, ``text``, ``message``, ``method``,
        ``tensor`` (``[n_layers + 1, seq]``), ``tokens`` and ``token_ids`` (the measured
        sequence) and ``prompt_length`` (where generated tokens begin)."""
        values = trace[method]
        tokens = [self.tokenizer.decode([t]) for t in trace.tokens]
        return [
            Record(  # a dict that shows itself (influence_view) and converts to JSON
                **{
                "start": span.start,
                "end": span.end,
                "text": span.text,
                "message": span.message,
                "method": method,
                "convention": trace.convention,
                "tensor": values[i],
                "tokens": tokens,
                "token_ids": list(trace.tokens),
                "prompt_length": len(prompt.input_ids),
                # the chat template's own system prompt, which views leave out unless asked
                **({"system_tokens": prompt.system_tokens} if prompt.system_tokens else {}),
                }
            )
            for i, span in enumerate(prompt.influence_spans())
        ]

    def _result(self, prompt: Prompt, tokens: list[int], return_full_text: bool, *,
                return_tensors: bool = False) -> Record:
        record = Record()
        if return_tensors:  # transformers: the whole sequence's token ids in place of the text
            record["generated_token_ids"] = list(prompt.input_ids) + list(tokens)
        else:
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            record["generated_text"] = prompt.text + text if return_full_text else text
        record.update(spans=[s.as_dict() for s in prompt.spans], prompt=prompt.text, prompt_format=prompt.format)
        if prompt.system_tokens:  # the chat template's own system prompt, which views leave out unless asked
            record["system_text"] = self.tokenizer.decode(prompt.input_ids[: prompt.system_tokens])
        return record


def pipeline(
    task: str = "pay-attention",
    model: Model = None,
    *,
    delta_mid: float = 1.0,
    layers: LayerSpec = "all",
    batch_size: int = 8,
    chat: bool | None = None,
    device: Any = None,
    return_full_text: bool = False,
    convention: str = "stated",
    steer: Any = None,
    raw: bool = False,
    tag_whitespace: str = "collapse",
) -> PayAttentionPipeline:
    """Build the tag-driven pipeline, like ``transformers.pipeline(task, model=...)``.

    Args:
        task: ``"pay-attention"`` (alias ``"guide"``).
        model: ``None`` for the embedded model, a model name or path, or a loaded
            ``TransformerBridge``.
        delta_mid: the level-2 bias; levels 1 and 3 use half and double.
        layers: the layers GUIDE steers (``"all"``, ``"none"``, ``"first"``, ``"last"``, indices).
        batch_size: prompts generated together (left padding, per-row spans).
        chat: ``None`` (the default) applies the one rule for plain strings: the chat
            template when the tokenizer has one; ``True`` asks for the template.
        raw: send plain strings as written (the same as ``--raw`` on the command line).
        tag_whitespace: ``"collapse"`` (whitespace just inside tags is markup) or ``"keep"``
            (pay-attention-pipeline's reading: only the tags are removed).
        return_full_text: put the prompt before the new text in ``generated_text``
            (``transformers.pipeline("pay-attention", ...)`` does by default).
        convention: the Influence convention, ``"stated"`` or ``"pap"``.
        steer: the steering methods to apply, ``{name: settings}`` (:func:`attnlens.steering.methods`);
            default: GUIDE on the prompts' tags.
    """
    if task not in TASKS:
        raise AttnlensError(f"unknown task {task!r}; attnlens provides {', '.join(TASKS)}")
    if model is None or isinstance(model, str):
        from ..runtime.models import load_model

        model = load_model(model, device=device)
    return PayAttentionPipeline(model, delta_mid=delta_mid, layers=layers, batch_size=batch_size, chat=chat,
                                return_full_text=return_full_text, convention=convention, steer=steer, raw=raw,
                                tag_whitespace=tag_whitespace)


# the batch of prompts (attnlens batch) lives in batch.py; its names stay importable from here
from .batch import read_prompts, run_prompts  # noqa: E402,F401
