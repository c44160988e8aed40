"""Coming from pay-attention-pipeline, pastalib, AISteer360's PASTA or attention-data: the compatibility layer.

Influence's two conventions are held against independent references
(tests/reference_influence.py: plain torch over a Hugging Face model's own
activations); pastalib's call shapes against the real pastalib 0.1.3.
"""

from __future__ import annotations

import json

import pytest
import torch

import attnlens as al
from attnlens.core.errors import AttnlensError
from conftest import make_tiny_bridge, make_tiny_hf
from reference_influence import capture, influence_pap, influence_stated

PROMPT = "Rewrite in French: Paris is the most visited city in the world."
SPAN = (1, 5)


def max_diff(a, b) -> float:
    return float((a.double() - b.double()).abs().max())


# ----------------------------------------------------------------------------- Influence: the two conventions


@pytest.fixture(scope="module")
def tiny_pair(tokenizer):
    """A tiny bridge and an independent copy of the same Hugging Face weights (same seed)."""
    return make_tiny_bridge(tokenizer), make_tiny_hf(tokenizer)


def test_conventions_match_their_references(tiny_pair, tokenizer):
    bridge, hf = tiny_pair
    ids = tokenizer(PROMPT)["input_ids"]
    acts = capture(hf, ids)
    seq = len(ids)
    assert max_diff(al.influence(bridge, ids, SPAN), influence_stated(acts, SPAN, seq)) < 1e-6
    assert max_diff(al.influence(bridge, ids, SPAN, convention="pap"), influence_pap(acts, SPAN, seq)) < 1e-6
    heads = al.influence(bridge, ids, SPAN, method="influence_heads", convention="pap")
    assert max_diff(heads, influence_pap(acts, SPAN, seq, heads=True)) < 1e-6
    # the two conventions really differ, and rollout is the same in both
    assert max_diff(al.influence(bridge, ids, SPAN), al.influence(bridge, ids, SPAN, convention="pap")) > 1e-3
    assert max_diff(al.rollout(bridge, ids, SPAN), al.rollout(bridge, ids, SPAN, convention="pap")) == 0


def test_trace_influence_takes_the_convention(tiny_pair, tokenizer):
    bridge, _ = tiny_pair
    ids = tokenizer(PROMPT)["input_ids"]
    trace = al.trace_influence(bridge, ids, [SPAN, (6, 8)], methods=("influence", "influence_heads", "rollout"),
                               convention="pap")
    assert trace.convention == "pap"
    for i, span in enumerate([SPAN, (6, 8)]):
        assert max_diff(trace["influence"][i], al.influence(bridge, ids, span, convention="pap")) < 1e-6
        assert max_diff(trace["influence_heads"][i],
                        al.influence(bridge, ids, span, method="influence_heads", convention="pap")) < 1e-6
    with pytest.raises(AttnlensError, match="convention 'paper'.*stated.*pap"):
        al.influence(bridge, ids, SPAN, convention="paper")


@pytest.mark.embedded
def test_embedded_conventions_match_their_references(embedded, tokenizer):
    from attnlens.runtime.models import load_embedded_hf

    hf, _ = load_embedded_hf(attn_implementation="eager")
    ids = tokenizer(PROMPT)["input_ids"]
    acts = capture(hf, ids)
    seq = len(ids)
    pap = max_diff(al.influence(embedded, ids, SPAN, convention="pap"), influence_pap(acts, SPAN, seq))
    stated = max_diff(al.influence(embedded, ids, SPAN), influence_stated(acts, SPAN, seq))
    heads = max_diff(al.influence(embedded, ids, SPAN, method="influence_heads", convention="pap"),
                     influence_pap(acts, SPAN, seq, heads=True))
    between = max_diff(al.influence(embedded, ids, SPAN), al.influence(embedded, ids, SPAN, convention="pap"))
    print(f"max |diff|: pap {pap:.2e}, stated {stated:.2e}, influence_heads {heads:.2e}, stated vs pap {between:.3f}")
    assert pap < 1e-5 and stated < 1e-5 and heads < 1e-5
    assert between > 0.01


# ----------------------------------------------------------------------------- transformers.pipeline("pay-attention")


