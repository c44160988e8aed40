"""Direct runs: the wrapped Hugging Face model with the bridge's attention hook points."""

import logging

import pytest
import torch

import attnlens as al
from attnlens.runtime.direct import IMPLEMENTATION, direct, direct_reason
from attnlens.runtime.generate import generate_batch
from attnlens.steering.bias import BiasPlan
from attnlens.steering.pasta import pasta_plan
from conftest import make_tiny_bridge

TOKENS = torch.tensor([[1, 5, 9, 200, 17, 3000, 44, 8, 90, 12]])


def tiny_of(model_type, tokenizer):
    """A tiny random bridge of one Hugging Face architecture."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformer_lens.model_bridge import TransformerBridge

    if model_type == "gpt2":
        config = AutoConfig.for_model("gpt2", vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=4,
                                      n_positions=256)
    else:
        config = AutoConfig.for_model(model_type, vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      head_dim=8, max_position_embeddings=256)
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(config).eval()
    return TransformerBridge.boot_transformers(f"tiny-{model_type}", hf_model=hf, tokenizer=tokenizer)


@pytest.mark.parametrize("model_type", ["llama", "mistral", "qwen2", "qwen3", "gemma", "phi3", "gpt2"])
def test_direct_equals_the_bridge(tokenizer, model_type):
    model = tiny_of(model_type, tokenizer)
    assert direct_reason(model) is None
    seen = {}

    def keep(tensor, hook):
        seen.setdefault(hook.name, []).append(tensor.clone())

    with torch.no_grad():
        plain = model(TOKENS)
        with direct(model) as hf:
            plain_direct = hf(TOKENS).logits
        with al.guide(model, [(1, 4)], delta=3.0), model.hooks(fwd_hooks=[("blocks.1.attn.hook_pattern", keep)]):
            steered = model(TOKENS)
            with direct(model) as hf:
                steered_direct = hf(TOKENS).logits
    assert (plain - plain_direct).abs().max() < 1e-5  # sdpa where no hook listens
    assert (steered - steered_direct).abs().max() < 1e-5
    assert (steered - plain).abs().max() > 1e-3  # the bias acted in both
    bridge_pattern, direct_pattern = seen["blocks.1.attn.hook_pattern"]
    assert bridge_pattern.shape == direct_pattern.shape == (1, 4, 10, 10)
    assert torch.allclose(bridge_pattern, direct_pattern, atol=1e-6)


def test_the_bridge_is_restored_after_the_block(tiny):
    hf = tiny.original_model
    layer = hf.model.layers[0]
    with torch.no_grad(), direct(tiny) as inner:
        assert inner is hf
        assert hf.model.layers[0] is not layer  # the wrapped decoder layer runs in its place
        assert hf.config._attn_implementation == IMPLEMENTATION
    assert hf.model.layers[0] is layer is tiny.blocks[0]
    assert hf.config._attn_implementation == "eager"
    assert tiny.blocks[0].attn.original_component.q_proj is tiny.blocks[0].attn.q


def test_restored_when_the_body_raises(tiny):
    hf = tiny.original_model
    with pytest.raises(RuntimeError, match="boom"), direct(tiny):
        raise RuntimeError("boom")
    assert hf.model.layers[1] is tiny.blocks[1]
    assert hf.config._attn_implementation == "eager"
    assert direct_reason(tiny) is None  # not left marked as active


def test_reasons_not_to_run_directly(tiny, tokenizer):
    assert "not a TransformerBridge" in direct_reason(torch.nn.Linear(2, 2))
    with tiny.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", lambda t, hook: t)]):
        assert "blocks.0" in direct_reason(tiny) and "hook" in direct_reason(tiny)
        with pytest.raises(ValueError, match="cannot run the model directly"), direct(tiny):
            pass
    with direct(tiny):
        assert "already active" in direct_reason(tiny)
    # a hook on the score points is what a direct run serves
    with al.guide(tiny, [(0, 2)], delta=1.0):
        assert direct_reason(tiny) is None


def test_unsupported_architecture_is_named(tokenizer):
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformer_lens.model_bridge import TransformerBridge

    config = AutoConfig.for_model("olmo2", vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    config._attn_implementation = "eager"
    config.architectures = ["Olmo2ForCausalLM"]
    bridge = TransformerBridge.boot_transformers("tiny-olmo2", hf_model=AutoModelForCausalLM.from_config(config),
                                                 tokenizer=tokenizer)
    assert "olmo2" in direct_reason(bridge)  # not among the tested architectures: the bridge path serves it
    rows = [[1, 5, 9, 200]]
    with pytest.raises(ValueError, match="olmo2"):
        generate_batch(bridge, rows, max_new_tokens=2, direct=True)
    assert len(generate_batch(bridge, rows, max_new_tokens=2, stop_at_eos=False)[0]) == 2


ROWS = [[1, 5, 9, 200, 17, 3000, 44], [1, 80, 81, 82, 83, 84, 85, 86, 87, 88]]  # the first is left-padded


@pytest.fixture(scope="module")
def steerable(tokenizer):
    """A tiny bridge whose greedy continuations of ROWS the plans below change."""
    return make_tiny_bridge(tokenizer, seed=4)


def _plans(model):
    guide = BiasPlan(model.cfg.n_layers, model.cfg.n_heads)
    guide.add(1, 4, 6.0, row=0)
    guide.add(2, 6, 6.0, row=1)
    steer = pasta_plan(model, spans=[[(1, 3)], [(2, 5)]], head_config={0: [1, 2], 2: [3]}, alpha=0.05)
    return [guide, steer]


@pytest.mark.parametrize("stop_at_eos", [True, False])
def test_generation_direct_equals_bridge(steerable, stop_at_eos):
    kwargs = dict(max_new_tokens=8, stop_at_eos=stop_at_eos)
    direct_rows = generate_batch(steerable, ROWS, _plans(steerable), direct=True, **kwargs)
    bridge_rows = generate_batch(steerable, ROWS, _plans(steerable), direct=False, **kwargs)
    assert direct_rows == bridge_rows
    plain_rows = generate_batch(steerable, ROWS, direct=True, **kwargs)
    assert plain_rows[0] != direct_rows[0] and plain_rows[1] != direct_rows[1]  # each row's plan acted
    assert plain_rows == generate_batch(steerable, ROWS, direct=False, **kwargs)
    if not stop_at_eos:
        assert [len(r) for r in direct_rows] == [8, 8]


def test_generation_stops_at_eos_on_both_paths(steerable):
    rows = ROWS[:1]
    first = generate_batch(steerable, rows, max_new_tokens=5, stop_at_eos=False)[0]
    tokenizer, config = steerable.tokenizer, steerable.original_model.generation_config
    original = tokenizer.eos_token, config.eos_token_id
    # the first new token now ends the text, for the tokenizer and for the model's generation defaults
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(first[0])
    config.eos_token_id = first[0]
    try:
        assert tokenizer.eos_token_id == first[0]
        for use in (True, False):
            assert generate_batch(steerable, rows, max_new_tokens=5, direct=use)[0] == []
            assert generate_batch(steerable, rows, max_new_tokens=5, direct=use, stop_at_eos=False)[0] == first
        assert steerable.original_model.generation_config is config
    finally:
        tokenizer.eos_token, config.eos_token_id = original


def test_sampling_is_seeded_and_honours_top_k(tiny):
    rows = [[1, 5, 9, 200]]
    a = generate_batch(tiny, rows, max_new_tokens=6, do_sample=True, seed=11, stop_at_eos=False)
    b = generate_batch(tiny, rows, max_new_tokens=6, do_sample=True, seed=11, stop_at_eos=False)
    assert a == b
    with torch.no_grad():
        top = tiny(torch.tensor(rows))[0, -1].argmax().item()
    assert generate_batch(tiny, rows, max_new_tokens=1, do_sample=True, top_k=1, seed=3)[0] == [top]


def test_fallback_is_logged(tiny, caplog):
    with caplog.at_level(logging.DEBUG, logger="attnlens.runtime.generate"), \
            tiny.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", lambda t, hook: t)]):
        generate_batch(tiny, [[1, 2, 3]], max_new_tokens=1)
    # a hook of the user's: a warning naming its public hook point and the slower path
    assert any(r.levelno == logging.WARNING and "a hook on blocks.0.hook_resid_pre makes this run leave the direct "
               "path: it runs through the TransformerLens bridge" in r.getMessage() for r in caplog.records)


def test_a_transformers_without_attention_interfaces_falls_back(tiny, monkeypatch):
    import attnlens.runtime.direct as module

    def missing():
        raise ImportError("no AttentionInterface")

    monkeypatch.setattr(module, "_register", missing)
    assert "AttentionInterface" in direct_reason(tiny)
    rows = [[1, 5, 9, 200]]
    assert generate_batch(tiny, rows, max_new_tokens=3, stop_at_eos=False) == generate_batch(
        tiny, rows, max_new_tokens=3, stop_at_eos=False, direct=False)


def test_the_attention_function_is_removed_on_exit(tiny):
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    with direct(tiny):
        assert IMPLEMENTATION in AttentionInterface._global_mapping
    assert IMPLEMENTATION not in AttentionInterface._global_mapping
    assert IMPLEMENTATION not in AttentionMaskInterface._global_mapping


def test_a_hook_added_inside_the_block_is_refused(tiny):
    from attnlens import DirectUnavailable

    tokens = torch.tensor([[1, 5, 9, 200]])
    with direct(tiny) as hf:
        hf(tokens)
        with tiny.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", lambda t, hook: t)]):
            with pytest.raises(DirectUnavailable, match="inside the direct block"):
                hf(tokens)
        hf(tokens)  # removed again: runs


def test_a_score_hook_added_inside_the_block_fires(tiny):
    seen = []
    tokens = torch.tensor([[1, 5, 9, 200]])
    with direct(tiny) as hf:
        with tiny.hooks(fwd_hooks=[("blocks.1.attn.hook_attn_scores", lambda t, hook: seen.append(t.shape))]):
            hf(tokens)
    assert seen and seen[0][-1] == 4
