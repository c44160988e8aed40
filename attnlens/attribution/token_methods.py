"""Token attribution methods: raw attention, attention norm, gradient x input, integrated gradients, occlusion.

Each scores every prompt token toward a :class:`~attnlens.attribution.tokens.Target`
(the log-probability of the next token or of a continuation) and registers
itself on the attribution registry as a token method (it does not follow spans):

- ``attention`` / ``attention_all``: the attention the target positions pay to each
  token, heads averaged, in the last layer / averaged over all layers (one pass);
- ``attention_norm`` / ``attention_norm_all``: Kobayashi et al. (2020),
  ``|| sum_h A_h[t, j] f_h(x_j) ||`` with ``f_h(x_j) = v_h(x_j) W_O^h`` (the value
  vector through the head's output projection; the output bias left out), last
  layer / averaged over layers (one pass);
- ``grad_x_input``: the gradient of the target's log-probability with respect to
  each token's input embedding, dotted with that embedding (one forward and
  one backward pass);
- ``integrated_gradients``: Sundararajan et al. (2017), from a zero embedding
  at the prompt's positions to the input, midpoint rule over ``steps`` points,
  batched (``steps`` forward and backward rows); the scores sum to
  ``f(x) - f(baseline)`` up to the quadrature error;
- ``occlusion``: leave one token out, ``f(x) - f(x without token i)``, the token
  replaced by a neutral one (``erase="replace"``) or dropped (``"drop"``); one
  batched pass over ``n`` rows.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import torch

from ..core.errors import AttnlensError
from .registry import AttributionMethod, register
from .tokens import BATCH, Target, logprob_of, model_device, target_logprob

logger = logging.getLogger(__name__)

ERASE_MODES = ("replace", "drop")


def neutral_token(model: Any) -> int:
    """The token that stands for an erased one: a single space if it is one token, else pad, eos or 0."""
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is not None:
        try:
            space = tokenizer(" ", add_special_tokens=False)["input_ids"]
        except Exception:  # noqa: BLE001  (a tokenizer without plain calls)
            space = []
        if len(space) == 1:
            return int(space[0])
        for name in ("pad_token_id", "eos_token_id"):
            value = getattr(tokenizer, name, None)
            if isinstance(value, int):
                return value
    return 0


def erased(prompt: list[int], positions: Any, *, erase: str, neutral: int) -> list[int]:
    """``prompt`` with ``positions`` erased: replaced by ``neutral`` or dropped."""
    gone = set(int(p) for p in positions)
    if erase == "replace":
        return [neutral if i in gone else t for i, t in enumerate(prompt)]
    if erase == "drop":
        return [t for i, t in enumerate(prompt) if i not in gone]
    raise AttnlensError(f"erase must be one of {', '.join(ERASE_MODES)}, got {erase!r}")


# ----------------------------------------------------------------------------- attention


class AttentionMethod(AttributionMethod):
    """The attention the target positions pay to each prompt token, heads averaged."""

    name = "attention"
    help = "raw attention of the target position to each token, heads averaged, last layer"
    all_layers = False
    norm = False

    def token_scores(self, model: Any, target: Target) -> torch.Tensor:
        n_layers, n_heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
        layers = range(n_layers) if self.all_layers else [n_layers - 1]
        positions = torch.tensor(target.positions)
        n = target.n_prompt
        per_layer: list[torch.Tensor] = []
        values: dict[int, torch.Tensor] = {}

        def keep_v(v: torch.Tensor, hook: Any, *, layer: int) -> None:
            values[layer] = v[0].detach()

        def keep(pattern: torch.Tensor, hook: Any, *, layer: int) -> None:
            a = pattern[0, :, positions.to(pattern.device), :n].double()  # [heads, T, n]
            if not self.norm:
                per_layer.append(a.mean(0).mean(0).cpu())
                return
            v = values.pop(layer, None)
            if v is None:
                raise AttnlensError(f"{self.name}: layer {layer} fired no hook_v before its pattern")
            if v.shape[1] != n_heads:  # grouped-query attention: each key/value head serves n_heads / n_kv heads
                v = v.repeat_interleave(n_heads // v.shape[1], dim=1)
            w_o = model.blocks[layer].attn.W_O.detach().double()  # [heads, d_head, d_model]
            fx = torch.einsum("jhd,hde->jhe", v[:n].double(), w_o)  # [n, heads, d_model]
            mixed = torch.einsum("htj,jhe->tje", a, fx)  # [T, n, d_model]
            per_layer.append(mixed.norm(dim=-1).mean(0).cpu())

        hooks = [(f"blocks.{layer}.attn.hook_pattern", partial(keep, layer=layer)) for layer in layers]
        if self.norm:
            hooks += [(f"blocks.{layer}.attn.hook_v", partial(keep_v, layer=layer)) for layer in layers]
        with torch.no_grad():
            model.run_with_hooks(target.row.to(model_device(model)), fwd_hooks=hooks, return_type=None)
        if len(per_layer) != len(layers):
            raise AttnlensError(f"{self.name}: the model fired {len(per_layer)} attention patterns, expected "
                                f"{len(layers)}")
        return torch.stack(per_layer).mean(0)


class AttentionAllMethod(AttentionMethod):
    name = "attention_all"
    help = "raw attention of the target position to each token, heads and all layers averaged"
    all_layers = True


class AttentionNormMethod(AttentionMethod):
    name = "attention_norm"
    help = "attention norm (Kobayashi et al. 2020): ||sum_h A_h f_h(x_j)|| through W_O, last layer"
    norm = True


class AttentionNormAllMethod(AttentionMethod):
    name = "attention_norm_all"
    help = "attention norm (Kobayashi et al. 2020), averaged over all layers"
    norm = True
    all_layers = True


# ----------------------------------------------------------------------------- gradients


def embedding_gradients(model: Any, target: Target, alphas: torch.Tensor, *, batch: int = BATCH,
                        need_grad: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scale the prompt's input embeddings by each ``alpha`` (0: a zero baseline, 1: the input).

    Returns ``(f, grads, x)``: the target's log-probability per alpha ``[k]``, its gradient
    with respect to the prompt's (scaled) embeddings ``[k, n, d_model]`` (empty without
    ``need_grad``) and the prompt's embeddings ``[n, d_model]``.
    """
    device = model_device(model)
    row = target.row.to(device)
    n = target.n_prompt
    fs, grads, seen = [], [], {}
    for lo in range(0, len(alphas), batch):
        chunk = alphas[lo:lo + batch]
        leaf: dict[str, torch.Tensor] = {}

        def scale(emb: torch.Tensor, hook: Any, *, chunk: torch.Tensor = chunk) -> torch.Tensor:
            x = emb[:1].detach()
            seen["x"] = x[0, :n]
            a = chunk.to(device=x.device, dtype=x.dtype)[:, None, None]
            mixed = x.expand(len(chunk), -1, -1).clone()
            mixed[:, :n] = a * x[:, :n]
            mixed.requires_grad_(need_grad)
            leaf["x"] = mixed
            return mixed

        with torch.enable_grad() if need_grad else torch.no_grad():
            logits = model.run_with_hooks(row.expand(len(chunk), -1), fwd_hooks=[("hook_embed", scale)],
                                          return_type="logits")
            if "x" not in leaf:
                raise AttnlensError("the model fired no hook_embed: gradient methods need it")
            f = logprob_of(logits, target.target, [n - 1] * len(chunk))
            if need_grad:
                (g,) = torch.autograd.grad(f.sum(), leaf["x"])
                grads.append(g[:, :n].detach().double().cpu())
        fs.append(f.detach().double().cpu())
    empty = torch.empty(0)
    return torch.cat(fs), (torch.cat(grads) if grads else empty), seen["x"].double().cpu()


