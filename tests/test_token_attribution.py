"""Token attribution methods against hand computations on the tiny model's own Hugging Face weights."""

from __future__ import annotations

import json

import pytest
import torch

import attnlens as al
from attnlens.attribution import token_methods, tokens
from attnlens.core.errors import AttnlensError

from conftest import make_tiny_hf

PROMPT = "Paris is the capital of France. The"


@pytest.fixture(scope="module")
def hf(tokenizer):
    """The same weights as the ``tiny`` bridge (same seed), used directly through Hugging Face."""
    return make_tiny_hf(tokenizer)


@pytest.fixture(scope="module")
def target(tiny):
    return tokens.make_target(tiny, PROMPT, " Paris")


def _hf_logprob(hf, target, embeds):
    """The target's log-probability from input embeddings ``[b, seq, d]``."""
    logits = hf(inputs_embeds=embeds).logits
    return tokens.logprob_of(logits, target.target, [target.n_prompt - 1] * embeds.shape[0])


def test_same_weights(tiny, hf, target):
    row = target.row
    assert torch.allclose(tiny(row, return_type="logits"), hf(row).logits, atol=1e-4)


def test_grad_x_input_matches_autograd(tiny, hf, target):
    emb = hf.get_input_embeddings()(target.row).detach().requires_grad_(True)
    f = _hf_logprob(hf, target, emb)
    (g,) = torch.autograd.grad(f.sum(), emb)
    expected = (g[0, :target.n_prompt] * emb[0, :target.n_prompt]).sum(-1).double()
    got = tokens.scores_for(tiny, "grad_x_input", target)
    assert torch.allclose(got, expected, rtol=1e-3, atol=1e-5)


def test_integrated_gradients_completeness(tiny, hf, target):
    emb = hf.get_input_embeddings()(target.row).detach()
    base_row = target.row.clone()
    base_row[0, :target.n_prompt] = token_methods.neutral_token(tiny)
    base = hf.get_input_embeddings()(base_row).detach()
    with torch.no_grad():
        gap = float(_hf_logprob(hf, target, emb) - _hf_logprob(hf, target, base))
    ig = token_methods.IntegratedGradientsMethod().token_scores(tiny, target, steps=16)
    assert ig.shape == (target.n_prompt,)
    assert abs(float(ig.sum()) - gap) <= 0.02 * abs(gap) + 1e-3, (float(ig.sum()), gap)
    coarse = token_methods.IntegratedGradientsMethod().token_scores(tiny, target, steps=1)
    grad_x = tokens.scores_for(tiny, "grad_x_input", target)
    assert not torch.allclose(coarse, grad_x)  # one midpoint step is the gradient at alpha 0.5, not at 1


def test_occlusion_matches_explicit_passes(tiny, hf, target):
    neutral = token_methods.neutral_token(tiny)
    full = target.prompt + target.target[:-1]
    expected = []
    with torch.no_grad():
        base = _hf_logprob(hf, target, hf.get_input_embeddings()(torch.tensor([full])))
        for i in range(target.n_prompt):
            row = list(full)
            row[i] = neutral
            expected.append(float(base - _hf_logprob(hf, target, hf.get_input_embeddings()(torch.tensor([row])))))
    got = tokens.scores_for(tiny, "occlusion", target)
    assert torch.allclose(got, torch.tensor(expected, dtype=torch.float64), atol=1e-4)
    dropped = token_methods.OcclusionMethod().token_scores(tiny, target, erase="drop")
    with torch.no_grad():
        row = full[1:]
        short = tokens.Target(target.prompt[1:], target.target)
        first = float(base - _hf_logprob(hf, short, hf.get_input_embeddings()(torch.tensor([row]))))
    assert abs(float(dropped[0]) - first) < 1e-4


def _hf_attention(hf, target):
    with torch.no_grad():
        out = hf(target.row, output_attentions=True, output_hidden_states=True)
    return out.attentions, out.hidden_states


def test_attention_matches_hf(tiny, hf, target):
    attentions, _ = _hf_attention(hf, target)
    pos, n = target.positions, target.n_prompt
    last = attentions[-1][0][:, pos, :n].double().mean(0).mean(0)
    every = torch.stack([a[0][:, pos, :n].double().mean(0).mean(0) for a in attentions]).mean(0)
    assert torch.allclose(tokens.scores_for(tiny, "attention", target), last, atol=1e-5)
    assert torch.allclose(tokens.scores_for(tiny, "attention_all", target), every, atol=1e-5)


