"""The layer-by-layer recursion shared by Influence, rollout and their variants.

``I[-1]`` is each span's indicator. At layer ``l`` every method takes the
attention term ``I_att = A @ I[l-1]`` (``A`` the head-averaged pattern, or the
heads combined by their output norms) and mixes it with ``I[l-1]``:
:meth:`~attnlens.attribution.registry.RecursionMethod.mix`. :class:`Recursion`
holds the running chains of every (method, span) and one layer's terms; two
drivers feed it: its own :meth:`Recursion.hooks` (TransformerLens hooks, one
pattern at a time) and the fused driver of
:mod:`attnlens.attribution.fused_influence` (no pattern is formed). See
:mod:`attnlens.attribution.influence` for the formulas and options.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from jaxtyping import Float

from ..core import hooks as hook_names
from ..core.errors import AttnlensError
from .registry import RecursionMethod, get

RESID_PRE, ATTN_OUT, PATTERN, VALUES = (hook_names.RESID_PRE, hook_names.ATTN_OUT, hook_names.PATTERN,
                                        hook_names.VALUES)
ATTN_INPUT, HEAD_OUT = hook_names.ATTN_INPUT, hook_names.HEAD_OUT


class Recursion:
    """The recursion's state: the running chain of every (method, span), the result so far, one layer's terms.

    The hook driver (:meth:`hooks`) and the fused driver
    (:mod:`attnlens.attribution.fused_influence`) feed it through its public
    methods: per layer, the residual norm (:meth:`resid_pre` or :meth:`attn_input`),
    the attention term (:meth:`pattern`, or :meth:`set_products` from a fused
    kernel), then :meth:`attn_out`, which advances every chain one layer.
    """

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
        self.steps = [get(m) for m in methods]
        for step in self.steps:
            if not isinstance(step, RecursionMethod):
                raise AttnlensError(f"{step.name!r} is not a recursion method; it runs with its own driver")
        #: whether a method combines the heads by their output norms (reads ``attn.hook_z``)
        self.head_outputs = any(step.head_outputs for step in self.steps)
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

    def expect(self, layer: int, what: str) -> None:
        """Raise unless ``layer`` is the next one (``what`` names the activation that arrived)."""
        if layer != self.layer + 1:
            raise AttnlensError(
                f"influence hooks ran out of order ({what} of layer {layer} after layer {self.layer}); "
                "is the model a TransformerLens model whose blocks run in order?"
            )

    # hooks: each returns None, so activations are untouched

    def resid_pre(self, x: torch.Tensor, hook: Any = None, *, layer: int) -> None:
        self.expect(layer, "hook_resid_pre")
        # a model split across devices runs layers elsewhere: the recursion stays on the chain's device
        self.resid_norm = torch.linalg.vector_norm(x[0], ord=1, dim=-1, dtype=self.dtype).to(self.chain.device)

    def attn_input(self, e: torch.Tensor, hook: Any = None, *, layer: int) -> None:
        """``"pap"``: the residual term's norm is the previous layer's attention-input norm (layer 0: its own)."""
        self.expect(layer, "ln1.hook_out")
        norm = torch.linalg.vector_norm(e[0], ord=1, dim=-1, dtype=self.dtype)
        self.resid_norm = norm if self.prev_input_norm is None else self.prev_input_norm
        self.prev_input_norm = norm

    def head_out(self, z: torch.Tensor, hook: Any = None, *, layer: int) -> None:
        """``influence_heads``: combine the heads' products by the L2 norm of each head's output."""
        if self.head_prod is None:
            raise AttnlensError(f"head outputs: layer {layer} fired hook_z before its pattern")
        weights = torch.linalg.vector_norm(z[0], ord=2, dim=-1, dtype=self.dtype)  # [query, head]
        combined = torch.einsum("hqc,qh->cq", self.head_prod, weights)
        total = weights.sum(-1)  # [query]
        self.att_combined = torch.where(total > 0, combined / total.clamp_min(torch.finfo(total.dtype).tiny),
                                        torch.zeros_like(combined)).contiguous()

    def values(self, v: torch.Tensor, hook: Any = None, *, layer: int) -> None:
        # [pos, kv_heads, d_head] -> L1 norm per key-value head
        self.value_norm = torch.linalg.vector_norm(v[0], ord=1, dim=-1, dtype=self.dtype).to(self.chain.device)

    def pattern(self, pattern: torch.Tensor, hook: Any = None, *, layer: int) -> None:
        self.expect(layer, "hook_pattern")
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
        prod = per_head_product(a, rhs.to(device=a.device, dtype=dtype))  # [head, query, columns]
        prod = prod.to(self.chain.device)
        mean = prod.to(self.dtype).mean(0)  # the head-averaged pattern's product
        self.att = (weighted(mean) if self.use_values else mean).T.contiguous()  # [M*S, query]
        if self.per_head or self.head_outputs:
            if self.use_values:
                prod = weighted(per_head_product(a, head_rhs.to(device=a.device, dtype=dtype))
                                 .to(device=self.chain.device, dtype=self.dtype))
            if self.per_head:
                self.att_heads = prod.to(self.dtype).permute(2, 0, 1).contiguous()  # [M*S, head, query]
            if self.head_outputs:
                self.head_prod = prod.to(self.dtype)  # [head, query, M*S]

    def attn_out(self, out: torch.Tensor, hook: Any = None, *, layer: int) -> None:
        self.expect(layer, "hook_attn_out")
        if self.att is None or self.resid_norm is None:
            raise AttnlensError(f"layer {layer}: hook_attn_out fired before hook_resid_pre and hook_pattern")
        attn_norm = torch.linalg.vector_norm(out[0], ord=1, dim=-1, dtype=self.dtype).to(self.chain.device)
        x_share = self.resid_norm / (self.resid_norm + attn_norm)  # |x| / (|x| + |a|)
        new_chain = torch.empty_like(self.chain)
        S = self.n_spans
        for i, (m, step) in enumerate(zip(self.methods, self.steps)):
            rows = slice(i * S, (i + 1) * S)
            prev = self.chain[rows]
            if step.head_outputs and self.att_combined is None:
                raise AttnlensError(f"{m}: layer {layer} fired no hook_z")
            att = step.attention(self, rows)
            new_chain[rows] = _mixed(step, layer, prev, att, x_share)
            if self.per_head:
                heads = self.att_heads[rows]  # type: ignore[index]
                self.out[m][:, layer + 1] = _mixed(step, layer, prev[:, None], heads, x_share)
            else:
                self.out[m][:, layer + 1] = new_chain[rows]
        self.chain = new_chain
        self.layer = layer
        self._reset_layer()
        if self.progress is not None:
            self.progress.update(1)

    def set_products(self, att: torch.Tensor, att_heads: torch.Tensor | None = None) -> None:
        """One layer's attention term computed elsewhere (the fused driver): ``A @ I`` as ``[M*S, query]``,
        and with ``per_head`` every head's ``[M*S, head, query]``."""
        self.att = att
        if att_heads is not None:
            self.att_heads = att_heads

    def repair_nonfinite(self, layer: int) -> None:
        """Zero the NaNs of masked positions whose residual and attention output are both zero (0 / 0)."""
        if bool(torch.isfinite(self.chain).all()):
            return
        self.chain = torch.nan_to_num(self.chain)
        for method in self.methods:
            self.out[method][:, layer + 1] = torch.nan_to_num(self.out[method][:, layer + 1])

    def hooks(self) -> list[tuple[str, Any]]:
        """The hook driver: ``(hook name, function)`` pairs that feed this state during one forward pass."""
        out = []
        for layer in range(self.n_layers):
            if self.convention == "pap":
                out.append((ATTN_INPUT.format(layer=layer), partial(self.attn_input, layer=layer)))
            else:
                out.append((RESID_PRE.format(layer=layer), partial(self.resid_pre, layer=layer)))
            if self.use_values:
                out.append((VALUES.format(layer=layer), partial(self.values, layer=layer)))
            out.append((PATTERN.format(layer=layer), partial(self.pattern, layer=layer)))
            if self.head_outputs:
                out.append((HEAD_OUT.format(layer=layer), partial(self.head_out, layer=layer)))
            out.append((ATTN_OUT.format(layer=layer), partial(self.attn_out, layer=layer)))
        return out


