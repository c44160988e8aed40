"""PASTA: head configs, the bias it adds, substrings -> spans, batches, composition, pastalib parity, CLI, demo."""

from __future__ import annotations

import json
import math

import pytest
import torch

import attnlens as al
from attnlens import AttnlensError, SpanError
from attnlens.runtime.generate import generate_batch
from attnlens.steering.bias import BiasPlan, apply_bias
from attnlens.steering.guide import guide_plan
from attnlens.api.pasta import PASTA
from attnlens.core.errors import HeadConfigError
from attnlens.prompts.prompt import locate_substrings as locate
from attnlens.steering.pasta import load_head_config, normalize_head_config, pasta, pasta_plan

TEXT = (
    "Mary is a doctor. She obtains her bachelor degree from UCSD. "
    "Answer the occupation of Mary and generate the answer as json format."
)
INSTRUCTION = "Answer the occupation of Mary and generate the answer as json format"


# ----------------------------------------------------------------------------- head configs


def test_head_config_forms():
    assert normalize_head_config({"3": [2, 1, 2], 5: [0]}, 30, 9) == {3: (1, 2), 5: (0,)}
    assert normalize_head_config([7, 0], 30, 9) == {0: tuple(range(9)), 7: tuple(range(9))}
    assert normalize_head_config({" 4 ": "all", 1: None}, 30, 9) == {1: tuple(range(9)), 4: tuple(range(9))}


@pytest.mark.parametrize(
    "config, words",
    [
        ({"30": [0]}, ["layer", "30", "30 layers"]),
        ({"2": [9]}, ["head 9", "layer 2", "9 heads"]),
        ({"-1": [0]}, ["layer", "-1"]),
        ({"2": []}, ["empty head list"]),
        ({}, ["empty"]),
        ({"x": [0]}, ["'x'", "not an integer"]),
        ({"2": [1.5]}, ["1.5"]),
        ({"2": 3}, ["list of integers"]),
        (3, ["head_config"]),
    ],
)
def test_head_config_errors(config, words):
    with pytest.raises(HeadConfigError) as err:
        normalize_head_config(config, 30, 9)
    for word in words:
        assert word in str(err.value)
    assert isinstance(err.value, AttnlensError)


def test_load_head_config_pastalib_file(tmp_path, tiny):
    # the layout of pastalib's published files: string layer keys, ranked order
    path = tmp_path / "top5_json_train1000.json"
    path.write_text('{"2": [3], "0": [1], "1": [0, 2]}')
    assert load_head_config(path) == {"2": [3], "0": [1], "1": [0, 2]}
    steerer = PASTA(tiny, head_config=str(path))
    assert steerer.head_config == {0: (1,), 1: (0, 2), 2: (3,)}
    with pytest.raises(HeadConfigError, match="not valid JSON"):
        (tmp_path / "bad.json").write_text("{2: [1]")
        load_head_config(tmp_path / "bad.json")
    with pytest.raises(HeadConfigError, match="cannot read"):
        load_head_config(tmp_path / "missing.json")
    (tmp_path / "big.json").write_text('{"3": [0]}')  # the tiny model has 3 layers
    with pytest.raises(HeadConfigError, match="out of range"):
        PASTA(tiny, head_config=tmp_path / "big.json")


# ----------------------------------------------------------------------------- the bias, head by head


def _bias_added(model, tokens, plan, layers):
    """What ``plan`` adds to each layer's pre-softmax scores, read before and after its hook in one pass."""
    before, after = {}, {}

    def keeper(store):
        def keep(scores, hook):
            store[int(hook.name.split(".")[1])] = scores.detach().clone()

        return keep

    names = [f"blocks.{l}.attn.hook_attn_scores" for l in layers]
    with torch.no_grad(), model.hooks(fwd_hooks=[(n, keeper(before)) for n in names]):
        with apply_bias(model, plan), model.hooks(fwd_hooks=[(n, keeper(after)) for n in names]):
            model(tokens)
    return {l: after[l] - before[l] for l in layers}


