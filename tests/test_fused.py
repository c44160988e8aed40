"""Fused long-context paths against the reference: steering folded into sdpa, Influence without patterns."""

from __future__ import annotations

import pytest
import torch

import attnlens as al
from attnlens.runtime import fused
from attnlens.attribution import fused_influence, trace_influence
from attnlens.runtime.direct import direct
from attnlens.runtime.generate import generate_batch
from attnlens.steering.bias import BiasPlan, apply_bias
from attnlens.steering.pasta import pasta_plan
from test_direct import tiny_of

ARCHS = ["llama", "mistral", "qwen2", "qwen3", "gemma", "phi3", "gpt2"]
TOL = 1e-4


@pytest.fixture(scope="module")
def tiny_models(tokenizer):
    return {arch: tiny_of(arch, tokenizer) for arch in ARCHS}


@pytest.fixture
def fused_calls(monkeypatch):
    """Counts the fused kernel calls."""
    calls = []
    original = fused.fused_sdpa

    def spy(*args, **kwargs):
        calls.append(kwargs.get("bias") is not None)
        return original(*args, **kwargs)

    monkeypatch.setattr(fused, "fused_sdpa", spy)
    return calls


def _plans(model, seq):
    guide = al.guide_plan(model, [(2, 6)], delta=2.0)
    steer = pasta_plan(model, spans=[(3, 7)], head_config={0: [1, 2], model.cfg.n_layers - 1: [0]}, alpha=0.05)
    open_ended = BiasPlan.for_model(model).add(seq - 3, None, -1.5, layers=[0], heads=[3])
    return [guide, steer, open_ended]


def _logprobs(model, tokens, plans, enabled):
    from contextlib import ExitStack

    with ExitStack() as stack, torch.no_grad(), fused.fused_attention(enabled):
        for plan in plans:
            stack.enter_context(apply_bias(model, plan))
        hf = stack.enter_context(direct(model))
        return torch.log_softmax(hf(tokens).logits.float(), -1)


@pytest.mark.parametrize("arch", ARCHS)
def test_steered_logprobs_equal_the_reference(tiny_models, arch, fused_calls):
    model = tiny_models[arch]
    tokens = torch.randint(3, 1000, (1, 40), generator=torch.Generator().manual_seed(1))
    plans = _plans(model, tokens.shape[1])
    reference = _logprobs(model, tokens, plans, False)
    assert not fused_calls
    got = _logprobs(model, tokens, plans, True)
    assert len(fused_calls) == model.cfg.n_layers and all(fused_calls)
    assert (got - reference).abs().max() < TOL
    plain = _logprobs(model, tokens, [], True)
    assert (plain - reference).abs().max() > 1e-2  # the plans acted


@pytest.mark.parametrize("arch", ARCHS)
def test_influence_equals_the_reference(tiny_models, arch, fused_calls):
    model = tiny_models[arch]
    tokens = torch.randint(3, 1000, (1, 30), generator=torch.Generator().manual_seed(2))
    spans = [(0, 4), (10, 13)]
    assert fused_influence.available(model)
    for use_values in (False, True):
        for per_head in (False, True):
            kwargs = dict(methods=("influence", "rollout"), use_values=use_values, per_head=per_head)
            with fused.fused_attention(False):
                reference = trace_influence(model, tokens, spans, **kwargs)
            got = trace_influence(model, tokens, spans, **kwargs)
            for method in ("influence", "rollout"):
                assert (got[method] - reference[method]).abs().max() < TOL, (method, use_values, per_head)
    assert fused_calls  # the fused pass ran
    with al.guide(model, [(0, 4)], delta=2.0):  # steered, in the same kernel call
        with fused.fused_attention(False):
            reference = al.influence(model, tokens, span=(0, 4))
        got = al.influence(model, tokens, span=(0, 4))
    assert (got - reference).abs().max() < TOL


def test_padded_influence_equals_the_reference(tiny):
    tokens = torch.randint(3, 1000, (1, 20), generator=torch.Generator().manual_seed(3))
    mask = torch.ones(20, dtype=torch.long)
    mask[:5] = 0
    with fused.fused_attention(False):
        reference = al.influence(tiny, tokens, span=(6, 9), attention_mask=mask)
    got = al.influence(tiny, tokens, span=(6, 9), attention_mask=mask)
    assert (got - reference).abs().max() < TOL


def test_user_hooks_see_the_materialised_tensors(tiny, fused_calls):
    seen = []
    tokens = torch.randint(3, 1000, (1, 12), generator=torch.Generator().manual_seed(4))
    hooks = [("blocks.1.attn.hook_pattern", lambda t, hook: seen.append(t.shape))]
    with torch.no_grad(), al.guide(tiny, [(1, 4)], delta=2.0), tiny.hooks(fwd_hooks=hooks), direct(tiny) as hf:
        hf(tokens)
    assert seen == [(1, 4, 12, 12)]
    assert len(fused_calls) == tiny.cfg.n_layers - 1  # every other layer ran fused
    with tiny.hooks(fwd_hooks=hooks):
        assert not fused_influence.available(tiny)
        al.influence(tiny, tokens, span=(1, 4))  # the reference path, through the hook
    assert len(seen) == 2


