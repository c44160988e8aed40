"""AttnLRP (Achtibat et al., 2024): layer-wise relevance propagation through attention, on TransformerLens hooks.

LRP explains the target's **logit** (summed over a continuation's tokens): the
relevance of a prompt token is ``x . g`` at its input embedding ``x``, where ``g``
is the gradient of the logit with each layer's backward pass replaced by its LRP
rule (the gradient x input form of the rules, as the authors' ``lxt`` package
computes them):

- linear layers (the projections, the unembedding): the epsilon rule, which in
  this form is the plain gradient;
- normalisation (RMSNorm, LayerNorm): the identity rule, the norm's scale held
  constant (no gradient through the variance);
- the element-wise activation of the MLP: the identity rule, gradient
  ``act(x) / x``;
- products of two inputs (``q . k``, ``pattern @ v``, a gated MLP's
  ``act(gate) * up``): the uniform rule, half the relevance to each input; so
  the gradient reaching ``q`` and ``k`` is divided by 4, ``v``'s by 2;
- softmax: its own gradient (AttnLRP's softmax rule in this form).

``variant="cp"`` is CP-LRP (Ali et al., 2022) instead: no relevance through the
attention pattern (``q`` and ``k`` get no gradient), all of it through the
values, and none through the gate of a gated MLP. Without biases (LLaMA-like
models) every CP-LRP rule conserves relevance, so its token scores sum to the
logit; AttnLRP's softmax rule does not conserve it exactly.

The rules are applied with forward hooks that keep every value and change only
what flows back: one forward and one backward pass. Models: LLaMA-like
(RMSNorm, gated MLP) and GPT-2-like (LayerNorm, plain MLP) TransformerLens
bridges and HookedTransformers whose norms and MLPs fire the hooks used here.
"""

from __future__ import annotations

from typing import Any

import torch

from ..core._internals import original_component
from ..core.errors import AttnlensError
from .registry import AttributionMethod, register
from .tokens import Target, model_device

VARIANTS = ("attnlrp", "cp")


def _keep_value(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """``old``'s value with ``new``'s gradient: ``old.detach() + (new - new.detach())``."""
    return old.detach() + (new - new.detach())


def _scaled_grad(x: torch.Tensor, factor: float) -> torch.Tensor:
    """``x``'s value, its gradient multiplied by ``factor``."""
    return x.detach() + factor * (x - x.detach())


def _norm_parts(component: Any) -> tuple[str, torch.Tensor | None, torch.Tensor | None, float]:
    """(kind, weight, bias, eps) of a normalisation component (a bridge's wrapped module or the module)."""
    module = original_component(component)
    module = module if module is not None else component
    name = type(module).__name__.lower()
    weight = getattr(module, "weight", None)
    if weight is None:
        weight = getattr(module, "w", None)
    bias = getattr(module, "bias", None)
    if bias is None:
        bias = getattr(module, "b", None)
    eps = getattr(module, "variance_epsilon", None)
    if eps is None:
        eps = getattr(module, "eps", None)
    if eps is None:
        eps = getattr(getattr(module, "cfg", None), "eps", 1e-5)
    if "rms" in name:
        if weight is not None and "gemma" in name:  # Gemma's RMSNorm scales by 1 + weight
            weight = 1.0 + weight
        return "rms", weight, None, float(eps)
    if "layernorm" in name or "layer_norm" in name:
        return "layer", weight, bias, float(eps)
    raise AttnlensError(f"attnlrp: no identity rule for the normalisation {type(module).__name__}")


def _norm_rule(component: Any):
    kind, weight, bias, eps = _norm_parts(component)
    seen: dict[str, torch.Tensor] = {}

    def keep_in(x: torch.Tensor, hook: Any) -> None:
        seen["x"] = x

    def out(y: torch.Tensor, hook: Any) -> torch.Tensor:
        x = seen.pop("x").float()
        if kind == "rms":
            scale = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps).detach()
            lin = x * scale
        else:
            centred = x - x.mean(-1, keepdim=True)
            lin = centred / torch.sqrt(centred.pow(2).mean(-1, keepdim=True) + eps).detach()
        if weight is not None:
            lin = lin * weight.detach().float()
        return _keep_value(lin.to(y.dtype), y)

    return keep_in, out


def _hook_names(model: Any) -> set[str]:
    return set(getattr(model, "hook_dict", {}) or {})