@pytest.mark.parametrize("scale_position", ["exclude", "include"])
def test_bias_on_chosen_heads_only(tiny, scale_position):
    tokens = torch.randint(0, 1000, (1, 10))
    spans = [(2, 4), (6, 8)]
    config = {0: [1, 3], 2: [0]}
    alpha = 0.05
    added = _bias_added(tiny, tokens, pasta_plan(tiny, spans, config, alpha, scale_position), range(3))
    in_span = torch.zeros(10, dtype=torch.bool)
    for s, e in spans:
        in_span[s:e] = True
    expected_keys = ~in_span if scale_position == "exclude" else in_span
    value = math.log(alpha) if scale_position == "exclude" else math.log(1 / alpha)
    causal = torch.ones(10, 10, dtype=torch.bool).tril()
    for layer in range(3):
        diff = added[layer]  # [1, heads, q, k]
        for head in range(4):
            d = diff[0, head][causal]
            if head in config.get(layer, []):
                want = (expected_keys.float() * value).expand(10, 10)[causal]
                assert torch.allclose(d, want, atol=1e-5), (layer, head)
            else:
                assert d.abs().max() == 0, (layer, head)


def test_generated_keys_are_never_scaled(tiny):
    tokens = torch.randint(0, 1000, (1, 8))
    alpha = 0.1
    before, after = [], []
    name = "blocks.1.attn.hook_attn_scores"
    with torch.no_grad(), tiny.hooks(fwd_hooks=[(name, lambda s, hook: before.append(s.detach().clone()))]):
        with pasta(tiny, [(2, 5)], {1: [2]}, alpha=alpha):
            with tiny.hooks(fwd_hooks=[(name, lambda s, hook: after.append(s.detach().clone()))]):
                tiny.generate(tokens, max_new_tokens=4, do_sample=False, verbose=False, stop_at_eos=False)
    assert [s.shape[-2:] for s in after] == [(8, 8), (1, 9), (1, 10), (1, 11)]  # prefill, then cached steps
    diff = (after[-1] - before[-1])[0, :, 0]  # the last decoding step: [heads, 11 keys]
    want = torch.tensor([math.log(alpha)] * 2 + [0.0] * 3 + [math.log(alpha)] * 3 + [0.0] * 3)
    # the prompt's non-span keys are scaled; keys 8..10 are generated tokens and are not
    assert torch.allclose(diff[2], want, atol=1e-5)
    assert diff[[0, 1, 3]].abs().max() == 0


def test_seq_len_bounds_the_exclude_region(tiny):
    plan = pasta_plan(tiny, [(1, 3)], [0], 0.5, seq_len=6)
    assert [(t.start, t.end) for t in plan.terms] == [(0, 1), (3, 6)]
    open_plan = pasta_plan(tiny, [(1, 3)], [0], 0.5)
    assert [(t.start, t.end) for t in open_plan.terms] == [(0, 1), (3, None)]
    # layers with the same heads share a term; all heads -> no head restriction
    plan = pasta_plan(tiny, [(1, 3)], {0: [1], 2: [1], 1: [0, 1, 2, 3]}, 0.5, seq_len=6)
    assert {(t.layers, t.heads) for t in plan.terms} == {((0, 2), (1,)), ((1,), None)}


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("alpha", [0, -0.5, 1.5, float("nan"), "0.1", True])
def test_bad_alpha_for_exclude(tiny, alpha):
    with pytest.raises(AttnlensError, match="alpha"):
        PASTA(tiny, [0], alpha=alpha)
    with pytest.raises(AttnlensError, match="alpha"):
        pasta_plan(tiny, [(0, 2)], [0], alpha=alpha)


def test_alpha_for_include(tiny):
    assert PASTA(tiny, [0], alpha=4.0, scale_position="include").alpha == 4.0
    with pytest.raises(AttnlensError, match="alpha must be > 0"):
        PASTA(tiny, [0], alpha=0.0, scale_position="include")
    assert PASTA(tiny, [0], alpha=1.0).plan([(0, 2)]).terms == []  # log(1) = 0: nothing to do