def test_a_user_score_hook_keeps_the_reference(tiny, fused_calls):
    tokens = torch.randint(3, 1000, (1, 12), generator=torch.Generator().manual_seed(5))
    with torch.no_grad(), al.guide(tiny, [(1, 4)], delta=2.0):
        with tiny.hooks(fwd_hooks=[("blocks.0.attn.hook_attn_scores", lambda t, hook: t * 1.0)]), direct(tiny) as hf:
            hf(tokens)
    assert len(fused_calls) == tiny.cfg.n_layers - 1


def test_generation_equals_the_reference(tokenizer):
    from conftest import make_tiny_bridge

    model = make_tiny_bridge(tokenizer, seed=4)
    rows = [[1, 5, 9, 200, 17, 3000, 44], [1, 80, 81, 82, 83, 84, 85, 86, 87, 88]]  # left padding
    plans = [pasta_plan(model, spans=[[(1, 3)], [(2, 5)]], head_config={0: [1, 2], 2: [3]}, alpha=0.05),
             al.guide_plan(model, [[(1, 4, 6.0)], [(2, 6, 6.0)]])]
    with fused.fused_attention(False):
        reference = generate_batch(model, rows, plans, max_new_tokens=8, stop_at_eos=False, direct=True)
    assert generate_batch(model, rows, plans, max_new_tokens=8, stop_at_eos=False, direct=True) == reference


def test_cached_steps_equal_the_reference(tiny):
    """Decoding steps: generated keys unbiased, open-ended terms to the end of the prompt."""
    tokens = torch.randint(3, 1000, (1, 16), generator=torch.Generator().manual_seed(6))
    plans = _plans(tiny, 12)
    out = {}
    for enabled in (False, True):
        with torch.no_grad(), fused.fused_attention(enabled):
            from contextlib import ExitStack

            with ExitStack() as stack:
                for plan in plans:
                    stack.enter_context(apply_bias(tiny, plan))
                hf = stack.enter_context(direct(tiny))
                first = hf(tokens[:, :12], use_cache=True)
                cache, steps = first.past_key_values, [first.logits[:, -1]]
                for i in range(12, 16):
                    step = hf(tokens[:, i : i + 1], past_key_values=cache, use_cache=True)
                    cache = step.past_key_values
                    steps.append(step.logits[:, -1])
        out[enabled] = torch.log_softmax(torch.cat(steps), -1)
    assert (out[True] - out[False]).abs().max() < TOL


@pytest.mark.embedded
def test_embedded_model_equals_the_reference(embedded):
    tokens = torch.randint(3, 40000, (1, 200), generator=torch.Generator().manual_seed(7))
    plans = [al.guide_plan(embedded, [(20, 40)], delta=2.0),
             pasta_plan(embedded, spans=[(50, 60)], head_config={3: [0, 4], 10: [2, 7, 8]}, alpha=0.01)]
    reference = _logprobs(embedded, tokens, plans, False)
    fused_out = _logprobs(embedded, tokens, plans, True)
    # 30 layers of float32 through two kernels: the whole-vocabulary log-probabilities agree to a few 1e-4
    # (the rarest tokens move most; measured 2.8e-4 on an AMD EPYC), the probabilities to 1e-5
    assert (fused_out - reference).abs().max() < 1e-3
    assert (fused_out.exp() - reference.exp()).abs().max() < TOL / 10
    assert torch.equal(fused_out.argmax(-1), reference.argmax(-1))
    kwargs = dict(methods=("influence", "rollout"))
    with al.guide(embedded, [(20, 40)], delta=2.0):
        with fused.fused_attention(False):
            ref = trace_influence(embedded, tokens, [(20, 40), (100, 110)], **kwargs)
        got = trace_influence(embedded, tokens, [(20, 40), (100, 110)], **kwargs)
    for method in ("influence", "rollout"):
        assert (got[method] - ref[method]).abs().max() < TOL


def test_needle_contexts_fit_the_window(tokenizer):
    from attnlens.experiments.needle import NeedleConfig, NeedleStudy

    study = NeedleStudy()
    config = NeedleConfig(out="unused", context_lengths=[1024, 8192], depths=[0, 100], limit=1, max_new_tokens=12)
    data = study.load_data(config)
    study.window = 8192
    items = study.items(data, config, tokenizer)
    by_length = {i.groups["length"]: i.data["context_tokens"] for i in items}
    assert 1000 <= by_length[1024] <= 1050  # under the window: as asked
    assert 7800 <= by_length[8192] <= 8192 - 12 - 64  # cut so that the prompt and the new tokens fit


