"""Integration on the embedded SmolLM2-135M-Instruct: loading, GUIDE numerics, pipeline, CLI."""

import json

import pytest
import torch

import attnlens as al
from attnlens import cli
from attnlens.runtime import models
from reference import reference_guide, use_reference_attention

pytestmark = pytest.mark.embedded

CHAT = [{"role": "user", "content": "<!-> Rewrite in French: <-!> Paris is the most visited city in the world."}]


def test_embedded_model_is_a_bridge_with_hooks(embedded):
    from transformer_lens.model_bridge import TransformerBridge

    assert isinstance(embedded, TransformerBridge)
    assert (embedded.cfg.n_layers, embedded.cfg.n_heads) == (30, 9)
    assert "blocks.29.attn.hook_attn_scores" in embedded.hook_dict


def test_later_loads_read_the_cache(embedded, monkeypatch):
    directory = models.embedded_cache()
    assert (directory / "model.safetensors").is_file() and (directory / "config.json").is_file()

    def forbidden(_):
        raise AssertionError("the GGUF was dequantized again")

    monkeypatch.setattr(models, "_build_embedded_cache", forbidden)
    hf, tokenizer = models.load_embedded_hf()
    tokens = torch.tensor([tokenizer("The cache works")["input_ids"]])
    with torch.no_grad():
        ours = embedded(tokens)
        theirs = hf(tokens).logits
    assert (ours - theirs).abs().max() < 1e-3


def test_unknown_model_fails_offline_with_what_was_tried():
    with pytest.raises(al.ModelLoadError) as info:
        al.load_model("no-such-org/no-such-model-xyz")
    message = str(info.value)
    assert "no-such-org/no-such-model-xyz" in message and "tried" in message


def test_guide_logprobs_equal_reference_on_embedded(embedded):
    hf, tokenizer = models.load_embedded_hf(attn_implementation="eager")
    use_reference_attention(hf)
    prompt = al.prepare(tokenizer, [{"role": "user", "content": "<!!->Answer in French.<-!!> Where is Rome?"}],
                        delta_mid=1.5)
    tokens = torch.tensor([prompt.input_ids])
    (span,) = prompt.spans
    with torch.no_grad():
        with al.guide(embedded, [(span.start, span.end)], delta=span.delta):
            ours = embedded(tokens).log_softmax(-1)
        with reference_guide([(span.start, span.end, span.delta)]):
            ref = hf(tokens).logits.log_softmax(-1)
        plain = embedded(tokens).log_softmax(-1)
    assert (ours - ref).abs().max() < 1e-4
    assert (ours - plain).abs().max() > 0.05


def test_pipeline_steers_the_chat_example(embedded):
    pipe = al.pipeline("pay-attention", model=embedded, delta_mid=1.0)
    steered = pipe(CHAT, max_new_tokens=24)[0]
    (span,) = steered["spans"]
    assert span["text"] == "Rewrite in French:" and span["delta"] == 0.5 and span["message"] == 0
    assert embedded.tokenizer.decode(embedded.tokenizer(steered["prompt"], add_special_tokens=False)["input_ids"]
                                     ) == steered["prompt"]
    plain = pipe([{"role": "user", "content": "Rewrite in French: Paris is the most visited city in the world."}],
                 max_new_tokens=24)[0]
    assert plain["spans"] == [] and plain["prompt"] == steered["prompt"]
    assert steered["generated_text"] != plain["generated_text"]


def test_direct_generation_equals_the_bridge_on_embedded(embedded):
    from attnlens.runtime.generate import generate_batch
    from attnlens.steering.guide import guide_plan_for

    # delta 3: the clean chat prompt is followed unsteered too, so a weaker bias changes nothing in 12 tokens
    prompts = [al.prepare(embedded.tokenizer, CHAT, delta_mid=3.0),
               al.prepare(embedded.tokenizer, "<!-> Answer in one word: <-!> What colour is the sky?", delta_mid=3.0)]
    plans = guide_plan_for(embedded, prompts)
    rows = [p.input_ids for p in prompts]
    direct = generate_batch(embedded, rows, [plans], max_new_tokens=12, direct=True)
    assert direct == generate_batch(embedded, rows, [plans], max_new_tokens=12, direct=False)
    assert direct != generate_batch(embedded, rows, max_new_tokens=12, direct=True)
    # a raw text the model ends at once: without stopping, both paths go on past the end token
    row = embedded.tokenizer("Mary is a doctor. She obtains her bachelor degree from UCSD. Answer the occupation "
                             "of Mary and generate the answer as json format.")["input_ids"]
    (first,) = generate_batch(embedded, [row], max_new_tokens=6, stop_at_eos=False, direct=True)
    assert first[0] == embedded.tokenizer.eos_token_id and len(first) == 6
    assert [first] == generate_batch(embedded, [row], max_new_tokens=6, stop_at_eos=False, direct=False)
    assert generate_batch(embedded, [row], max_new_tokens=6, direct=True) == [[]]


def test_cli_generate_compare_json(embedded, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_load", lambda args: embedded)
    code = cli.main(["generate", "<!!-> Rewrite in French: <-!!> Paris is big.", "--compare", "--json",
                     "--max-new-tokens", "12"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) >= {"steered", "unsteered", "spans", "prompt"}
    assert result["spans"][0]["delta"] == 1.0 and result["spans"][0]["level"] == 2
    assert result["steered"] != result["unsteered"]


def test_cli_side_by_side(embedded, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_load", lambda args: embedded)
    assert cli.main(["generate", "<!!!->Say yes.<-!!!> Hello", "--compare", "--max-new-tokens", "6"]) == 0
    out = capsys.readouterr().out
    assert "unsteered" in out and "steered (GUIDE)" in out and " | " in out


@pytest.mark.parametrize(
    "argv, words",
    [
        (["generate", "<!->unclosed"], "unbalanced"),
        (["generate", "x", "--layers", "99"], "out of range"),
        (["generate", "x", "--raw", "--system", "s"], "--system"),
    ],
)
def test_cli_errors_are_one_line(embedded, monkeypatch, capsys, argv, words):
    monkeypatch.setattr(cli, "_load", lambda args: embedded)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("attnlens: error:") and words in err and "\n" not in err


def test_cli_rejects_bad_numbers(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["generate", "x", "--max-new-tokens", "-3"])
    assert info.value.code == 2
    assert "positive integer" in capsys.readouterr().err