def test_bad_scale_position_and_spans(tiny):
    with pytest.raises(AttnlensError, match="unknown scale_position 'generation'"):
        PASTA(tiny, [0], scale_position="generation")
    with pytest.raises(SpanError, match="at least one span"):
        pasta_plan(tiny, [], [0])
    with pytest.raises(SpanError, match="row 1 has no span"):
        pasta_plan(tiny, [[(0, 2)], []], [0])
    with pytest.raises(SpanError, match="empty or negative"):
        pasta_plan(tiny, [(4, 2)], [0])
    with pytest.raises(SpanError, match="runs past the prompt of 6 tokens"):
        pasta_plan(tiny, [(3, 7)], [0], seq_len=6)
    with pytest.raises(SpanError, match="not a \\(start, end\\) pair"):
        pasta_plan(tiny, [(1, 2), "x"], [0])
    # beyond the tokens actually given to the model: raised at the forward pass
    with pytest.raises(SpanError, match="sequence has 5 tokens"):
        with torch.no_grad(), pasta(tiny, [(3, 7)], [0]):
            tiny(torch.randint(0, 1000, (1, 5)))


# ----------------------------------------------------------------------------- substrings


def test_substrings_to_token_spans(tokenizer):
    text = "Keep it short. Use French. Then keep it short again."
    located = locate(tokenizer, text, ["Use French", "keep it short"])
    enc = tokenizer(text, return_offsets_mapping=True)
    pieces = [text[a:b] for a, b in enc["offset_mapping"]]
    (s1, e1), (s2, e2) = located.spans
    assert "".join(pieces[s1:e1]).strip() == "Use French"
    assert "".join(pieces[s2:e2]).strip() == "keep it short"
    # occurrence: case-sensitive "short" occurs twice; -1 is the last, None all of them
    first = locate(tokenizer, text, "short").spans
    last = locate(tokenizer, text, "short", occurrence=-1).spans
    both = locate(tokenizer, text, "short", occurrence=None).spans
    assert both == first + last and first != last
    assert locate(tokenizer, text, [("short", 1)]).spans == last
    with pytest.raises(SpanError, match="'German' does not occur"):
        locate(tokenizer, text, ["Use French", "German"])
    with pytest.raises(SpanError, match="occurs 2 time"):
        locate(tokenizer, text, "short", occurrence=2)
    with pytest.raises(SpanError, match="at least one substring"):
        locate(tokenizer, text, [])


def test_substrings_in_a_chat_skip_the_template(tokenizer):
    # "user" occurs in the template's role markers; only the message content counts
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Ask the user twice: user?"}]
    located = locate(tokenizer, chat, "user", occurrence=None)
    assert len(located.spans) == 2
    enc = tokenizer(located.text, add_special_tokens=False, return_offsets_mapping=True)
    start = located.text.index("Ask the user")
    for s, e in located.spans:
        assert enc["offset_mapping"][s][0] >= start - 1
    assert located.input_ids == enc["input_ids"]
    with pytest.raises(SpanError, match="any message of the chat"):
        locate(tokenizer, chat, "assistant")


# ----------------------------------------------------------------------------- composition


def test_pasta_and_guide_add_up(tiny):
    tokens = torch.randint(0, 1000, (1, 12))
    g_spans, p_spans = [(1, 3)], [(5, 9)]
    with torch.no_grad():
        with al.guide(tiny, g_spans, delta=2.0, layers=[0, 2]):
            with pasta(tiny, p_spans, {1: [0, 3], 2: [2]}, alpha=0.05):
                both = tiny(tokens)
        merged = guide_plan(tiny, g_spans, 2.0, [0, 2]).extend(pasta_plan(tiny, p_spans, {1: [0, 3], 2: [2]}, 0.05))
        with apply_bias(tiny, merged):
            single = tiny(tokens)
        with al.guide(tiny, g_spans, delta=2.0, layers=[0, 2]):
            guide_only = tiny(tokens)
        with pasta(tiny, p_spans, {1: [0, 3], 2: [2]}, alpha=0.05):
            pasta_only = tiny(tokens)
    assert torch.allclose(both, single, atol=1e-5)
    assert (both - guide_only).abs().max() > 1e-3
    assert (both - pasta_only).abs().max() > 1e-3