def _mixed(step: RecursionMethod, layer: int, prev: torch.Tensor, att: Any, x_share: torch.Tensor) -> torch.Tensor:
    """``step.mix(prev, att, x_share)`` checked at the boundary, the same on both drivers: a float tensor of the
    chain's shape, and no NaN where its inputs are finite (a NaN there is the mix's, and the fused driver's repair
    of masked positions would hide it as 0.0 while the hook driver kept it). Each is an AttnlensError naming the
    method and the layer."""
    if not isinstance(att, torch.Tensor):
        raise AttnlensError(f"recursion method {step.name!r}: attention() must return a tensor, got "
                            f"{type(att).__name__} at layer {layer}")
    try:
        out = step.mix(prev, att, x_share)
    except (TypeError, RuntimeError) as exc:
        raise AttnlensError(f"recursion method {step.name!r}: mix() failed at layer {layer}: "
                            f"{type(exc).__name__}: {exc}") from None
    expected = torch.broadcast_shapes(prev.shape, att.shape)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(expected) or not out.is_floating_point():
        got = (f"a {out.dtype} tensor shaped {tuple(out.shape)}" if isinstance(out, torch.Tensor)
               else type(out).__name__)
        raise AttnlensError(f"recursion method {step.name!r}: mix() must return a float tensor shaped "
                            f"{tuple(expected)} at layer {layer}, got {got}")
    if bool(torch.isnan(out).any()):
        finite = torch.isfinite(prev) & torch.isfinite(att) & torch.isfinite(x_share)
        if bool((torch.isnan(out) & finite).any()):
            raise AttnlensError(f"recursion method {step.name!r}: mix() returned NaN at layer {layer} where its "
                                "inputs are finite numbers")
    return out


def per_head_product(a: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """``a[h] @ rhs`` (or ``a[h] @ rhs[h]``) for every head ``h`` of a ``[head, query, key]`` pattern.

    A pattern in the working dtype is multiplied as it is; a half-precision one is
    converted one head at a time, so no full-size copy is made.
    """
    if a.dtype == rhs.dtype:
        return torch.matmul(a, rhs)
    return torch.stack([a[h].to(rhs.dtype) @ (rhs[h] if rhs.dim() == 3 else rhs) for h in range(a.shape[0])])


def weighted(prod: torch.Tensor) -> torch.Tensor:
    """``[..., n + 1]`` products ``(A*w) @ I`` and ``A @ w`` -> their ratio ``[..., n]`` (0 where ``A @ w`` is 0)."""
    num, den = prod[..., :-1], prod[..., -1:]
    return torch.where(den > 0, num / den.clamp_min(torch.finfo(den.dtype).tiny), torch.zeros_like(num))