def test_attention_norm_matches_weights(tiny, hf, target):
    attentions, hidden = _hf_attention(hf, target)
    cfg = hf.config
    n_heads, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    d_head = cfg.hidden_size // n_heads
    pos, n = target.positions, target.n_prompt
    per_layer = []
    with torch.no_grad():
        for layer, block in enumerate(hf.model.layers):
            x = block.input_layernorm(hidden[layer])[0]  # [seq, d_model]
            v = block.self_attn.v_proj(x).view(-1, n_kv, d_head).repeat_interleave(n_heads // n_kv, dim=1)
            w_o = block.self_attn.o_proj.weight  # [d_model, heads * d_head]
            scores = torch.zeros(len(pos), n, dtype=torch.float64)
            for ti, t in enumerate(pos):
                for j in range(n):
                    total = torch.zeros(cfg.hidden_size, dtype=torch.float64)
                    for h in range(n_heads):
                        f = w_o[:, h * d_head:(h + 1) * d_head].double() @ v[j, h].double()
                        total += attentions[layer][0, h, t, j].double() * f
                    scores[ti, j] = total.norm()
            per_layer.append(scores.mean(0))
    assert torch.allclose(tokens.scores_for(tiny, "attention_norm", target), per_layer[-1], rtol=1e-4, atol=1e-6)
    assert torch.allclose(tokens.scores_for(tiny, "attention_norm_all", target), torch.stack(per_layer).mean(0),
                          rtol=1e-4, atol=1e-6)


def test_span_methods_read_the_trace(tiny):
    ids = tiny.tokenizer(PROMPT)["input_ids"]
    record = al.attribute(tiny, ids, method="rollout")
    for i in (0, 3):
        expected = al.influence(tiny, ids, (i, i + 1), method="rollout")[-1, -1]
        assert abs(record.scores[i] - float(expected)) < 1e-5


def test_record_json_html_and_next_token(tiny, capsys):
    record = al.attribute(tiny, PROMPT + " <b>", method="occlusion")
    with torch.no_grad():
        logits = tiny(torch.tensor([record.ids]), return_type="logits")
    assert record.target_ids == [int(logits[0, -1].argmax())]
    assert abs(record.target_logprob - float(torch.log_softmax(logits[0, -1].double(), -1).max())) < 1e-4
    data = json.loads(record.to_json())
    assert data["tokens"] == record.tokens and len(data["scores"]) == len(record.ids)
    page = record._repr_html_()
    assert "&lt;" in page and "<script" not in page
    shown = record.show()  # outside a notebook: the view, returned (nothing printed)
    assert shown.body == page and capsys.readouterr().out == ""
    out = record.text()
    assert "occlusion toward" in out and len(out.splitlines()) == len(record.ids) + 1
    assert record.top(1)[0][2] == max(record.scores)


def test_bad_inputs(tiny):
    with pytest.raises(AttnlensError, match="unknown attribution method"):
        al.attribute(tiny, PROMPT, method="nope")
    with pytest.raises(AttnlensError, match="target is empty"):
        al.attribute(tiny, PROMPT, method="attention", target="")
    with pytest.raises(AttnlensError, match="not a token id"):
        al.attribute(tiny, [1, 2, 10**9], method="attention")
    with pytest.raises(AttnlensError, match="scores tokens only"):
        al.influence(tiny, tiny.tokenizer(PROMPT)["input_ids"], (0, 1), method="occlusion")
    with pytest.raises(AttnlensError, match="steps"):
        token_methods.IntegratedGradientsMethod().token_scores(tiny, tokens.make_target(tiny, PROMPT), steps=0)
    with pytest.raises(AttnlensError, match="erase"):
        token_methods.erased([1, 2], [0], erase="blank", neutral=0)


def test_token_only_methods_are_not_offered_where_spans_are_followed(capsys):
    import importlib

    from attnlens import attribution
    from attnlens.cli import main

    pipeline = importlib.import_module("attnlens.api.pipeline")

    assert "occlusion" in attribution.methods() and "grad_x_input" in attribution.methods()
    for listed in (attribution.INFLUENCE_METHODS, pipeline.INFLUENCE_METHODS, attribution.span_methods()):
        assert "influence" in listed and "rollout" in listed
        assert "occlusion" not in listed and "grad_x_input" not in listed
    with pytest.raises(SystemExit) as exited:
        main(["influence", "<?-> Paris <-?> is big", "--method", "occlusion"])
    assert exited.value.code == 2
    assert "occlusion" in capsys.readouterr().err