def test_pasta_generate_with_a_guide_plan(tiny):
    steerer = PASTA(tiny, {1: [1]}, alpha=0.01)
    text = "Paris is big. Rewrite in French please."
    located = steerer.locate(text, "Rewrite in French")
    g = guide_plan(tiny, [(0, 2)], 3.0)
    ours = steerer.generate(text, "Rewrite in French", plans=[g], max_new_tokens=5, stop_at_eos=False)
    merged = steerer.plan(list(located.spans), seq_len=len(located)).extend(g)
    ref = generate_batch(tiny, [located.input_ids], [merged], max_new_tokens=5, stop_at_eos=False)[0]
    assert ours == tiny.tokenizer.decode(ref, skip_special_tokens=True)


# ----------------------------------------------------------------------------- the embedded model vs pastalib


@pytest.fixture(scope="module")
def hf_pair(embedded):
    """The embedded model as plain HF with eager attention (pastalib's kind of model)."""
    from attnlens.runtime.models import load_embedded_hf

    hf, _ = load_embedded_hf(attn_implementation="eager")
    return embedded, hf


def _pastalib(hf, tokenizer, head_config, alpha=0.01, scale_position="exclude"):
    """pastalib's steerer. Runs unchanged on transformers 5 for LLaMA models: its pre-forward
    hook finds the 4-D mask in the attention's ``attention_mask`` keyword and edits it."""
    from pastalib.pasta import PASTA as PastalibPASTA

    return PastalibPASTA(hf, tokenizer, head_config=head_config, alpha=alpha, scale_position=scale_position)


@pytest.mark.embedded
def test_logprobs_equal_pastalib(hf_pair):
    bridge, hf = hf_pair
    head_config = {"3": [1, 2], "5": [0, 4], "11": list(range(9)), "20": [8]}
    ref = _pastalib(hf, bridge.tokenizer, head_config)
    # the same tokens on both sides: pastalib tokenizes with the bridge's tokenizer
    inputs, offsets = ref.inputs_from_batch([TEXT], tokenizer=bridge.tokenizer)
    steerer = PASTA(bridge, head_config, alpha=0.01, scale_position="exclude")
    located = steerer.locate(TEXT, INSTRUCTION)
    assert located.input_ids == inputs["input_ids"][0].tolist()
    with torch.no_grad():
        with ref.apply_steering(hf, strings=[TEXT], substrings=[INSTRUCTION], model_input=inputs,
                                offsets_mapping=offsets) as steered_hf:
            theirs = steered_hf(**inputs).logits.log_softmax(-1)
        plain = hf(**inputs).logits.log_softmax(-1)
        with steerer.steer(list(located.spans)):
            ours = bridge(torch.tensor([located.input_ids])).log_softmax(-1)
    assert (ours - theirs).abs().max() < 1e-4
    assert (theirs - plain).abs().max() > 0.1  # the steering did something