def test_transformers_pipeline_with_a_bridge(tiny_pair):
    import transformers

    bridge, _ = tiny_pair
    pipe = transformers.pipeline("pay-attention", model=bridge, delta_mid=2.0, metric="attention_rollout")
    out = pipe("<?-> Rewrite in French <-?>: Paris", max_new_tokens=3)
    (record,) = out
    assert record["prompt"] == " Rewrite in French : Paris"  # the clean text: only the tags are removed
    assert record["generated_text"].startswith(record["prompt"])  # the full text, as transformers gives it
    assert record["influence"][0]["method"] == "rollout"
    plain = json.loads(record.to_json())
    assert plain["influence"][0]["tensor"] == record["influence"][0]["tensor"].tolist()
    json.dumps(pipe("<?-> Rewrite <-?> x", max_new_tokens=2, as_json=True))
    short = pipe("<?-> Rewrite <-?> x", max_new_tokens=2, return_full_text=False, metric="influence",
                 convention="pap")
    assert not short[0]["generated_text"].startswith(short[0]["prompt"])
    assert short[0]["influence"][0]["convention"] == "pap"
    # attnlens' own pipeline keeps its defaults: the new text only, and a plain string through the chat
    # template; raw=True reads it as the compatible task does (raw text)
    full = pipe("Rewrite in French: Paris", max_new_tokens=3)[0]["generated_text"]
    own = al.pipeline("pay-attention", model=bridge, delta_mid=2.0, raw=True)("Rewrite in French: Paris",
                                                                               max_new_tokens=3)
    assert full == "Rewrite in French: Paris" + own[0]["generated_text"]
    assert own[0]["prompt_format"] == "raw" and pipe("x", max_new_tokens=1)[0]["prompt_format"] == "raw"
    templated = al.pipeline("pay-attention", model=bridge)("Rewrite in French: Paris", max_new_tokens=1)[0]
    assert templated["prompt_format"] == "chat" and "user\nRewrite in French: Paris<|im_end|>" in templated["prompt"]
    # the compatible task reads tags as pay-attention-pipeline does: only the tags are removed
    assert pipe("<!-> Rewrite: <-!> Paris", max_new_tokens=1)[0]["prompt"] == " Rewrite:  Paris"


def test_transformers_pipeline_with_an_hf_model_and_a_path(tokenizer, tmp_path):
    import transformers

    hf = make_tiny_hf(tokenizer)
    hf.save_pretrained(tmp_path)  # before the bridge wraps its modules
    tokenizer.save_pretrained(tmp_path)
    pipe = transformers.pipeline("pay-attention", model=hf, tokenizer=tokenizer)
    first = pipe("Hello there", max_new_tokens=2, do_sample=False)[0]["generated_text"]
    from_path = transformers.pipeline("pay-attention", model=str(tmp_path), dtype=torch.float32)
    assert from_path("Hello there", max_new_tokens=2)[0]["generated_text"] == first
    with pytest.raises(AttnlensError, match="unknown pay-attention pipeline argument"):
        transformers.pipeline("pay-attention", model=hf, tokenizer=tokenizer, delta=3)


# ----------------------------------------------------------------------------- pastalib's PASTA, unchanged code

TEXTS = ["Mary is a doctor. She studied at UCSD. Answer with her job in json.",
         "Tom is a pilot. Tell me his job in one word."]
SUBS = ["Answer with her job in json", "Tell me his job in one word"]


def _steer(cls, hf, tokenizer, head_config, **gen):
    pasta = cls(hf, tokenizer, head_config=head_config, alpha=0.01, scale_position="exclude")
    inputs, offsets = pasta.inputs_from_batch(TEXTS)
    with torch.no_grad(), pasta.apply_steering(model=hf, strings=TEXTS, substrings=SUBS, model_input=inputs,
                                               offsets_mapping=offsets) as steered:
        logits = steered(**inputs).logits
        out = steered.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False,
                               pad_token_id=tokenizer.eos_token_id)
    return inputs, logits, out


@pytest.mark.parametrize("head_config", [{"0": [1, 3], "2": [0]}, [1]])  # pastalib's form; AISteer360's layers
def test_pastalib_code_runs_unchanged(tokenizer, head_config):
    from pastalib.pasta import PASTA as Original

    from attnlens.api.compat.pastalib import PASTA

    _, theirs, their_out = _steer(Original, make_tiny_hf(tokenizer), tokenizer, head_config)
    inputs, ours, our_out = _steer(PASTA, make_tiny_hf(tokenizer), tokenizer, head_config)
    mask = inputs["attention_mask"].bool()  # left padding: compare the real positions
    assert max_diff(ours[mask], theirs[mask]) < 1e-4
    assert torch.equal(our_out, their_out)


