"""SpotLight on the fused path (runtime.fused_edits) against the reference path that forms every pattern."""

from __future__ import annotations

from contextlib import ExitStack

import pytest
import torch

import attnlens as al
from attnlens import steering
from attnlens.api import chain
from attnlens.runtime import fused, fused_edits
from attnlens.runtime.direct import direct
from attnlens.runtime.generate import generate_batch
from test_direct import tiny_of

ARCHS = ["llama", "qwen2", "gpt2"]
TEXTS = ["<!-> Answer in French. <-!> The cat sat on the mat and looked at the dog for a long time",
         "The weather was cold, so <!-> be brief <-!> and tell me about dogs"]


@pytest.fixture(scope="module")
def models(tokenizer):
    return {arch: tiny_of(arch, tokenizer) for arch in ARCHS}


@pytest.fixture
def span_calls(monkeypatch):
    """Counts the fused span-edit calls."""
    calls = []
    original = fused.span_edit_attention

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(fused, "span_edit_attention", spy)
    return calls


def _logprobs(model, ids, steerings, enabled):
    with ExitStack() as stack, torch.no_grad(), fused.fused_attention(enabled):
        for s in steerings:
            stack.enter_context(steering.install(model, s))
        hf = stack.enter_context(direct(model))
        return torch.log_softmax(hf(ids).logits.float(), -1)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("target", [0.7, 0.95])
def test_fused_spotlight_equals_the_reference(models, arch, target, span_calls):
    model = models[arch]
    prompt = al.prepare(model.tokenizer, TEXTS[0])
    edit, = chain.plans_for(model, [prompt], steer={"spotlight": {"target": target}})
    assert edit.span_factor is not None
    ids = torch.tensor([list(prompt.input_ids)])
    reference = _logprobs(model, ids, [edit], False)
    assert not span_calls
    got = _logprobs(model, ids, [edit], True)
    assert len(span_calls) == model.cfg.n_layers  # every layer ran fused, with no pattern
    assert (got - reference).abs().max() < 1e-4
    plain = _logprobs(model, ids, [], True)
    acted = (plain - reference).abs().max()
    assert acted > 20 * (got - reference).abs().max(), acted  # the edit acted, far beyond the paths' difference


def test_fused_spotlight_with_guide_padding_and_the_cache(models, span_calls):
    model = models["llama"]  # 2 key-value heads for 4 heads: grouped queries
    prompts = [al.prepare(model.tokenizer, t) for t in TEXTS]
    rows = [list(p.input_ids) for p in prompts]
    plans = chain.plans_for(model, prompts, steer={"spotlight": {"target": 0.8}})
    with fused.fused_attention(False):
        reference = generate_batch(model, rows, plans, max_new_tokens=5)
    assert not span_calls
    got = generate_batch(model, rows, plans, max_new_tokens=5)
    assert span_calls  # prefill and decoding steps ran fused
    assert got == reference
    # with a GUIDE bias on the same layers: the span's share is measured after the bias, on both paths
    guide = al.guide_plan(model, [(1, 3)], delta=1.5)
    ids = torch.tensor([rows[0]])
    edit = chain.plans_for(model, prompts[:1], steer={"spotlight": {"target": 0.8}})[0]
    reference = _logprobs(model, ids, [guide, edit], False)
    got = _logprobs(model, ids, [guide, edit], True)
    assert (got - reference).abs().max() < 1e-4


def test_a_pattern_hook_without_a_factor_keeps_the_reference_path(models, span_calls):
    model = models["llama"]
    prompt = al.prepare(model.tokenizer, TEXTS[0])
    edit, = chain.plans_for(model, [prompt], steer={"spotlight": {"target": 0.8}})
    ids = torch.tensor([list(prompt.input_ids)])
    seen = []
    with model.hooks(fwd_hooks=[("blocks.0.attn.hook_pattern", lambda t, hook: seen.append(t.shape))]):
        got = _logprobs(model, ids, [edit], True)
    assert seen and len(span_calls) == model.cfg.n_layers - 1  # layer 0 materialised its pattern for the hook
    reference = _logprobs(model, ids, [edit], False)
    assert (got - reference).abs().max() < 1e-4
    assert fused_edits.pattern_edits(None) == []


def test_the_spotlight_bias_is_the_same_in_numpy_and_in_torch(monkeypatch):
    from attnlens.steering import spotlight_method as sm

    shares = torch.rand(3, 4, 6, generator=torch.Generator().manual_seed(0)) * 0.3
    seen = torch.ones(3, 6, dtype=torch.bool)
    seen[1, :2] = False
    seen[2] = False  # no query sees the span: nothing to lift
    small = sm.bias_from_shares(shares, seen, 0.4)
    monkeypatch.setattr(sm, "SMALL", 0)
    large = sm.bias_from_shares(shares, seen, 0.4)
    assert torch.allclose(small, large, atol=1e-5) and float(small[2]) == 0.0
    # the bias lifts the pooled share to the target, and not past it
    for row in (0, 1):
        mask = seen[row][None, :].expand(4, 6)
        after = sm._pooled_after(small[row : row + 1], shares[row : row + 1], mask[None])
        assert 0.4 - 1e-6 <= float(after) < 0.4 + 1e-4
