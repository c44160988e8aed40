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
- ``integrated_gradients``: Sundararajan et al. (2017), from a baseline (every
  prompt token replaced by the neutral token; or a zero embedding) to the
  input's embeddings, midpoint rule over ``steps`` points,
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
from .tokens import BATCH, Target, logprob_of, model_device, rows_per_pass, target_logprob

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


def embedding_gradients(model: Any, target: Target, alphas: torch.Tensor, *, baseline: str = "neutral",
                        batch: int = BATCH, need_grad: bool = True,
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Move the prompt's input embeddings from a baseline (alpha 0) to the input (alpha 1).

    ``baseline``: ``"neutral"`` (every prompt token replaced by :func:`neutral_token`) or
    ``"zero"`` (a zero embedding; with RMSNorm models the path then bends sharply near 0).
    Returns ``(f, grads, x, b)``: the target's log-probability per alpha ``[k]``, its gradient
    with respect to the prompt's embeddings on the path ``[k, n, d_model]`` (empty without
    ``need_grad``), the prompt's embeddings ``[n, d_model]`` and the baseline's.
    """
    if baseline not in ("neutral", "zero"):
        raise AttnlensError(f"baseline must be 'neutral' or 'zero', got {baseline!r}")
    device = model_device(model)
    row = target.row.to(device)
    n = target.n_prompt
    base_row = row.clone()
    base_row[0, :n] = neutral_token(model)
    fs, grads, seen = [], [], {}
    step = max(2, rows_per_pass(row.shape[1], batch))
    for lo in range(0, len(alphas), step):
        chunk = alphas[lo:lo + step]
        k = len(chunk)
        leaf: dict[str, torch.Tensor] = {}

        def mix(emb: torch.Tensor, hook: Any, *, chunk: torch.Tensor = chunk) -> torch.Tensor:
            # row 0 carries the input's embeddings, row 1 the baseline's (whatever hook_embed computes)
            x = emb[0].detach()
            b = emb[1].detach() if baseline == "neutral" else torch.zeros_like(x)
            seen["x"], seen["b"] = x[:n], b[:n]
            a = torch.ones(emb.shape[0], dtype=x.dtype, device=x.device)
            a[:k] = chunk.to(device=x.device, dtype=x.dtype)
            mixed = x.expand(emb.shape[0], -1, -1).clone()
            mixed[:, :n] = b[None, :n] + a[:, None, None] * (x[None, :n] - b[None, :n])
            mixed.requires_grad_(need_grad)
            leaf["x"] = mixed
            return mixed

        rows = torch.cat([row, base_row] + [row] * max(0, k - 2))
        with torch.enable_grad() if need_grad else torch.no_grad():
            logits = model.run_with_hooks(rows, fwd_hooks=[("hook_embed", mix)], return_type="logits")
            if "x" not in leaf:
                raise AttnlensError("the model fired no hook_embed: gradient methods need it")
            f = logprob_of(logits[:k], target.target, [n - 1] * k)
            if need_grad:
                (g,) = torch.autograd.grad(f.sum(), leaf["x"])
                grads.append(g[:k, :n].detach().double().cpu())
        fs.append(f.detach().double().cpu())
    return (torch.cat(fs), torch.cat(grads) if grads else torch.empty(0), seen["x"].double().cpu(),
            seen["b"].double().cpu())


class GradXInputMethod(AttributionMethod):
    """``grad f . x`` per token: the first-order estimate of what zeroing its embedding changes."""

    name = "grad_x_input"
    help = "gradient x input: the target log-prob's gradient at each token's embedding, dotted with it"

    def token_scores(self, model: Any, target: Target) -> torch.Tensor:
        _, grads, x, _ = embedding_gradients(model, target, torch.ones(1))
        return (grads[0] * x).sum(-1)


class IntegratedGradientsMethod(AttributionMethod):
    """Integrated gradients from the neutral-token baseline, midpoint rule, ``steps`` rows batched."""

    name = "integrated_gradients"
    help = "integrated gradients (neutral-token baseline, midpoint rule, steps batched)"
    steps = 32

    def token_scores(self, model: Any, target: Target, *, steps: int | None = None,
                     baseline: str = "neutral") -> torch.Tensor:
        steps = self.steps if steps is None else steps
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise AttnlensError(f"integrated_gradients: steps must be a positive integer, got {steps!r}")
        alphas = (torch.arange(steps, dtype=torch.float64) + 0.5) / steps
        _, grads, x, b = embedding_gradients(model, target, alphas, baseline=baseline)
        return (grads.mean(0) * (x - b)).sum(-1)


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
