"""Gemma 2 (soft-capped scores) and Gemma 3 (sliding-window layers, query and key norms) in the direct and
fused runs, on tiny random models whose window (8 keys) is shorter than the prompts."""

from __future__ import annotations

from contextlib import ExitStack

import pytest
import torch

import attnlens as al
from attnlens.attribution import fused_influence, trace_influence
from attnlens.runtime import fused
from attnlens.runtime.direct import direct, direct_reason
from attnlens.runtime.generate import generate_batch
from attnlens.steering.bias import BiasPlan, apply_bias
from attnlens.steering.pasta import pasta_plan

WINDOW = 8
TOL = 1e-4


def tiny_gemma(model_type, tokenizer, *, window=WINDOW, softcap=None, seed=0):
    """A tiny random Gemma 2 or 3 bridge: layers sliding, full, sliding (window ``window``)."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformer_lens.model_bridge import TransformerBridge

    extra = {"attn_logit_softcapping": softcap, "final_logit_softcapping": None} if model_type == "gemma2" else {}
    config = AutoConfig.for_model(
        model_type, vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=256,
        sliding_window=window, layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        query_pre_attn_scalar=8, initializer_range=0.2, **extra)
    config._attn_implementation = "eager"
    config.architectures = ["Gemma2ForCausalLM" if model_type == "gemma2" else "Gemma3ForCausalLM"]
    torch.manual_seed(seed)
    hf = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # norms away from their initial value, so that q/k norms and sandwich norms act
        for name, param in hf.named_parameters():
            if "norm" in name:
                param.normal_(0.0, 0.5)
    return TransformerBridge.boot_transformers(f"tiny-{model_type}", hf_model=hf, tokenizer=tokenizer)


@pytest.fixture(scope="module")
def gemma3(tokenizer):
    return tiny_gemma("gemma3_text", tokenizer)


@pytest.fixture(scope="module")
def gemma2(tokenizer):
    return tiny_gemma("gemma2", tokenizer, softcap=1.5)


@pytest.fixture
def fused_calls(monkeypatch):
    calls = []
    original = fused.fused_sdpa

    def spy(*args, **kwargs):
        calls.append(args[4] is not None)  # whether the call had a mask (the sliding window's)
        return original(*args, **kwargs)

    monkeypatch.setattr(fused, "fused_sdpa", spy)
    return calls


def _tokens(n, seed):
    return torch.randint(3, 1000, (1, n), generator=torch.Generator().manual_seed(seed))


def _plans(model, seq):
    guide = al.guide_plan(model, [(2, 6)], delta=2.0)
    steer = pasta_plan(model, spans=[(3, 7)], head_config={0: [1, 2], 2: [0]}, alpha=0.05)
    open_ended = BiasPlan.for_model(model).add(seq - 3, None, -1.5, layers=[0], heads=[3])
    return [guide, steer, open_ended]


def _logprobs(model, tokens, plans, *, fused_on=True, run_direct=True):
    with ExitStack() as stack, torch.no_grad(), fused.fused_attention(fused_on):
        for plan in plans:
            stack.enter_context(apply_bias(model, plan))
        if run_direct:
            hf = stack.enter_context(direct(model))
            return torch.log_softmax(hf(tokens).logits.float(), -1)
        return torch.log_softmax(model(tokens).float(), -1)


@pytest.mark.parametrize("arch", ["gemma2", "gemma3"])
def test_direct_equals_the_bridge_past_the_window(arch, gemma2, gemma3):
    model = {"gemma2": gemma2, "gemma3": gemma3}[arch]
    assert direct_reason(model) is None
    tokens = _tokens(30, 1)
    plans = _plans(model, 30)
    for chosen in ([], plans):
        bridge = _logprobs(model, tokens, chosen, run_direct=False)
        with torch.no_grad():
            hf_eager = torch.log_softmax(model.original_model(tokens).logits.float(), -1)
        ran = _logprobs(model, tokens, chosen, fused_on=False)
        assert (ran - bridge).abs().max() < 1e-5
        if not chosen:
            assert (bridge - hf_eager).abs().max() < 1e-5  # the bridge computes what transformers computes
    assert (_logprobs(model, tokens, plans) - _logprobs(model, tokens, [])).abs().max() > 1e-2  # plans acted


def test_the_window_and_the_cap_act(tokenizer, gemma2, gemma3):
    """The tiny models are sensitive to what is tested: a wider window or no cap changes their output."""
    tokens = _tokens(30, 1)
    wide = tiny_gemma("gemma3_text", tokenizer, window=64)
    uncapped = tiny_gemma("gemma2", tokenizer, softcap=None)
    assert (_logprobs(gemma3, tokens, []) - _logprobs(wide, tokens, [])).abs().max() > 1e-2
    assert (_logprobs(gemma2, tokens, []) - _logprobs(uncapped, tokens, [])).abs().max() > 1e-2
    # within the window the sliding layers attend to everything: the same as the wide model
    short = tokens[:, :WINDOW]
    assert (_logprobs(gemma3, short, []) - _logprobs(wide, short, [])).abs().max() < 1e-5


def test_gemma3_runs_fused_with_the_sliding_window(gemma3, fused_calls):
    tokens = _tokens(40, 2)
    plans = _plans(gemma3, 40)
    reference = _logprobs(gemma3, tokens, plans, fused_on=False)
    assert not fused_calls
    got = _logprobs(gemma3, tokens, plans)
    # every layer fused; the sliding layers through transformers' window mask, the full one by is_causal
    assert fused_calls == [True, False, True]
    assert (got - reference).abs().max() < TOL


def test_gemma2_soft_capped_scores_stay_on_the_reference_path(gemma2, fused_calls):
    tokens = _tokens(30, 3)
    plans = _plans(gemma2, 30)
    got = _logprobs(gemma2, tokens, plans)
    assert not fused_calls  # the cap is no per-key sum: nothing folds
    assert (got - _logprobs(gemma2, tokens, plans, run_direct=False)).abs().max() < 1e-5
    assert fused.softcapped(gemma2)
    assert not fused_influence.available(gemma2)


@pytest.mark.parametrize("arch", ["gemma2", "gemma3"])
def test_influence_and_rollout_equal_the_reference(arch, gemma2, gemma3, fused_calls):
    model = {"gemma2": gemma2, "gemma3": gemma3}[arch]
    tokens = _tokens(30, 4)
    spans = [(0, 4), (12, 15)]
    with al.guide(model, [(0, 4)], delta=2.0):
        for use_values in (False, True):
            kwargs = dict(methods=("influence", "rollout"), use_values=use_values, per_head=use_values)
            with fused.fused_attention(False):
                reference = trace_influence(model, tokens, spans, **kwargs)
            got = trace_influence(model, tokens, spans, **kwargs)
            for method in ("influence", "rollout"):
                assert (got[method] - reference[method]).abs().max() < TOL, (method, use_values)
    assert bool(fused_calls) == (arch == "gemma3")  # Gemma 2 reads its patterns


@pytest.mark.parametrize("arch", ["gemma2", "gemma3"])
def test_steered_generation_equals_the_bridge(arch, tokenizer):
    model = tiny_gemma("gemma3_text" if arch == "gemma3" else "gemma2", tokenizer, softcap=1.5, seed=4)
    rows = [[1, 5, 9, 200, 17, 3000, 44], [1, 80, 81, 82, 83, 84, 85, 86, 87, 88]]  # the first left-padded
    plan = BiasPlan.for_model(model)
    plan.add(1, 4, 6.0, row=0)
    plan.add(2, 6, 6.0, row=1)
    kwargs = dict(max_new_tokens=8, stop_at_eos=False)  # 18 tokens: past the window of 8
    direct_rows = generate_batch(model, rows, [plan], direct=True, **kwargs)
    assert direct_rows == generate_batch(model, rows, [plan], direct=False, **kwargs)
    assert direct_rows != generate_batch(model, rows, direct=True, **kwargs)
