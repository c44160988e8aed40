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
from collections.abc import Sequence
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
from . import fused_influence

logger = logging.getLogger(__name__)

Method = Literal["influence", "rollout", "influence_heads"]
INFLUENCE_METHODS: tuple[str, ...] = ("influence", "rollout", "influence_heads")
Convention = Literal["stated", "pap"]
#: ``"stated"``: the residual stream's norm, layer by layer; ``"pap"``: pay-attention-pipeline 0.2.0's
CONVENTIONS: tuple[str, ...] = ("stated", "pap")
TokensLike = Union[torch.Tensor, Sequence[int]]
SpanLike = Sequence[int]

RESID_PRE, ATTN_OUT, PATTERN, VALUES = hooks.RESID_PRE, hooks.ATTN_OUT, hooks.PATTERN, hooks.VALUES
ATTN_INPUT, HEAD_OUT = hooks.ATTN_INPUT, hooks.HEAD_OUT

#: sequences at least this long show a progress bar over layers
PROGRESS_FROM = 1024


@dataclass
class InfluenceTrace:
    """What one forward pass measured: one tensor per method.

    Each tensor is ``[n_spans, n_layers + 1, seq]`` (``[n_spans, n_layers + 1,
    n_heads, seq]`` with ``per_head``); row 0 is the spans' indicator.
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
    span: SpanLike | None, spans: Sequence[SpanLike] | None, seq_len: int
) -> list[tuple[int, int]]:
    """Validate ``span`` xor ``spans`` against a sequence of ``seq_len`` tokens."""
    if span is not None and spans is not None:
        raise AttnlensError("give either span=(start, end) or spans=[(start, end), ...], not both")
    if span is None and spans is None:
        raise AttnlensError("influence needs a span=(start, end) of token positions (or spans=[...])")
    items = [span] if span is not None else list(spans)  # type: ignore[arg-type]
    if not items:
        raise SpanError("spans is empty: give at least one (start, end) token span")
    out = []
    for item in items:
        if isinstance(item, torch.Tensor):
            item = item.tolist()
        if not isinstance(item, Sequence) or isinstance(item, str) or len(item) != 2:
            raise SpanError(f"span {item!r} must be a (start, end) pair of token positions")
        start, end = item
        if any(not is_int(v) for v in (start, end)):
            raise SpanError(f"span {tuple(item)!r}: start and end must be integers")
        if start < 0 or end <= start:
            raise SpanError(f"span [{start}, {end}) is empty or negative: need 0 <= start < end")
        if end > seq_len:
            raise SpanError(f"span [{start}, {end}) runs past the sequence of {seq_len} tokens")
        out.append((int(start), int(end)))
    return out


def _check_methods(methods: Sequence[str]) -> tuple[str, ...]:
    if isinstance(methods, str):
        methods = [methods]
    out = []
    for m in methods:
        if m not in INFLUENCE_METHODS:
            raise AttnlensError(f"unknown influence method {m!r}; choose from {', '.join(INFLUENCE_METHODS)}")
        if m not in out:
            out.append(m)
    if not out:
        raise AttnlensError(f"no influence method given; choose from {', '.join(INFLUENCE_METHODS)}")
    return tuple(out)


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


# ----------------------------------------------------------------------------- the streaming core


class _Stream:
    """The hooks' shared state: the running influence of every (method, span) and one layer's norms."""

    def __init__(
        self,
        indicator: Float[torch.Tensor, "span seq"],
        methods: tuple[str, ...],
        n_layers: int,
        n_heads: int,
        *,
        use_values: bool,
        per_head: bool,
        convention: str = "stated",
        progress: Any = None,
    ) -> None:
        self.methods = methods
        self.convention = convention
        self.prev_input_norm: torch.Tensor | None = None  # "pap": layer l-1's attention-input norm
        self.dtype = indicator.dtype  # the working precision of the recursion
        self.n_spans, self.seq = indicator.shape
        self.n_layers = n_layers
        self.n_heads = n_heads
        self.use_values = use_values
        self.per_head = per_head
        self.progress = progress
        # all chains stacked: rows [i*S, (i+1)*S) belong to methods[i]
        self.chain = indicator.repeat(len(methods), 1)
        shape = (self.n_spans, n_layers + 1) + ((n_heads,) if per_head else ()) + (self.seq,)
        self.out = {m: indicator.new_zeros(shape) for m in methods}
        for m in methods:
            self.out[m][:, 0] = indicator[:, None] if per_head else indicator
        self.layer = -1  # the last completed layer
        self._reset_layer()

    def _reset_layer(self) -> None:
        self.resid_norm: torch.Tensor | None = None
        self.value_norm: torch.Tensor | None = None
        self.att: torch.Tensor | None = None  # [M*S, seq]
        self.att_heads: torch.Tensor | None = None  # [M*S, H, seq]
        self.head_prod: torch.Tensor | None = None  # [H, query, M*S]: every head's A_h @ I (influence_heads)
        self.att_combined: torch.Tensor | None = None  # [M*S, query]: heads combined by |z_h|_2

    def _expect(self, layer: int, what: str) -> None:
        if layer != self.layer + 1:
            raise AttnlensError(
                f"influence hooks ran out of order ({what} of layer {layer} after layer {self.layer}); "
                "is the model a TransformerLens model whose blocks run in order?"
            )

    # hooks: each returns None, so activations are untouched

    def resid_pre(self, x: torch.Tensor, hook: Any = None, *, layer: int) -> None:
        self._expect(layer, "hook_resid_pre")
        # a model split across devices runs layers elsewhere: the recursion stays on the chain's device
        self.resid_norm = torch.linalg.vector_norm(x[0], ord=1, dim=-1, dtype=self.dtype).to(self.chain.device)

    def attn_input(self, e: torch.Tensor, hook: Any = None, *, layer: int) -> None:
        """``"pap"``: the residual term's norm is the previous layer's attention-input norm (layer 0: its own)."""
        self._expect(layer, "ln1.hook_out")
        norm = torch.linalg.vector_norm(e[0], ord=1, dim=-1, dtype=self.dtype)
        self.resid_norm = norm if self.prev_input_norm is None else self.prev_input_norm
        self.prev_input_norm = norm

    def head_out(self, z: torch.Tensor, hook: Any = None, *, layer: int) -> None:
        """``influence_heads``: combine the heads' products by the L2 norm of each head's output."""
        if self.head_prod is None:
            raise AttnlensError(f"influence_heads: layer {layer} fired hook_z before its pattern")
        weights = torch.linalg.vector_norm(z[0], ord=2, dim=-1, dtype=self.dtype)  # [query, head]
        combined = torch.einsum("hqc,qh->cq", self.head_prod, weights)
        total = weights.sum(-1)  # [query]
        self.att_combined = torch.where(total > 0, combined / total.clamp_min(torch.finfo(total.dtype).tiny),
                                        torch.zeros_like(combined)).contiguous()

    def values(self, v: torch.Tensor, hook: Any = None, *, layer: int) -> None:
        # [pos, kv_heads, d_head] -> L1 norm per key-value head
        self.value_norm = torch.linalg.vector_norm(v[0], ord=1, dim=-1, dtype=self.dtype).to(self.chain.device)

    def pattern(self, pattern: torch.Tensor, hook: Any = None, *, layer: int) -> None:
        self._expect(layer, "hook_pattern")
        a = pattern[0]  # [head, query, key]
        heads, queries, keys = a.shape
        if queries != keys or keys != self.seq:
            raise AttnlensError(
                f"layer {layer} attends {queries} queries to {keys} keys; influence needs one full "
                f"forward pass over the {self.seq} tokens (no KV cache)"
            )
        chains = self.chain.T  # [key, M*S]
        if self.use_values:
            if self.value_norm is None:
                raise AttnlensError(f"use_values: layer {layer} fired no hook_v before its pattern")
            # columns: value-weighted chains, then the weights: (A * w) @ I and A @ w in one product
            weights = self.value_norm.sum(-1, keepdim=True)  # [key, 1]: all key-value heads
            rhs = torch.cat([chains * weights, weights], dim=1)
            if self.per_head:
                kv = self.value_norm.shape[-1]
                head_index = torch.arange(heads, device=self.value_norm.device) * kv // heads
                head_w = self.value_norm[:, head_index].T[..., None]
                head_rhs = torch.cat([chains[None] * head_w, head_w], dim=2)  # [head, key, M*S + 1]
        else:
            rhs = chains
        # one batched product per layer, in the pattern's precision (float32 or wider): the pattern
        # is read once and never copied; the head mean and the recursion use the working dtype
        dtype = a.dtype if a.dtype in (torch.float32, torch.float64) else torch.float32
        prod = _per_head_product(a, rhs.to(device=a.device, dtype=dtype))  # [head, query, columns]
        prod = prod.to(self.chain.device)
        mean = prod.to(self.dtype).mean(0)  # the head-averaged pattern's product
        self.att = (_weighted(mean) if self.use_values else mean).T.contiguous()  # [M*S, query]
        if self.per_head or "influence_heads" in self.methods:
            if self.use_values:
                prod = _weighted(_per_head_product(a, head_rhs.to(device=a.device, dtype=dtype))
                                 .to(device=self.chain.device, dtype=self.dtype))
            if self.per_head:
                self.att_heads = prod.to(self.dtype).permute(2, 0, 1).contiguous()  # [M*S, head, query]
            if "influence_heads" in self.methods:
                self.head_prod = prod.to(self.dtype)  # [head, query, M*S]

    def attn_out(self, out: torch.Tensor, hook: Any = None, *, layer: int) -> None:
        self._expect(layer, "hook_attn_out")
        if self.att is None or self.resid_norm is None:
            raise AttnlensError(f"layer {layer}: hook_attn_out fired before hook_resid_pre and hook_pattern")
        attn_norm = torch.linalg.vector_norm(out[0], ord=1, dim=-1, dtype=self.dtype).to(self.chain.device)
        x_share = self.resid_norm / (self.resid_norm + attn_norm)  # |x| / (|x| + |a|)
        new_chain = torch.empty_like(self.chain)
        S = self.n_spans
        for i, m in enumerate(self.methods):
            rows = slice(i * S, (i + 1) * S)
            prev = self.chain[rows]
            if m == "influence_heads":
                if self.att_combined is None:
                    raise AttnlensError(f"influence_heads: layer {layer} fired no hook_z")
                att = self.att_combined[rows]
            else:
                att = self.att[rows]
            new_chain[rows] = _mix(m, prev, att, x_share)
            if self.per_head:
                self.out[m][:, layer + 1] = _mix(m, prev[:, None], self.att_heads[rows], x_share)  # type: ignore[index]
            else:
                self.out[m][:, layer + 1] = new_chain[rows]
        self.chain = new_chain
        self.layer = layer
        self._reset_layer()
        if self.progress is not None:
            self.progress.update(1)

    def hooks(self) -> list[tuple[str, Any]]:
        out = []
        for layer in range(self.n_layers):
            if self.convention == "pap":
                out.append((ATTN_INPUT.format(layer=layer), partial(self.attn_input, layer=layer)))
            else:
                out.append((RESID_PRE.format(layer=layer), partial(self.resid_pre, layer=layer)))
            if self.use_values:
                out.append((VALUES.format(layer=layer), partial(self.values, layer=layer)))
            out.append((PATTERN.format(layer=layer), partial(self.pattern, layer=layer)))
            if "influence_heads" in self.methods:
                out.append((HEAD_OUT.format(layer=layer), partial(self.head_out, layer=layer)))
            out.append((ATTN_OUT.format(layer=layer), partial(self.attn_out, layer=layer)))
        return out


def _per_head_product(a: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """``a[h] @ rhs`` (or ``a[h] @ rhs[h]``) for every head ``h`` of a ``[head, query, key]`` pattern.

    A pattern in the working dtype is multiplied as it is; a half-precision one is
    converted one head at a time, so no full-size copy is made.
    """
    if a.dtype == rhs.dtype:
        return torch.matmul(a, rhs)
    return torch.stack([a[h].to(rhs.dtype) @ (rhs[h] if rhs.dim() == 3 else rhs) for h in range(a.shape[0])])


def _weighted(prod: torch.Tensor) -> torch.Tensor:
    """``[..., n + 1]`` products ``(A*w) @ I`` and ``A @ w`` -> their ratio ``[..., n]`` (0 where ``A @ w`` is 0)."""
    num, den = prod[..., :-1], prod[..., -1:]
    return torch.where(den > 0, num / den.clamp_min(torch.finfo(den.dtype).tiny), torch.zeros_like(num))


def _mix(method: str, prev: torch.Tensor, att: torch.Tensor, x_share: torch.Tensor) -> torch.Tensor:
    if method == "rollout":
        return (prev + att) / 2
    return x_share * prev + (1 - x_share) * att


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
        tokens: one sequence: a 1-D tensor, a ``[1, seq]`` tensor or a list of ints.
        spans: token spans ``[(start, end), ...]``, half-open.
        methods: ``"influence"``, ``"rollout"``, ``"influence_heads"`` (pay-attention-pipeline's
            ``InfluenceHeads``), or several.
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
    row = as_token_row(tokens).to(device)
    seq = row.shape[1]
    _check_ids_for(model, row)
    checked = check_spans(None, spans, seq)
    mask = _mask_row(attention_mask, seq, device)
    n_layers, n_heads = int(cfg.n_layers), int(cfg.n_heads)

    work = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
    indicator = torch.zeros(len(checked), seq, dtype=work, device=device)
    for i, (start, end) in enumerate(checked):
        indicator[i, start:end] = 1.0
    if mask is not None:
        indicator *= mask.to(indicator.dtype)

    show = seq >= PROGRESS_FROM if progress is None else progress
    bar = tqdm(total=n_layers, desc="influence", unit="layer", disable=not show, leave=False)
    stream = _Stream(indicator, methods, n_layers, n_heads, use_values=use_values, per_head=per_head,
                     convention=convention, progress=bar)
    logger.debug("influence: %d tokens, %d span(s), methods %s", seq, len(checked), methods)
    kwargs = {} if mask is None else {"attention_mask": mask[None]}
    try:
        # --- fused long-context path (attnlens.attribution.fused_influence): no pattern is formed.
        # It computes rollout and the stated convention's influence; PAP's influence (the normalised
        # input's norm) and influence_heads (per-head output norms) read patterns through hooks.
        fusable = "influence_heads" not in methods and (convention == "stated" or "influence" not in methods)
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
    results = {}
    for m in methods:
        out = stream.out[m]
        if mask is not None:
            out = out * mask.to(out.dtype)
        results[m] = out.to(torch.float32)
    return InfluenceTrace(checked, results, row[0].tolist(), use_values=use_values, per_head=per_head,
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
        tokens: one sequence: a 1-D tensor, a ``[1, seq]`` tensor or a list of ints.
        span: the half-open token range ``(start, end)`` to follow.
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
    if isinstance(method, str) is False or method not in INFLUENCE_METHODS:
        raise AttnlensError(f"unknown influence method {method!r}; choose from {', '.join(INFLUENCE_METHODS)}")
    row = as_token_row(tokens)
    checked = check_spans(span, spans, row.shape[1])
    trace = trace_influence(
        model, row, checked, methods=(method,), use_values=use_values, per_head=per_head,
        attention_mask=attention_mask, convention=convention,
    )
    result = trace[method]
    return result[0] if span is not None else result