class AttnLRPMethod(AttributionMethod):
    """AttnLRP relevance of each prompt token toward the target's logit (see the module docstring)."""

    name = "attnlrp"
    help = "AttnLRP (Achtibat et al. 2024): LRP rules through attention, relevance of each token toward the logit"

    def __init__(self, variant: str = "attnlrp") -> None:
        if variant not in VARIANTS:
            raise AttnlensError(f"attnlrp: variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        self.variant = variant
        if variant == "cp":
            self.name = "cp_lrp"
            self.help = "CP-LRP (Ali et al. 2022): LRP with no relevance through the attention pattern"

    # ------------------------------------------------------------------------- the hooks

    def hooks(self, model: Any) -> list[tuple[str, Any]]:
        """The forward hooks that put the LRP rules into the backward pass."""
        names = _hook_names(model)
        cp = self.variant == "cp"
        out: list[tuple[str, Any]] = []

        def need(name: str) -> str:
            if names and name not in names:
                raise AttnlensError(f"attnlrp: the model has no hook {name!r}")
            return name

        def add_norm(prefix: str, component: Any) -> None:
            keep_in, rule = _norm_rule(component)
            out.extend([(need(f"{prefix}.hook_in"), keep_in), (need(f"{prefix}.hook_out"), rule)])

        qk = 0.0 if cp else 0.25
        v = 1.0 if cp else 0.5
        for layer, block in enumerate(model.blocks):
            p = f"blocks.{layer}"
            add_norm(f"{p}.ln1", block.ln1)
            add_norm(f"{p}.ln2", block.ln2)
            for name, factor in (("q", qk), ("k", qk), ("v", v)):
                hook = f"{p}.attn.{name}.hook_out" if f"{p}.attn.{name}.hook_out" in names else f"{p}.attn.hook_{name}"
                out.append((need(hook), lambda x, hook, f=factor: _scaled_grad(x, f)))
            out.extend(self._mlp_hooks(block.mlp, p, names, need, cp))
        add_norm("ln_final", model.ln_final)
        return out

    def _mlp_hooks(self, mlp: Any, p: str, names: set[str], need: Any, cp: bool) -> list[tuple[str, Any]]:
        module = original_component(mlp)
        module = module if module is not None else mlp
        act = getattr(module, "act_fn", None) or getattr(module, "act", None)
        if act is None:
            raise AttnlensError(f"attnlrp: {p}.mlp has no activation function to read")
        seen: dict[str, torch.Tensor] = {}
        gated = f"{p}.mlp.gate.hook_out" in names or hasattr(mlp, "gate") or hasattr(module, "gate_proj")
        if gated:
            gate_hook = f"{p}.mlp.gate.hook_out" if f"{p}.mlp.gate.hook_out" in names else f"{p}.mlp.hook_pre"
            up_hook = f"{p}.mlp.in.hook_out" if f"{p}.mlp.in.hook_out" in names else f"{p}.mlp.hook_pre_linear"
            post_hook = f"{p}.mlp.out.hook_in" if f"{p}.mlp.out.hook_in" in names else f"{p}.mlp.hook_post"

            def keep(x: torch.Tensor, hook: Any, *, key: str) -> None:
                seen[key] = x

            def product(h: torch.Tensor, hook: Any) -> torch.Tensor:
                g, u = seen.pop("gate"), seen.pop("up")
                a = act(g)
                if cp:  # CP-LRP: the gate is held constant, all the relevance goes to the up projection
                    new = a.detach() * u
                else:  # identity rule on the activation, then the uniform rule on the product
                    ratio = (a / (g + 1e-10)).detach()
                    new = 0.5 * ((g * ratio) * u.detach() + a.detach() * u)
                return _keep_value(new.to(h.dtype), h)

            return [(need(gate_hook), lambda x, hook: keep(x, hook, key="gate")),
                    (need(up_hook), lambda x, hook: keep(x, hook, key="up")), (need(post_hook), product)]
        pre_hook, post_hook = need(f"{p}.mlp.hook_pre"), need(f"{p}.mlp.hook_post")

        def keep_pre(x: torch.Tensor, hook: Any) -> None:
            seen["pre"] = x

        def identity(h: torch.Tensor, hook: Any) -> torch.Tensor:  # identity rule on the activation
            x = seen.pop("pre")
            return _keep_value(x * (h / (x + 1e-10)).detach(), h)

        return [(pre_hook, keep_pre), (post_hook, identity)]

    # ------------------------------------------------------------------------- the scores

    def relevance(self, model: Any, target: Target) -> tuple[torch.Tensor, float]:
        """``(scores [n_prompt], logit)``: each prompt token's relevance and the explained logit."""
        device = model_device(model)
        row = target.row.to(device)
        n, k = target.n_prompt, len(target.target)
        leaf: dict[str, torch.Tensor] = {}

        def embed(emb: torch.Tensor, hook: Any) -> torch.Tensor:
            x = emb.detach().clone().requires_grad_(True)
            leaf["x"] = x
            return x

        with torch.enable_grad():
            logits = model.run_with_hooks(row, fwd_hooks=[("hook_embed", embed), *self.hooks(model)],
                                          return_type="logits")
            if "x" not in leaf:
                raise AttnlensError("the model fired no hook_embed: attnlrp needs it")
            picked = logits[0, n - 1:n - 1 + k].float().gather(-1, torch.tensor(target.target, device=device)[:, None])
            logit = picked.sum()
            (g,) = torch.autograd.grad(logit, leaf["x"])
        scores = (g[0, :n].double() * leaf["x"][0, :n].detach().double()).sum(-1)
        return scores.cpu(), float(logit.detach())

    def token_scores(self, model: Any, target: Target) -> torch.Tensor:
        return self.relevance(model, target)[0]


register(AttnLRPMethod())

__all__ = ["AttnLRPMethod", "VARIANTS"]
