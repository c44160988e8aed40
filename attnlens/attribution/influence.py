"""Influence: how much a token span reaches each position, layer by layer.

``I[-1]`` (row 0 of the result) is the span's indicator over positions. At layer
``l``, with ``x`` the residual stream entering the layer (``hook_resid_pre``),
``a`` the attention sub-layer's output (``hook_attn_out``) and ``A`` the
attention pattern averaged over heads (``attn.hook_pattern``)::

    I_att = A @ I[l-1]
    I[l]  = (|x|_1 * I[l-1] + |a|_1 * I_att) / (|x|_1 + |a|_1)      per token

Attention rollout, the baseline, mixes without the norms:
``I[l] = (I[l-1] + I_att) / 2``.

Two conventions choose the residual term's norm (``convention=``):

``"stated"`` (the default)
    the formula above: ``|x|_1`` is the L1 norm of the residual stream entering
    layer ``l`` (``hook_resid_pre``).
``"pap"``
    pay-attention-pipeline 0.2.0's computation, reproduced exactly: the norm is
    that of the attention's *normalised* input (``ln1.hook_out``, the RMSNorm or
    LayerNorm output the attention reads), and layer ``l`` is paired with layer
    ``l-1``'s input norm (layer 0 with its own)::

        e_l   = ln1(x_l)                        (the attention's input at layer l)
        I[l]  = (|e_m|_1 * I[l-1] + |a|_1 * I_att) / (|e_m|_1 + |a|_1),  m = max(l-1, 0)

Methods (``method=`` / ``methods=``): ``"influence"``, ``"rollout"``, and
``"influence_heads"`` (pay-attention-pipeline's ``InfluenceHeads``): each head's
``A_h @ I[l-1]`` combined by the L2 norm of that head's output ``z_h``
(``attn.hook_z``), ``I_att = sum_h |z_h|_2 (A_h @ I[l-1]) / sum_h |z_h|_2``, then
mixed with the residual term as ``"influence"`` is.

Both are computed while one forward pass runs. Four hooks per layer read the
residual norm, the value norms (``use_values``), the pattern and the attention
output. The pattern hook multiplies every head's pattern by the running
influence in one batched product, reading the pattern once without copying it,
and takes the head mean there (by linearity, the head-averaged pattern's
product); nothing bigger than one layer's pattern ever exists, and every hook
returns ``None`` (the activations are left as they are). The head mean and the
recursion run in float64 (float32 on devices without it, such as Apple's MPS);
the result is float32. Steering hooks active around the call
(:func:`attnlens.guide`, PASTA) act on the scores before the softmax, so the
influence is measured under that steering.

Options:

``use_values``
    Weight each key by the L1 norm of its value vector, as the GUIDE reference
    does: ``I_att = (A * |v|) @ I / (A @ |v|)`` (``|v|`` over all key-value heads).
``per_head``
    An extra head dimension: head ``h``'s row at layer ``l`` is the layer's
    update with ``A_h`` in place of ``A`` (``I[l-1]`` stays the head-averaged
    chain). Without ``use_values`` the mean over heads is the layer's influence.
    With ``use_values`` each head weighs keys by its own key-value head's norms.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal, Union

import torch
from jaxtyping import Float
from tqdm.auto import tqdm

from ..core.model import Model
from ..core.validate import check_bool, is_int
from ..core import hooks
from ..core.model import check_window, model_device
from ..core.concurrency import call_scope, exclusive, scoped
from ..core.errors import AttnlensError, SpanError
from ..core.records import Showable
from ..prompts import span_args
from . import fused_influence
from . import registry
from .recursion import Recursion, RecursionMethod, per_head_product, weighted  # noqa: F401

logger = logging.getLogger(__name__)

Method = str  # a registered attribution method: attnlens.attribution.methods()
Convention = Literal["stated", "pap"]
#: ``"stated"``: the residual stream's norm, layer by layer; ``"pap"``: pay-attention-pipeline 0.2.0's
CONVENTIONS: tuple[str, ...] = ("stated", "pap")
TokensLike = Union[torch.Tensor, Sequence[int]]
#: a token span: ``(start, end)``, a TokenSpan or a substring (:mod:`attnlens.prompts.span_args`)
SpanLike = Union[Sequence[int], str, Any]

RESID_PRE, ATTN_OUT, PATTERN, VALUES = hooks.RESID_PRE, hooks.ATTN_OUT, hooks.PATTERN, hooks.VALUES
ATTN_INPUT, HEAD_OUT = hooks.ATTN_INPUT, hooks.HEAD_OUT

#: sequences at least this long show a progress bar over layers
PROGRESS_FROM = 1024


@dataclass
class InfluenceTrace(Showable):
    """What one forward pass measured: one tensor per method.

    Each tensor is ``[n_spans, n_layers + 1, seq]`` (``[n_spans, n_layers + 1,
    n_heads, seq]`` with ``per_head``); row 0 is the spans' indicator. ``show()`` /
    ``view(tokens=...)`` draw every span (:func:`attnlens.viz.influence_view`; pass the token
    strings, the trace keeps ids); ``to_json()`` gives the tensors as lists.
    """

    spans: list[tuple[int, int]]
    results: dict[str, Float[torch.Tensor, "span layer_plus_1 *head seq"]] = field(default_factory=dict)
    tokens: list[int] = field(default_factory=list)  # the measured token ids
    use_values: bool = False
    per_head: bool = False
    convention: str = "stated"

    def __getitem__(self, method: str) -> torch.Tensor:
        if method not in self.results:
            raise AttnlensError(f"method {method!r} was not measured; this trace has {sorted(self.results)}")
        return self.results[method]

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(self.results)


# ----------------------------------------------------------------------------- input checks


def as_token_row(tokens: TokensLike) -> torch.Tensor:
    """A 1-D tensor, a ``[1, seq]`` tensor or a list of ints, as a ``[1, seq]`` long tensor."""
    if isinstance(tokens, torch.Tensor):
        if tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
            raise AttnlensError(f"tokens must be integer token ids, got a {tokens.dtype} tensor")
        if tokens.dim() == 1:
            tokens = tokens[None]
        elif not (tokens.dim() == 2 and tokens.shape[0] == 1):
            raise AttnlensError(
                f"tokens must be a 1-D tensor, a [1, seq] tensor or a list of ints; got shape {tuple(tokens.shape)}"
            )
        row = tokens.long()
    else:
        if isinstance(tokens, (str, bytes)) or not isinstance(tokens, Sequence):
            raise AttnlensError(
                f"tokens must be a 1-D tensor, a [1, seq] tensor or a list of ints; got {type(tokens).__name__}"
            )
        if any(not is_int(t) for t in tokens):
            raise AttnlensError("tokens must be a list of ints (token ids)")
        row = torch.tensor([list(tokens)], dtype=torch.long)
    if row.shape[1] == 0:
        raise AttnlensError("tokens is empty: influence needs at least one token")
    return row


def read_tokens(model: Model, tokens: Any) -> torch.Tensor:
    """``tokens`` as a ``[1, seq]`` row: ids (as :func:`as_token_row`), a string (tokenized with the
    model's tokenizer as plain text, special tokens as the tokenizer adds them), a
    :class:`~attnlens.prompts.prompt.Prompt` or a tokenizer's output (its ``input_ids``, one row)."""
    if isinstance(tokens, str):
        tokenizer = getattr(model, "tokenizer", None)
        if tokenizer is None:
            raise AttnlensError("tokens is a string but the model has no tokenizer; pass token ids")
        from ..prompts.spans import text_ids

        tokens = text_ids(tokenizer, tokens, "tokens")
    elif isinstance(tokens, Mapping):
        if "input_ids" not in tokens:
            raise AttnlensError("tokens is a mapping without 'input_ids'; pass a tokenizer's output or token ids")
        tokens = tokens["input_ids"]
    elif not isinstance(tokens, torch.Tensor) and hasattr(tokens, "input_ids"):  # a Prompt
        tokens = tokens.input_ids
    return as_token_row(tokens)


def _pieces(model: Model, row: torch.Tensor, items: Any) -> list[str] | None:
    """The decoded tokens when a span is given as a substring (else None: nothing to decode)."""
    listed = [items] if span_args.is_span_like(items) else list(items or [])
    if not any(isinstance(i, str) or (isinstance(i, tuple) and i and isinstance(i[0], str)) for i in listed):
        return None
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise SpanError("a span given as a substring needs the model's tokenizer; this model has none")
    return span_args.token_texts(tokenizer, row[0].tolist())


def _check_ids_for(model: Model, row: torch.Tensor) -> None:
    """Token ids the model has (``[0, d_vocab)``) and a sequence that fits its window."""
    vocab = getattr(model.cfg, "d_vocab", None)
    if vocab:
        bad = ((row < 0) | (row >= int(vocab)))[0].nonzero()
        if len(bad):
            position = int(bad[0])
            raise AttnlensError(
                f"tokens: {int(row[0, position])} at position {position} is not a token id of this model "
                f"([0, {int(vocab)}))"
            )
    check_window(model, row.shape[1], what="the sequence to measure")


def check_spans(
    span: SpanLike | None, spans: Sequence[SpanLike] | None, seq_len: int, *, pieces: Sequence[str] | None = None
) -> list[tuple[int, int]]:
    """Validate ``span`` xor ``spans`` against a sequence of ``seq_len`` tokens.

    A span may be a :class:`~attnlens.prompts.prompt.TokenSpan`, a ``(start, end)`` pair or, with
    ``pieces`` (the decoded tokens), a substring (see :mod:`attnlens.prompts.span_args`).
    """
    if span is not None and spans is not None:
        raise AttnlensError("give either span=(start, end) or spans=[(start, end), ...], not both")
    if span is None and spans is None:
        raise AttnlensError("influence needs a span=(start, end) of token positions (or spans=[...])")
    items = [span] if span is not None else spans
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
        if span_args.is_span_like(items):
            items = [items]
        else:
            raise SpanError(f"spans must be a list of spans, got {type(items).__name__}")
    if not items:
        raise SpanError("spans is empty: give at least one (start, end) token span")
    return [span_args.one_span(item, seq_len, pieces=pieces) for item in items]


def _check_methods(methods: Sequence[str]) -> tuple[str, ...]:
    if isinstance(methods, str):
        methods = [methods]
    out = []
    for m in methods:
        if not isinstance(m, str) or m not in registry.methods():
            raise AttnlensError(f"unknown influence method {m!r}; choose from {', '.join(registry.methods())}")
        if m not in out:
            out.append(m)
    if not out:
        raise AttnlensError(f"no influence method given; choose from {', '.join(registry.methods())}")
    return tuple(out)


def __getattr__(name: str) -> Any:  # INFLUENCE_METHODS follows the registry (PEP 562)
    if name == "INFLUENCE_METHODS":
        return registry.span_methods()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def check_convention(convention: Any) -> str:
    """``"stated"`` or ``"pap"``; anything else raises naming both."""
    if not isinstance(convention, str) or convention not in CONVENTIONS:
        raise AttnlensError(
            f"unknown influence convention {convention!r}; choose 'stated' (the residual stream entering "
            "each layer) or 'pap' (pay-attention-pipeline 0.2.0's normalised input, layer l-1)"
        )
    return convention


def _mask_row(attention_mask: Any, seq_len: int, device: torch.device) -> torch.Tensor | None:
    if attention_mask is None:
        return None
    mask = torch.as_tensor(attention_mask, device=device)
    if mask.dim() == 2 and mask.shape[0] == 1:
        mask = mask[0]
    if mask.dim() != 1 or mask.shape[0] != seq_len:
        raise AttnlensError(
            f"attention_mask must have one entry per token ({seq_len}); got shape {tuple(mask.shape)}"
        )
    if mask.dtype != torch.bool and not bool(((mask == 0) | (mask == 1)).all()):
        bad = sorted({float(v) for v in mask.flatten().tolist() if v not in (0, 1)})[:5]
        raise AttnlensError(
            f"attention_mask must hold only 1 (a token) and 0 (padding); it holds {', '.join(f'{v:g}' for v in bad)}"
        )
    if not bool(mask.bool().any()):
        raise AttnlensError("attention_mask masks every token")
    return mask.long()


# ----------------------------------------------------------------------------- the drivers

_INTEGERS = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)