def test_pastalib_shapes_on_a_bridge(tiny_pair, tokenizer):
    from attnlens.api.compat.pastalib import PASTA

    bridge, _ = tiny_pair
    pasta = PASTA(bridge, head_config={"1": [0]})
    inputs, offsets = pasta.inputs_from_batch(TEXTS[:1])
    with pasta.apply_steering(model=bridge, strings=TEXTS[:1], substrings=SUBS[:1], model_input=inputs,
                              offsets_mapping=offsets) as steered:
        out = steered.generate(**inputs, max_new_tokens=3, min_new_tokens=3)
    assert out.shape == (1, inputs["input_ids"].shape[1] + 3)
    with pytest.raises(al.SpanError, match="not found"):
        with pasta.apply_steering(model=bridge, strings=TEXTS[:1], substrings=["absent"], model_input=inputs,
                                  offsets_mapping=offsets):
            pass


# ----------------------------------------------------------------------------- attention-data's AttentionData

AD_TEXTS = [
    "The cat sat on the mat because it was tired after chasing the mouse all day.",
    "Paris is the capital of France and Rome is the capital of Italy.",
]


def test_attention_data_argument_order_rows_and_output(tiny_pair, capsys):
    from openai import OpenAI

    from attnlens.api.compat.attention_data import AttentionData
    from attnlens.testing import ChatStubServer

    bridge, _ = tiny_pair
    with ChatStubServer("It attends to nouns.") as server:
        client = OpenAI(base_url=server.url, api_key="x")
        ad = AttentionData(bridge, "stub", None, AD_TEXTS, 4, 14, client=client, seed=0)
        prompt, description = ad.describe_head(2, 1, 3)  # head 2 of layer 1, as attention-data reads it
        assert (1, 2) in ad.heads and (2, 1) not in ad.heads
        assert "Layer 1, head 2:\nIt attends to nouns." in capsys.readouterr().out
        native = al.AttentionData(bridge, "stub", None, AD_TEXTS, 4, 14, client=client, seed=0)
        native.describe_head(2, 1, 3, print_description=False)  # attnlens: layer 2, head 1
        assert (2, 1) in native.heads and capsys.readouterr().out == ""
    assert isinstance(ad.create_samples(2, 1), list) and (1, 2) in ad.heads
    text = ad.get_head_samples(2, 1, num_samples=2)
    assert isinstance(text, str) and "Example 2:" in text
    rows = ad.get_ranked_multiples(1, 2, num_multiples=3, display=True)  # layer first in both
    token, multiple, str_tokens, pattern = rows[0]
    assert rows[0][1] == multiple == rows[0].multiple and rows[0][0] == token
    assert (rows[0].layer, rows[0].head) == (1, 2) and isinstance(rows[0].query, int)
    assert len(pattern) == len(str_tokens)
    shown = capsys.readouterr().out
    assert shown.startswith("Layer 1 Head 2, top 3")
    ad.get_random_multiples(1, 2, num_multiples=2, display=True)
    assert "Layer 1 Head 2, 2 /" in capsys.readouterr().out


# ----------------------------------------------------------------------------- one chat rule


def test_one_chat_rule(tiny_pair, monkeypatch, capsys):
    from attnlens import cli

    bridge, _ = tiny_pair
    monkeypatch.setattr(cli, "_load", lambda args: bridge)
    text = "Paris is the capital of"
    piped = al.pipeline("pay-attention", model=bridge)(text, max_new_tokens=4)[0]["generated_text"]
    steered = al.PASTA(bridge, {"1": [0]}).generate(text, "capital", max_new_tokens=4)
    assert cli.main(["generate", text, "--max-new-tokens", "4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["steered"] == piped  # a plain string: the one rule, everywhere
    assert cli.main(["generate", text, "--max-new-tokens", "4", "--json", "--chat"]) == 0
    chat = al.pipeline("pay-attention", model=bridge, chat=True)(text, max_new_tokens=4)[0]["generated_text"]
    assert json.loads(capsys.readouterr().out)["steered"] == chat
    assert isinstance(steered, str)
    assert cli.main(["influence", f"<?-> {text} <-?>", "--json", "--convention", "pap", "--raw"]) == 0
    result = json.loads(capsys.readouterr().out)
    ids = bridge.tokenizer(al.parse_tags(f"<?-> {text} <-?>").text)["input_ids"]  # as written: no template
    assert result["convention"] == "pap" and result["prompt_format"] == "raw"
    assert result["tokens"][: len(ids)] == [bridge.tokenizer.decode([t]) for t in ids]