class GradXInputMethod(AttributionMethod):
    """``grad f . x`` per token: the first-order estimate of what zeroing its embedding changes."""

    name = "grad_x_input"
    help = "gradient x input: the target log-prob's gradient at each token's embedding, dotted with it"

    def token_scores(self, model: Any, target: Target) -> torch.Tensor:
        _, grads, x = embedding_gradients(model, target, torch.ones(1))
        return (grads[0] * x).sum(-1)


class IntegratedGradientsMethod(AttributionMethod):
    """Integrated gradients from a zero embedding, midpoint rule, ``steps`` rows batched."""

    name = "integrated_gradients"
    help = "integrated gradients (zero-embedding baseline, midpoint rule, steps batched)"
    steps = 32

    def token_scores(self, model: Any, target: Target, *, steps: int | None = None) -> torch.Tensor:
        steps = self.steps if steps is None else steps
        if not isinstance(steps, int) or steps < 1:
            raise AttnlensError(f"integrated_gradients: steps must be a positive integer, got {steps!r}")
        alphas = (torch.arange(steps, dtype=torch.float64) + 0.5) / steps
        _, grads, x = embedding_gradients(model, target, alphas)
        return (grads.mean(0) * x).sum(-1)


# ----------------------------------------------------------------------------- occlusion


class OcclusionMethod(AttributionMethod):
    """Leave one token out: how much the target's log-probability falls without it."""

    name = "occlusion"
    help = "occlusion: the fall of the target's log-prob when each token is replaced by a neutral token"
    erase = "replace"

    def token_scores(self, model: Any, target: Target, *, erase: str | None = None) -> torch.Tensor:
        erase = self.erase if erase is None else erase
        neutral = neutral_token(model)
        rows = [target.prompt] + [erased(target.prompt, [i], erase=erase, neutral=neutral)
                                  for i in range(target.n_prompt)]
        if erase == "drop" and target.n_prompt == 1:
            raise AttnlensError("occlusion by dropping needs a prompt of at least two tokens")
        f = target_logprob(model, rows, target.target)
        return f[0] - f[1:]


for _method in (AttentionMethod, AttentionAllMethod, AttentionNormMethod, AttentionNormAllMethod, GradXInputMethod,
                IntegratedGradientsMethod, OcclusionMethod):
    register(_method())