def test_transformers_capture_hooks_keep_the_direct_run(tokenizer):
    """transformers installs its output-capturing hooks once, on first use: they are part of the model."""
    from transformers.utils.output_capturing import maybe_install_capturing_hooks

    from attnlens.runtime.direct import direct_reason
    from conftest import make_tiny_bridge

    model = make_tiny_bridge(tokenizer, seed=5)
    maybe_install_capturing_hooks(model.original_model)
    assert model.blocks[0]._modules["_original_component"]._forward_hooks
    assert direct_reason(model) is None
    assert fused_influence.available(model)


def test_fused_state_is_scoped(tiny, fused_calls):
    """The routes a fused pass installs are gone after it; the on/off switch is local to a thread or task."""
    import threading

    tokens = torch.randint(3, 1000, (1, 12), generator=torch.Generator().manual_seed(5))
    al.influence(tiny, tokens, span=(2, 4))
    assert fused_calls and len(fused._columns) == 0
    seen = []
    with fused.fused_attention(False):
        thread = threading.Thread(target=lambda: seen.append(fused.is_enabled()))
        thread.start()
        thread.join()
        assert not fused.is_enabled()
    assert seen == [True] and fused.is_enabled()


def test_widened_heads_are_padded_to_a_multiple_of_8(tiny_models, monkeypatch):
    """The folded bias column (and influence's chains) widen the head; the call is padded to a multiple
    of 8 with zero columns, which leave the outputs unchanged."""
    assert fused.padded_width(64, 0) == 64 and fused.padded_width(64, 1) == 72
    assert fused.padded_width(256, 3) == 264 and fused.padded_width(7, 1) == 8 and fused.padded_width(8, 9) == 24
    model = tiny_models["llama"]  # head size 8: one bias column makes 9, padded to 16
    tokens = torch.randint(3, 1000, (1, 24), generator=torch.Generator().manual_seed(5))
    widths = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(query, key, value, **kwargs):
        widths.append((query.shape[-1], key.shape[-1], value.shape[-1]))
        return sdpa(query, key, value, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    plans = _plans(model, tokens.shape[1])
    padded = _logprobs(model, tokens, plans, True)
    assert widths and all(w == (16, 16, 16) for w in widths), widths
    padded_influence = trace_influence(model, tokens, [(0, 4), (10, 13)], methods=("influence", "rollout"))
    assert all(w[0] % 8 == 0 for w in widths)
    monkeypatch.setattr(fused, "HEAD_MULTIPLE", 1)  # the unpadded call, 9 wide
    widths.clear()
    unpadded = _logprobs(model, tokens, plans, True)
    assert widths and all(w == (9, 9, 9) for w in widths), widths
    unpadded_influence = trace_influence(model, tokens, [(0, 4), (10, 13)], methods=("influence", "rollout"))
    assert (padded - unpadded).abs().max() < 1e-5
    for method in ("influence", "rollout"):
        assert (padded_influence[method] - unpadded_influence[method]).abs().max() < 1e-6
    with fused.fused_attention(False):
        reference = _logprobs(model, tokens, plans, False)
    assert (padded - reference).abs().max() < TOL


def test_float32_on_an_accelerator_repeats_grouped_keys_for_the_memory_efficient_kernel(tiny_models, monkeypatch):
    """On CUDA, float32 calls with grouped heads fall to the math kernel (the whole score matrix) unless keys
    and values are repeated to one per query head. The rule, and the repeated call's outputs, checked here;
    the kernel CUDA picks is listed by benchmarks/which_kernels.py (docs/steering.md)."""
    assert fused.dense_heads_needed(torch.device("cuda"), torch.float32)
    assert not fused.dense_heads_needed(torch.device("cuda"), torch.bfloat16)
    assert not fused.dense_heads_needed(torch.device("cpu"), torch.float32)
    model = tiny_models["llama"]  # 4 query heads over 2 key-value heads
    tokens = torch.randint(3, 1000, (1, 24), generator=torch.Generator().manual_seed(6))
    guide = [al.guide_plan(model, [(2, 6)], delta=2.0)]
    heads = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(query, key, value, **kwargs):
        heads.append((query.shape[1], key.shape[1], value.shape[1], kwargs.get("enable_gqa", False)))
        return sdpa(query, key, value, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    grouped = _logprobs(model, tokens, guide, True)
    grouped_influence = trace_influence(model, tokens, [(0, 4)], methods=("influence",))
    assert heads and all(h == (4, 2, 2, True) for h in heads), heads
    monkeypatch.setattr(fused, "dense_heads_needed", lambda device, dtype: True)  # as on CUDA in float32
    heads.clear()
    repeated = _logprobs(model, tokens, guide, True)
    repeated_influence = trace_influence(model, tokens, [(0, 4)], methods=("influence",))
    assert heads and all(h == (4, 4, 4, False) for h in heads), heads
    assert (grouped - repeated).abs().max() < 1e-5
    assert (grouped_influence["influence"] - repeated_influence["influence"]).abs().max() < 1e-6
