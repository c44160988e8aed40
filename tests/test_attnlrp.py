"""AttnLRP on TransformerLens hooks: conservation (CP-LRP), the rules re-derived on the raw Hugging Face model,
and the authors' lxt package where it is installed."""

from __future__ import annotations

import importlib.util
import os
import sys
import types

import pytest
import torch

import attnlens as al
from attnlens.attribution.attnlrp import AttnLRPMethod
from attnlens.attribution.tokens import make_target
from attnlens.core.errors import AttnlensError

from conftest import make_tiny_bridge, make_tiny_hf

TEXTS = ["The capital of France is Paris, and the capital of Italy is",
         "Once upon a time there was a small village near the"]


@pytest.fixture(scope="module")
def bridges(tokenizer):
    return {seed: make_tiny_bridge(tokenizer, seed=seed) for seed in (0, 1)}


def test_registered_and_runs(tiny):
    assert "attnlrp" in al.attribution.methods()
    record = al.attribute(tiny, TEXTS[0], method="attnlrp")
    assert record.method == "attnlrp" and len(record.scores) == len(record.tokens)
    assert torch.isfinite(torch.as_tensor(record.scores)).all()
    with pytest.raises(AttnlensError, match="variant"):
        AttnLRPMethod("nosuch")


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("text", TEXTS)
def test_cp_lrp_conserves_the_logit(bridges, seed, text):
    """Without biases every CP-LRP rule is conservative: the token relevances sum to the logit."""
    model = bridges[seed]
    target = make_target(model, text)
    scores, logit = AttnLRPMethod("cp").relevance(model, target)
    with torch.no_grad():
        direct = float(model(target.row, return_type="logits")[0, -1, target.target[0]])
    assert logit == pytest.approx(direct, rel=1e-6)
    assert float(scores.sum()) == pytest.approx(logit, rel=1e-5, abs=1e-6)
    # plain gradient x input of the logit does not conserve it: the rules are what make the sum come out
    grad = AttnLRPMethod("cp")
    grad.hooks = lambda model: []
    plain, _ = grad.relevance(model, target)
    assert abs(float(plain.sum()) - logit) > 1e-3


def _hand_derived(hf, ids, target_id):
    """The AttnLRP rules written on the Hugging Face modules themselves (module hooks, not TransformerLens'):
    RMSNorm's scale held constant, SiLU's gradient act(g) / g and half of each product's relevance to each
    factor, q and k gradients / 4 and v's / 2; relevance is embedding x modified gradient of the logit."""
    handles = []

    def norm(module, args, out):
        x = args[0].float()
        scale = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + module.variance_epsilon).detach()
        lin = (module.weight * (x * scale)).to(out.dtype)
        return out.detach() + lin - lin.detach()

    def mlp(module, args, out):
        x = args[0]
        g, u = module.gate_proj(x), module.up_proj(x)
        a = module.act_fn(g)
        slope = (a / (g + 1e-10)).detach()
        h = 0.5 * (g * slope * u.detach()) + 0.5 * (a.detach() * u)
        new = module.down_proj(h)
        return out.detach() + new - new.detach()

    def scaled(factor):
        return lambda module, args, out: out.detach() + factor * (out - out.detach())

    for module in hf.modules():
        name = type(module).__name__
        if name == "LlamaRMSNorm":
            handles.append(module.register_forward_hook(norm))
        elif name == "LlamaMLP":
            handles.append(module.register_forward_hook(mlp))
        elif name == "LlamaAttention":
            for proj, factor in (("q_proj", 0.25), ("k_proj", 0.25), ("v_proj", 0.5)):
                handles.append(getattr(module, proj).register_forward_hook(scaled(factor)))
    try:
        emb = hf.get_input_embeddings()(torch.tensor([ids])).detach().requires_grad_(True)
        logit = hf(inputs_embeds=emb).logits[0, -1, target_id]
        (g,) = torch.autograd.grad(logit, emb)
    finally:
        for h in handles:
            h.remove()
    return (g[0] * emb[0].detach()).sum(-1).double()


@pytest.mark.parametrize("seed", [0, 1])
def test_attnlrp_is_the_hand_derived_rules(tokenizer, bridges, seed):
    hf = make_tiny_hf(tokenizer, seed=seed)
    for text in TEXTS:
        target = make_target(bridges[seed], text)
        ours, _ = AttnLRPMethod().relevance(bridges[seed], target)
        theirs = _hand_derived(hf, target.prompt, target.target[0])
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)
        # and AttnLRP is neither CP-LRP nor plain gradient x input on these prompts
        cp, _ = AttnLRPMethod("cp").relevance(bridges[seed], target)
        assert not torch.allclose(ours, cp, rtol=1e-3, atol=1e-4)


def _lxt_patches():
    """lxt's AttnLRP patches (lxt/efficient/patches.py), imported without the package's heavier imports
    (torchvision, bitsandbytes); None when lxt is not installed. ATTNLENS_LXT_PATH: a folder holding it
    (``pip install --no-deps --target DIR lxt==2.1``)."""
    where = os.environ.get("ATTNLENS_LXT_PATH")
    if where and where not in sys.path:
        sys.path.insert(0, where)
    spec = importlib.util.find_spec("lxt")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = list(spec.submodule_search_locations)[0]
    saved = {k: sys.modules.get(k) for k in ("lxt", "lxt.efficient", "lxt.efficient.rules", "lxt.efficient.patches")}
    try:
        for name, path in (("lxt", root), ("lxt.efficient", os.path.join(root, "efficient"))):
            package = types.ModuleType(name)
            package.__path__ = [path]
            sys.modules[name] = package
        from lxt.efficient import patches  # noqa: PLC0415

        return patches
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def test_attnlrp_matches_lxt(tokenizer, bridges, monkeypatch):
    """On the same tiny LLaMA, lxt's patched Hugging Face model and attnlens' hooks give the same relevances."""
    patches = _lxt_patches()
    if patches is None:
        pytest.skip("lxt is not installed (it is not in the lock: it requires bitsandbytes and open_clip_torch)")
    from transformers.models.llama import modeling_llama

    monkeypatch.setattr(modeling_llama.LlamaMLP, "forward", patches.gated_mlp_forward)
    monkeypatch.setattr(modeling_llama.LlamaRMSNorm, "forward", patches.rms_norm_forward)
    # lxt 2.1's patch_attention rewrites ALL_ATTENTION_FUNCTIONS as a dict, which transformers 5 no longer
    # takes; the tiny model runs eager attention, so its wrapper goes on the eager function alone
    monkeypatch.setattr(modeling_llama, "eager_attention_forward",
                        patches.wrap_attention_forward(modeling_llama.eager_attention_forward))
    for seed in (0, 1):
        hf = make_tiny_hf(tokenizer, seed=seed)
        for text in TEXTS:
            target = make_target(bridges[seed], text)
            ours, _ = AttnLRPMethod().relevance(bridges[seed], target)
            emb = hf.get_input_embeddings()(torch.tensor([target.prompt])).detach().requires_grad_(True)
            logit = hf(inputs_embeds=emb).logits[0, -1, target.target[0]]
            (g,) = torch.autograd.grad(logit, emb)
            theirs = (g[0] * emb[0].detach()).sum(-1).double()
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)