#: the recursion's state under its former name
_Stream = Recursion


def trace_influence(
    model: Model,
    tokens: TokensLike,
    spans: Sequence[SpanLike],
    *,
    methods: Sequence[str] | str = ("influence",),
    use_values: bool = False,
    per_head: bool = False,
    attention_mask: Any = None,
    progress: bool | None = None,
    convention: Convention = "stated",
) -> InfluenceTrace:
    """Measure several spans with several methods in one forward pass.

    Args:
        model: a TransformerLens ``TransformerBridge`` (or a model with the same hook names).
        tokens: one sequence: a 1-D tensor, a ``[1, seq]`` tensor, a list of ints, a string
            (tokenized as plain text), a :class:`attnlens.Prompt` or a tokenizer's output (:func:`read_tokens`).
        spans: token spans, half-open: ``(start, end)`` pairs, :class:`attnlens.TokenSpan` s or substrings
            (:mod:`attnlens.prompts.span_args`).
        methods: ``"influence"``, ``"rollout"``, ``"influence_heads"`` (pay-attention-pipeline's
            ``InfluenceHeads``), any registered method (:func:`attnlens.attribution.methods`), or several.
        use_values: weight keys by the L1 norm of their value vectors.
        per_head: keep one row per head (an extra head dimension).
        attention_mask: ``[seq]`` or ``[1, seq]`` of 1/0 (0: padding); masked
            positions get influence 0.
        progress: show a progress bar over layers (default: for long sequences).
        convention: ``"stated"`` (the residual stream entering each layer; the module's
            formula) or ``"pap"`` (pay-attention-pipeline 0.2.0's numbers: the attention's
            normalised input, paired with the previous layer). Rollout is the same in both.

    Returns:
        An :class:`InfluenceTrace` with one ``[n_spans, n_layers + 1, (n_heads,) seq]``
        float32 tensor per method.
    """
    cfg = getattr(model, "cfg", None)
    if cfg is None:
        raise AttnlensError(f"expected a TransformerLens model (with .cfg), got {type(model).__name__}")
    methods = _check_methods(methods)
    convention = check_convention(convention)
    use_values = check_bool(use_values, "use_values")
    per_head = check_bool(per_head, "per_head")
    device = model_device(model)
    row = read_tokens(model, tokens).to(device)
    seq = row.shape[1]
    _check_ids_for(model, row)
    checked = check_spans(None, spans, seq, pieces=_pieces(model, row, spans))
    mask = _mask_row(attention_mask, seq, device)
    n_layers, n_heads = int(cfg.n_layers), int(cfg.n_heads)

    work = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
    indicator = torch.zeros(len(checked), seq, dtype=work, device=device)
    for i, (start, end) in enumerate(checked):
        indicator[i, start:end] = 1.0
    if mask is not None:
        indicator *= mask.to(indicator.dtype)

    # recursion methods share one forward pass (one driver); the others run their own drivers
    steps = {m: registry.get(m) for m in methods}
    recursive = tuple(m for m in methods if isinstance(steps[m], RecursionMethod))
    own = {m: steps[m] for m in methods if m not in recursive}
    results = {}
    for m, method in own.items():
        returned = method.run(model, row, checked, mask=mask, use_values=use_values, per_head=per_head,
                              convention=convention)
        try:
            out = torch.as_tensor(returned)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise AttnlensError(f"attribution method {m!r}: run() must return a tensor of numbers, got "
                                f"{type(returned).__name__} ({exc})") from None
        if not (out.is_floating_point() or out.dtype in _INTEGERS):
            raise AttnlensError(f"attribution method {m!r}: run() must return real numbers, got {out.dtype}")
        expected = (len(checked), n_layers + 1) + ((n_heads,) if per_head else ()) + (seq,)
        if tuple(out.shape) != expected:
            raise AttnlensError(f"attribution method {m!r} returned shape {tuple(out.shape)}, expected {expected}")
        results[m] = out
    if not recursive:
        return _trace(checked, results, methods, mask, row, use_values, per_head, convention)
    methods_run = methods
    methods = recursive
    show = seq >= PROGRESS_FROM if progress is None else progress
    bar = tqdm(total=n_layers, desc="influence", unit="layer", disable=not show, leave=False)
    stream = Recursion(indicator, methods, n_layers, n_heads, use_values=use_values, per_head=per_head,
                       convention=convention, progress=bar)
    logger.debug("influence: %d tokens, %d span(s), methods %s", seq, len(checked), methods)
    kwargs = {} if mask is None else {"attention_mask": mask[None]}
    try:
        # --- fused long-context path (attnlens.attribution.fused_influence): no pattern is formed.
        # It computes rollout and the stated convention's influence; PAP's influence (the normalised
        # input's norm) and influence_heads (per-head output norms) read patterns through hooks.
        fusable = all(convention in steps[m].fused_conventions for m in methods)
        # the model is held for the pass (other threads' runs of it wait), and the hooks act only
        # in this call's context (a forward another thread runs meanwhile is not measured)
        with exclusive(model):
            if fusable and fused_influence.available(model):
                fused_influence.run(model, stream, row, mask)
            else:
                with torch.no_grad(), call_scope() as scope, model.hooks(fwd_hooks=scoped(stream.hooks(), scope)):
                    model(row, **kwargs)
    finally:
        bar.close()
    if stream.layer != n_layers - 1:
        raise AttnlensError(
            f"the forward pass completed {stream.layer + 1} of {n_layers} layers; influence needs all of them"
        )
    results.update({m: stream.out[m] for m in methods})
    return _trace(checked, results, methods_run, mask, row, use_values, per_head, convention)


