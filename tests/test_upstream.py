"""Version drift: the KV-cache workaround, the guard that notices drift, and device errors."""

from __future__ import annotations

import pytest
import torch

import attnlens as al
from attnlens.runtime import upstream
from attnlens.core import _internals
from attnlens.runtime.models import check_device
from tests.conftest import make_tiny_bridge


def _tl_4_3_update(self, k, v, **kwargs):
    """TransformerLens 4.3.0's cache update: it reads only ``past_key_values``."""
    cache = kwargs.get("past_key_values")
    if cache is None:
        return k, v
    return cache.update(k, v, self._layer_idx)


def _ignores_cache(self, k, v, **kwargs):
    """A drifted cache update: whatever the argument is called, the cache is not used."""
    return k, v


@pytest.fixture
def attention_bridge(monkeypatch):
    """TransformerLens' attention bridge class, restored (and the workaround flag) after the test."""
    from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge

    monkeypatch.setattr(AttentionBridge, "_update_kv_cache", AttentionBridge._update_kv_cache)
    monkeypatch.setattr(_internals, "_workaround_applied", _internals._workaround_applied)
    return AttentionBridge


def test_cached_decoding_matches_uncached_forward(tokenizer):
    model = make_tiny_bridge(tokenizer)
    upstream.apply_workarounds()
    assert upstream.kv_cache_mismatch(model) < 1e-5
    # and greedy generation with the cache gives the tokens of generation without it
    tokens = model.to_tokens("The capital of France is")
    cached = model.generate(tokens, max_new_tokens=6, do_sample=False, verbose=False, use_past_kv_cache=True)
    uncached = model.generate(tokens, max_new_tokens=6, do_sample=False, verbose=False, use_past_kv_cache=False)
    assert torch.equal(cached, uncached)


def test_probe_tells_whether_the_bridge_reads_the_renamed_argument():
    assert not _internals._bridge_reads_cache_kwarg(_tl_4_3_update)
    assert not _internals._bridge_reads_cache_kwarg(_ignores_cache)

    def reads_cache(self, k, v, **kwargs):
        return _tl_4_3_update(self, k, v, past_key_values=kwargs.get("cache"))

    assert _internals._bridge_reads_cache_kwarg(reads_cache)


def test_workaround_mends_a_bridge_that_reads_only_the_old_name(attention_bridge, tokenizer):
    attention_bridge._update_kv_cache = _tl_4_3_update
    _internals._workaround_applied = False
    assert upstream.apply_workarounds()
    assert _internals._bridge_reads_cache_kwarg(attention_bridge._update_kv_cache)
    assert upstream.apply_workarounds()  # idempotent
    assert attention_bridge._update_kv_cache.__attnlens_original__ is _tl_4_3_update
    model = make_tiny_bridge(tokenizer)
    assert upstream.kv_cache_mismatch(model) < 1e-5


def test_guard_raises_on_simulated_drift(attention_bridge, tokenizer):
    model = make_tiny_bridge(tokenizer)
    _internals._workaround_applied = True  # a workaround that no longer helps
    attention_bridge._update_kv_cache = _ignores_cache
    assert upstream.kv_cache_mismatch(model) > 1e-2
    with pytest.raises(al.UpstreamDriftError, match="KV-cached decoding disagrees") as info:
        upstream.check_kv_cache(model, force=True)
    message = str(info.value)
    for name, version in upstream.versions().items():
        assert f"{name} {version}" in message
    assert "requirements.lock" in message
    # generating through the bridge refuses instead of generating wrong text
    with pytest.raises(al.UpstreamDriftError):
        al.generate_batch(model, [[1, 5, 9]], max_new_tokens=2, backend="bridge")


def test_guard_waits_while_user_hooks_are_installed(attention_bridge, tokenizer):
    model = make_tiny_bridge(tokenizer)
    seen = []
    attention_bridge._update_kv_cache = _ignores_cache
    _internals._workaround_applied = True
    with model.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", lambda x, hook: seen.append(x.shape))]):
        upstream.check_kv_cache(model)  # deferred: the probe would run the user's hook
    assert seen == []
    assert not upstream._checked.get(model)
    with pytest.raises(al.UpstreamDriftError):
        upstream.check_kv_cache(model)


def test_tested_versions_cover_the_installed_ones():
    installed = upstream.versions()
    assert installed["transformer-lens"] in upstream.TESTED["transformer-lens"]
    assert installed["transformers"] in upstream.TESTED["transformers"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is available")
def test_cuda_unavailable_is_a_clear_model_load_error():
    with pytest.raises(al.ModelLoadError, match="'cuda'") as info:
        al.load_model(device="cuda")
    assert "pip install torch" in str(info.value) or "no CUDA device is visible" in str(info.value)


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="MPS is available")
def test_mps_unavailable_is_a_clear_model_load_error():
    with pytest.raises(al.ModelLoadError, match="'mps'.*(no MPS support|not available)"):
        check_device("mps")


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", ""])
def test_device_names_are_checked(bad):
    with pytest.raises(al.ModelLoadError, match="not a torch device name"):
        check_device(bad)


def test_cpu_device_is_accepted():
    assert check_device("cpu") == torch.device("cpu")
    assert check_device(None) is None


def test_kv_cache_rows_are_selected_in_every_layer(tokenizer):
    """_internals.select_kv_cache_rows on a real transformers DynamicCache: the kept rows and positions of
    every layer, and False (nothing changed) for a cache whose layers are not plain growing ones."""
    model = make_tiny_bridge(tokenizer)
    hf = model.original_model
    cache = _internals.new_kv_cache()
    with torch.no_grad():
        hf(input_ids=torch.randint(3, 500, (3, 6), generator=torch.Generator().manual_seed(0)), use_cache=True,
           **{_internals.kv_cache_argument(hf): cache})
    before = [(k.clone(), v.clone()) for k, v in _internals.kv_cache_layers(cache)]
    assert _internals.select_kv_cache_rows(cache, torch.tensor([2, 0]), 1)
    after = _internals.kv_cache_layers(cache)
    assert len(after) == len(before) == hf.config.num_hidden_layers
    for (k0, v0), (k1, v1) in zip(before, after):
        assert torch.equal(k1, k0[[2, 0], :, 1:]) and torch.equal(v1, v0[[2, 0], :, 1:])
    assert not _internals.select_kv_cache_rows(_internals.new_kv_cache(), torch.tensor([0]))  # no layer made yet
