"""Shared fixtures: tiny random models for unit tests, the embedded model loaded once."""

from __future__ import annotations

import logging
import os

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
logging.getLogger("transformers").setLevel(logging.ERROR)

try:  # property tests: a fixed seed and a bounded number of examples, so every run checks the same cases
    from hypothesis import HealthCheck, settings

    settings.register_profile(
        "attnlens", derandomize=True, max_examples=int(os.environ.get("ATTNLENS_HYPOTHESIS_EXAMPLES", "60")),
        deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None,
    )
    settings.load_profile("attnlens")
except ImportError:  # pragma: no cover
    pass


def make_tiny_hf(tokenizer=None, *, n_layers: int = 3, n_heads: int = 4, n_kv_heads: int = 2,
                 d_model: int = 32, seed: int = 0, attn_implementation: str = "eager"):
    """A randomly initialised LLaMA-architecture Hugging Face model (same seed, same weights)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab = len(tokenizer) if tokenizer is not None else 128
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=d_model,
        intermediate_size=2 * d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads,
        max_position_embeddings=1024,
        bos_token_id=getattr(tokenizer, "bos_token_id", 1) or 1,
        eos_token_id=getattr(tokenizer, "eos_token_id", 2) or 2,
        pad_token_id=getattr(tokenizer, "pad_token_id", 2) or 2,
        tie_word_embeddings=True,
    )
    config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def make_tiny_bridge(tokenizer=None, **kwargs):
    """:func:`make_tiny_hf` wrapped in a TransformerBridge (give a tokenizer: none is fetched)."""
    from transformer_lens.model_bridge import TransformerBridge

    hf = make_tiny_hf(tokenizer, **kwargs)
    return TransformerBridge.boot_transformers("tiny-llama", hf_model=hf, tokenizer=tokenizer)


@pytest.fixture(scope="session")
def tokenizer():
    """The embedded model's tokenizer (no weights loaded)."""
    from attnlens.runtime.models import load_embedded_tokenizer

    return load_embedded_tokenizer()


@pytest.fixture(scope="session")
def tiny(tokenizer):
    """A tiny random LLaMA bridge with the embedded tokenizer: 3 layers, 4 heads (2 KV heads)."""
    return make_tiny_bridge(tokenizer)


@pytest.fixture(scope="session")
def lively(tokenizer):
    """A tiny random LLaMA whose greedy text varies (untied embeddings, a wider initialisation)."""
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False, initializer_range=0.1)
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    hf = LlamaForCausalLM(config).eval()
    return TransformerBridge.boot_transformers("tiny-llama", hf_model=hf, tokenizer=tokenizer)


@pytest.fixture(scope="session")
def embedded():
    """The embedded SmolLM2-135M-Instruct bridge, loaded once per test session."""
    import attnlens

    return attnlens.load_model()


@pytest.fixture(autouse=True)
def _registries_restored():
    """What a test (or a docs page it runs) registers (a steering or attribution method, a runtime, a study)
    is gone after it: tests never see each other's."""
    import attnlens.attribution  # noqa: F401 - every registry made, so each is restored
    import attnlens.experiments.registry  # noqa: F401
    import attnlens.runtime.backends  # noqa: F401
    import attnlens.steering  # noqa: F401
    from attnlens.core.registry import registries

    # the views stay: attnlens.viz registers them once, when first imported (maybe during a test)
    saved = [(table, table.snapshot()) for table in registries() if table.kind != "view"]
    yield
    for table, before in saved:
        table.restore(before)