def _trace(checked: list[tuple[int, int]], results: dict[str, torch.Tensor], methods: Sequence[str], mask: Any,
           row: torch.Tensor, use_values: bool, per_head: bool, convention: str) -> InfluenceTrace:
    """The trace of every method in the order asked for: masked positions 0, float32."""
    out = {}
    for m in methods:
        value = results[m]
        if mask is not None:
            value = value * mask.to(device=value.device, dtype=value.dtype)
        out[m] = value.to(torch.float32)
    return InfluenceTrace(checked, out, row[0].tolist(), use_values=use_values, per_head=per_head,
                          convention=convention)


def influence(
    model: Model,
    tokens: TokensLike,
    span: SpanLike | None = None,
    *,
    spans: Sequence[SpanLike] | None = None,
    method: Method = "influence",
    use_values: bool = False,
    per_head: bool = False,
    attention_mask: Any = None,
    convention: Convention = "stated",
) -> Float[torch.Tensor, "*span layer_plus_1 *head seq"]:
    """How much a token span reaches each position, layer by layer (see the module docstring).

    Args:
        model: a TransformerLens ``TransformerBridge``.
        tokens: one sequence: a 1-D tensor, a ``[1, seq]`` tensor, a list of ints, a string
            (tokenized as plain text), a :class:`attnlens.Prompt` or a tokenizer's output (:func:`read_tokens`).
        span: the tokens to follow: a half-open ``(start, end)`` pair, a :class:`attnlens.TokenSpan`
            (``prompt.spans[0]``) or a substring (``"Paris"``, its first occurrence; ``("Paris", 1)``
            for the second).
        spans: several ranges at once (one forward pass); give ``span`` or ``spans``.
        method: ``"influence"`` (norm-weighted), ``"rollout"`` (attention rollout) or
            ``"influence_heads"`` (heads combined by their output norms).
        use_values: weight keys by the L1 norm of their value vectors.
        per_head: add a head dimension (one row per head).
        attention_mask: ``[seq]`` or ``[1, seq]`` of 1/0 for padded input.
        convention: ``"stated"`` (default) or ``"pap"`` (pay-attention-pipeline 0.2.0's numbers).

    Returns:
        float32 ``[n_layers + 1, seq]`` for ``span``, ``[n_spans, n_layers + 1, seq]``
        for ``spans``; ``per_head`` inserts a head dimension before ``seq``.

    Raises:
        SpanError: an empty, reversed or out-of-range span.
        AttnlensError: bad tokens, method or attention mask.

    Steering contexts active around the call (``with attnlens.guide(...)``) steer
    the measured forward pass.
    """
    if not isinstance(method, str) or method not in registry.methods():
        raise AttnlensError(f"unknown influence method {method!r}; choose from {', '.join(registry.methods())}")
    row = read_tokens(model, tokens)
    checked = check_spans(span, spans, row.shape[1], pieces=_pieces(model, row, span if span is not None else spans))
    trace = trace_influence(
        model, row, checked, methods=(method,), use_values=use_values, per_head=per_head,
        attention_mask=attention_mask, convention=convention,
    )
    result = trace[method]
    return result[0] if span is not None else result