@pytest.mark.embedded
def test_batched_generation_equals_pastalib(hf_pair):
    bridge, hf = hf_pair
    head_config = {"4": [0, 3], "9": [5], "14": [2, 7]}
    texts = [TEXT, "Tom is a pilot. He studied at MIT. Tell me his job in one word."]
    subs = [INSTRUCTION, "Tell me his job in one word"]
    ref = _pastalib(hf, bridge.tokenizer, head_config)
    inputs, offsets = ref.inputs_from_batch(texts, tokenizer=bridge.tokenizer)
    with torch.no_grad(), ref.apply_steering(hf, strings=texts, substrings=subs, model_input=inputs,
                                             offsets_mapping=offsets) as steered_hf:
        out = steered_hf.generate(**inputs, max_new_tokens=8, min_new_tokens=8, do_sample=False,
                                  pad_token_id=bridge.tokenizer.eos_token_id)
    theirs = [bridge.tokenizer.decode(row[inputs["input_ids"].shape[1]:], skip_special_tokens=True) for row in out]
    ours = PASTA(bridge, head_config).generate(texts, [[s] for s in subs], max_new_tokens=8, stop_at_eos=False)
    assert ours == theirs
    # per-row spans: each row alone gives the same text as in the batch
    assert PASTA(bridge, head_config).generate(texts[1], subs[1], max_new_tokens=8, stop_at_eos=False) == ours[1]


# ----------------------------------------------------------------------------- CLI


@pytest.mark.embedded
def test_cli_generate_with_pasta_heads(tmp_path, embedded, capsys, monkeypatch):
    from attnlens import cli

    heads = tmp_path / "heads.json"
    heads.write_text(json.dumps({"3": [1, 2], "5": [0, 4]}))
    monkeypatch.setattr(cli, "_load", lambda args: embedded)
    code = cli.main(["generate", TEXT, "--pasta-heads", str(heads), "--emphasize", INSTRUCTION,
                     "--emphasize", "Mary", "--alpha", "0.02", "--max-new-tokens", "8", "--json", "--chat"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    steerer = PASTA(embedded, str(heads), alpha=0.02)
    want = steerer.generate([{"role": "user", "content": TEXT}], [INSTRUCTION, "Mary"], max_new_tokens=8)
    assert result["steered"] == want
    assert len(result["pasta_spans"]) == 2
    assert cli.main(["generate", TEXT, "--emphasize", "Mary"]) == 2
    assert "--pasta-heads" in capsys.readouterr().err
    assert cli.main(["generate", TEXT, "--pasta-heads", str(heads), "--emphasize", "Zebra"]) == 2
    assert "'Zebra' does not occur" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the demo


@pytest.mark.notebook
def test_02_pasta_notebook():
    from test_notebooks import fresh, outputs_text

    text = outputs_text(fresh("02_pasta.ipynb"))  # executed once per session (test_notebooks runs it too)
    for label in ("unsteered:", "steered:", "baseline", "top heads"):
        assert label in text
    assert "steered output differs from the unsteered one: True" in text


@pytest.mark.embedded
def test_pastalib_code_through_the_compat_class_equals_pastalib(hf_pair):
    """pastalib's own calls, with only the import changed, give pastalib's numbers and text."""
    from attnlens.api.compat.pastalib import PASTA as CompatPASTA

    bridge, hf = hf_pair
    head_config = {"4": [0, 3], "9": [5], "14": [2, 7]}
    texts = [TEXT, "Tom is a pilot. He studied at MIT. Tell me his job in one word."]
    subs = [INSTRUCTION, "Tell me his job in one word"]
    outputs = []
    for cls, model in ((_pastalib, hf), (CompatPASTA, bridge)):
        pasta = cls(model, bridge.tokenizer, head_config=head_config, alpha=0.01, scale_position="exclude")
        inputs, offsets = pasta.inputs_from_batch(texts)
        with torch.no_grad(), pasta.apply_steering(model=model, strings=texts, substrings=subs, model_input=inputs,
                                                   offsets_mapping=offsets) as steered:
            logits = steered(**inputs).logits.log_softmax(-1)
            out = steered.generate(**inputs, max_new_tokens=8, min_new_tokens=8, do_sample=False,
                                   pad_token_id=bridge.tokenizer.eos_token_id)
        outputs.append((inputs["attention_mask"].bool(), logits, out))
    (mask, theirs, their_out), (_, ours, our_out) = outputs
    assert (ours[mask] - theirs[mask]).abs().max() < 1e-4
    assert torch.equal(our_out, their_out)
