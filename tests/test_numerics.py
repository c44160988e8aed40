"""Every bias the checks allow gives finite, correct results in float32, float16 and bfloat16, on every path."""

from __future__ import annotations

import pytest
import torch
from transformer_lens.model_bridge import TransformerBridge

from attnlens import BiasPlan, apply_bias
from attnlens.runtime.direct import direct
from attnlens.runtime.fused import fused_attention
from attnlens.runtime.generate import generate_batch
from attnlens.steering.bias import GAP, compress
from conftest import make_tiny_hf

TOKENS = torch.tensor([[1, 5, 9, 200, 17, 3000, 44, 8, 90, 12]])
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
#: how far two runs of one model may differ in each precision (logits of these models are below 1)
TOLERANCE = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 2e-2}


@pytest.fixture(scope="module", params=DTYPES, ids=lambda d: str(d).split(".")[-1])
def model(request, tokenizer):
    hf = make_tiny_hf(tokenizer, seed=4).to(request.param)
    return TransformerBridge.boot_transformers("tiny-llama", hf_model=hf, tokenizer=tokenizer)


def run_paths(model, plan=None):
    """Logits (float32) of the bridge, the direct run's reference path and its fused path."""
    out = {}
    with torch.no_grad(), (apply_bias(model, plan) if plan is not None else torch.no_grad()):
        out["bridge"] = model(TOKENS).float()
        with fused_attention(False), direct(model) as hf:
            out["reference"] = hf(TOKENS).logits.float()
        with direct(model) as hf:
            out["fused"] = hf(TOKENS).logits.float()
    return out


@pytest.mark.parametrize("value", [1e6, 1e30, -1e30])
def test_a_constant_bias_over_the_prompt_changes_nothing(model, value):
    tol = TOLERANCE[next(model.parameters()).dtype]
    plain = run_paths(model)
    steered = run_paths(model, BiasPlan.for_model(model).add(0, TOKENS.shape[1], value))
    for path in plain:
        assert torch.isfinite(steered[path]).all(), path
        assert (steered[path] - plain[path]).abs().max() <= tol, path


@pytest.mark.parametrize("delta", [1e30])
def test_a_huge_span_bias_equals_a_saturating_one(model, delta):
    """A bias of 60 already gives the span all the attention (exp(-60) is below float32's precision) and is
    added as it is; 1e4 and 1e30 go through the relative path and must give the same."""
    tol = TOLERANCE[next(model.parameters()).dtype]
    reference = run_paths(model, BiasPlan.for_model(model).add(2, 6, 60.0))
    huge = run_paths(model, BiasPlan.for_model(model).add(2, 6, delta))
    plain = run_paths(model)
    for path in huge:
        assert torch.isfinite(huge[path]).all(), path
        assert (huge[path] - reference[path]).abs().max() <= 2 * tol, path
        assert (huge[path] - huge["bridge"]).abs().max() <= 2 * tol, path
        assert (huge[path] - plain[path]).abs().max() > 10 * tol, path  # the bias acted


def test_levels_far_apart_keep_their_order(model):
    """Two spans whose biases differ by far more than GAP, both far above the rest: the higher one wins
    for queries that see it, the lower one for queries that see only it, on every path."""
    tol = TOLERANCE[next(model.parameters()).dtype]
    plan = BiasPlan.for_model(model).add(1, 3, 5e4).add(6, 8, 1e5)
    saturating = BiasPlan.for_model(model).add(1, 3, 60.0).add(6, 8, 120.0)
    huge, reference = run_paths(model, plan), run_paths(model, saturating)
    for path in huge:
        assert (huge[path] - reference[path]).abs().max() <= 2 * tol, path


def test_generation_with_huge_biases_gives_tokens(model):
    rows = [TOKENS[0].tolist(), [1, 300, 7, 9]]
    plain = {b: generate_batch(model, rows, max_new_tokens=3, stop_at_eos=False, backend=b) for b in ("direct", "bridge")}
    constant = BiasPlan.for_model(model).add(0, None, 1e30)  # to the end of each prompt: still a constant
    for backend in ("direct", "bridge"):
        got = generate_batch(model, rows, [constant], max_new_tokens=3, stop_at_eos=False, backend=backend)
        assert got == plain[backend], backend
    huge = generate_batch(model, rows, [BiasPlan.for_model(model).add(1, 3, 1e4)], max_new_tokens=3, stop_at_eos=False)
    saturating = generate_batch(model, rows, [BiasPlan.for_model(model).add(1, 3, 60.0)], max_new_tokens=3,
                                stop_at_eos=False)
    assert huge == saturating


def test_compress_keeps_small_differences_and_shortens_large_ones():
    values = torch.tensor([[0.0, 1.5, 3e4, 3e4 + 2.0, 1e30]], dtype=torch.float64)
    out = compress(values)
    assert out.max() == 0
    diffs = out.diff()
    assert torch.allclose(diffs[0, [0, 2]], torch.tensor([1.5, 2.0], dtype=torch.float64))
    assert torch.all(diffs[0, [1, 3]] == GAP)


def test_a_huge_guide_in_half_precision_gives_text(tokenizer):
    """The default path (direct, fused) in float16 with delta_mid=5000 (levels up to 10,000)."""
    import attnlens as al

    hf = make_tiny_hf(tokenizer, seed=4).to(torch.float16)
    model = TransformerBridge.boot_transformers("tiny-llama", hf_model=hf, tokenizer=tokenizer)
    pipe = al.pipeline("pay-attention", model=model, chat=False)
    out = pipe("<!!!-> Rewrite in French: <-!!!> Paris is the most visited city.", max_new_tokens=6,
               delta_mid=5000.0, stop_at_eos=False)
    saturating = pipe("<!!!-> Rewrite in French: <-!!!> Paris is the most visited city.", max_new_tokens=6,
                      delta_mid=30.0, stop_at_eos=False)  # level 3 adds 60: all the attention already
    assert out[0]["backend"] == "direct"
    assert out[0]["generated_text"] and out[0]["generated_text"] == saturating[0]["generated_text"]
