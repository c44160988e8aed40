"""Models placed across devices by accelerate (``load_model(..., device_map=...)``): a tiny model split
across the CPU and disk offload gives what the one-device model gives, through steering (GUIDE and PASTA,
direct run and bridge), Influence and AttentionData."""

from __future__ import annotations

import pytest
import torch

import attnlens as al
from attnlens.core.errors import ModelLoadError
from attnlens.core.model import model_device
from attnlens.runtime.direct import direct_reason
from attnlens.runtime.generate import generate_batch

from conftest import make_tiny_hf

SPLIT = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk", "model.layers.2": "disk",
         "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
PROMPTS = ["<!!-> Answer in French. <-!!> What is the capital of Italy?", "Tell me about <!-> bees <-!> please."]
TEXTS = ["The quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat by the door.",
         "Bees tell each other where flowers are by dancing inside the hive, turning and waggling."]


@pytest.fixture(scope="module")
def pair(tmp_path_factory, tokenizer):
    """The same tiny model on one device and split across the CPU and disk."""
    root = tmp_path_factory.mktemp("offload")
    make_tiny_hf(tokenizer).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    single = al.load_model(root / "model")
    split = al.load_model(root / "model", device_map=SPLIT, offload_folder=root / "offload")
    return single, split


def test_the_split_is_real(pair):
    _, split = pair
    assert split.original_model.hf_device_map == SPLIT
    assert any(p.device.type == "meta" for p in split.original_model.model.layers[1].parameters())
    assert model_device(split) == torch.device("cpu")
    assert direct_reason(split) is None  # accelerate's placement hooks run inside the direct run
    assert direct_reason(pair[0]) is None  # transformers' inert output recorders do not block it either


@pytest.mark.parametrize("backend", ["direct", "bridge"])
def test_steered_generation_equals_the_one_device_model(pair, backend):
    single, split = pair
    outs = []
    for model in (single, split):
        prompts = [al.prepare(model.tokenizer, p, delta_mid=2.0) for p in PROMPTS]
        plans = al.plans_for(model, prompts, layers="all")
        tokens = generate_batch(model, [p.input_ids for p in prompts], plans, max_new_tokens=6, backend=backend)
        assert tokens.backend == backend
        outs.append([list(t) for t in tokens])
    assert outs[0] == outs[1]


def test_pasta_influence_and_attention_data_equal_the_one_device_model(pair):
    single, split = pair
    results = []
    for model in (single, split):
        pasta = al.PASTA(model, head_config={0: [1], 2: [0, 3]}, alpha=0.01)
        text = pasta.generate("Mary is a doctor. Answer in JSON.", ["Answer in JSON"], max_new_tokens=5)
        prompt = al.prepare(model.tokenizer, "<!-> Rewrite in French <-!> <?-> Paris <-?> is the most visited city.")
        trace = al.measure_influence(model, prompt, methods=("influence", "rollout"))
        data = al.AttentionData(model, text_batch=TEXTS, min_length=4, max_length=20, seed=1)
        multiples = [(m.token, m.multiple, m.text_index, m.query, m.key) for m in data.ranked_multiples(2, 1)]
        results.append((text, trace["influence"], multiples))
    assert results[0][0] == results[1][0]
    assert torch.equal(torch.as_tensor(results[0][1]), torch.as_tensor(results[1][1]))
    assert results[0][2] == results[1][2]


def test_bad_device_maps_are_refused_before_loading(tmp_path):
    with pytest.raises(ModelLoadError, match="offload_folder"):
        al.load_model(tmp_path, device_map={"model": "disk"})
    with pytest.raises(ModelLoadError, match="'meta'"):
        al.load_model(tmp_path, device_map={"model": "meta"})
    with pytest.raises(ModelLoadError, match="not both"):
        al.load_model(tmp_path, device="cpu", device_map="auto")
    with pytest.raises(ModelLoadError, match="need a device_map"):
        al.load_model(tmp_path, max_memory={"cpu": "1GiB"})
