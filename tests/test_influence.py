"""Influence and attention rollout: the streaming core against an obvious implementation,
its options, steering, the pipeline's <?-> tags, the views, the CLI and the demo notebook."""

from __future__ import annotations

import json
import re
import weakref

import pytest
import torch

import attnlens as al
from attnlens.attribution import trace_influence
from attnlens.core.errors import AttnlensError, SpanError
from attnlens.runtime.fused import fused_attention

PROMPT = "Rewrite in French: Paris is the most visited city in the world."


# ----------------------------------------------------------------------------- the obvious implementation


def naive_influence(model, tokens, span, method="influence", *, use_values=False, per_head=False):
    """Cache every activation with run_with_cache, then loop over layers in float64."""
    tokens = torch.as_tensor(tokens).reshape(1, -1)
    _, cache = model.run_with_cache(tokens)
    seq = tokens.shape[1]
    current = torch.zeros(seq, dtype=torch.float64)
    current[span[0] : span[1]] = 1.0
    rows = [current.expand(model.cfg.n_heads, seq) if per_head else current]

    def mix(prev, att, x_norm, a_norm):
        if method == "rollout":
            return (prev + att) / 2
        return (x_norm * prev + a_norm * att) / (x_norm + a_norm)

    for layer in range(model.cfg.n_layers):
        x = cache[f"blocks.{layer}.hook_resid_pre"][0].double()
        a = cache[f"blocks.{layer}.hook_attn_out"][0].double()
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"][0].double()  # [head, q, k]
        x_norm, a_norm = x.abs().sum(-1), a.abs().sum(-1)
        v_abs = cache[f"blocks.{layer}.attn.hook_v"][0].double().abs().sum(-1)  # [k, kv_head]

        def attend(A, w):
            if w is None:
                return A @ current
            return ((A * w) @ current) / (A @ w)

        A = pattern.mean(0)
        att = attend(A, v_abs.sum(-1) if use_values else None)
        new = mix(current, att, x_norm, a_norm)
        if per_head:
            n_heads, n_kv = pattern.shape[0], v_abs.shape[-1]
            group = n_heads // n_kv
            rows.append(torch.stack([
                mix(current, attend(pattern[h], v_abs[:, h // group] if use_values else None), x_norm, a_norm)
                for h in range(n_heads)
            ]))
        else:
            rows.append(new)
        current = new
    return torch.stack(rows)


def assert_close(actual, expected, rtol=1e-6):
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol, atol=1e-9)


def tokens_of(model, text=PROMPT):
    return torch.tensor(model.tokenizer(text)["input_ids"])


def hook_count(model):
    return sum(len(hp.fwd_hooks) for hp in {id(h): h for h in model.hook_dict.values()}.values())


# ----------------------------------------------------------------------------- unit tests (tiny model)


@pytest.mark.parametrize("method", ["influence", "rollout"])
@pytest.mark.parametrize("use_values", [False, True])
def test_tiny_matches_naive(tiny, method, use_values):
    tokens = tokens_of(tiny)
    got = al.influence(tiny, tokens, span=(2, 5), method=method, use_values=use_values)
    assert got.shape == (tiny.cfg.n_layers + 1, len(tokens))
    assert got.dtype == torch.float32
    assert_close(got, naive_influence(tiny, tokens, (2, 5), method, use_values=use_values))


@pytest.mark.parametrize("use_values", [False, True])
def test_tiny_per_head_matches_naive(tiny, use_values):
    tokens = tokens_of(tiny)
    got = al.influence(tiny, tokens, (1, 4), per_head=True, use_values=use_values)
    assert got.shape == (tiny.cfg.n_layers + 1, tiny.cfg.n_heads, len(tokens))
    assert_close(got, naive_influence(tiny, tokens, (1, 4), per_head=True, use_values=use_values))


@pytest.mark.parametrize("method", ["influence", "rollout"])
def test_per_head_mean_is_the_layer_influence(tiny, method):
    tokens = tokens_of(tiny)
    heads = al.influence(tiny, tokens, (3, 6), method=method, per_head=True)
    layer = al.influence(tiny, tokens, (3, 6), method=method)
    assert_close(heads.mean(1), layer)
    # the heads do differ from one another
    assert (heads[1:].amax(1) - heads[1:].amin(1)).max() > 1e-3


def test_properties_of_the_result(tiny):
    tokens = tokens_of(tiny)
    start, end = 4, 7
    for method in ("influence", "rollout"):
        got = al.influence(tiny, tokens, (start, end), method=method)
        indicator = torch.zeros(len(tokens))
        indicator[start:end] = 1
        assert torch.equal(got[0], indicator)
        # causal: nothing reaches the positions before the span
        assert torch.all(got[:, :start] == 0)
        # a convex mix of values in [0, 1] stays there, and the span reaches later positions
        assert got.min() >= 0 and got.max() <= 1 + 1e-6
        assert torch.all(got[1:, end:] > 0)


def test_influence_and_rollout_differ(tiny):
    tokens = tokens_of(tiny)
    inf = al.influence(tiny, tokens, (0, 3))
    rol = al.influence(tiny, tokens, (0, 3), method="rollout")
    assert torch.equal(inf[0], rol[0])
    assert (inf[-1] - rol[-1]).abs().max() > 1e-3


def test_several_spans_in_one_pass(tiny):
    tokens = tokens_of(tiny)
    spans = [(0, 2), (3, 6), (8, 9)]
    together = al.influence(tiny, tokens, spans=spans, method="rollout")
    assert together.shape == (3, tiny.cfg.n_layers + 1, len(tokens))
    for i, span in enumerate(spans):
        assert_close(together[i], al.influence(tiny, tokens, span, method="rollout"))
    # one forward pass for all spans and both methods
    calls = []
    handle = tiny.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        trace = trace_influence(tiny, tokens, spans, methods=("influence", "rollout"))
    finally:
        handle.remove()
    assert len(calls) == 1
    assert trace.methods == ("influence", "rollout")
    assert_close(trace["rollout"], together)
    assert_close(trace["influence"][1], al.influence(tiny, tokens, spans[1]))


def test_token_forms_agree(tiny):
    tokens = tokens_of(tiny)
    reference = al.influence(tiny, tokens, (1, 3))
    assert torch.equal(al.influence(tiny, tokens[None], (1, 3)), reference)
    assert torch.equal(al.influence(tiny, tokens.tolist(), (1, 3)), reference)
    assert torch.equal(al.rollout(tiny, tokens, (1, 3)), al.influence(tiny, tokens, (1, 3), method="rollout"))


def test_left_padding_with_attention_mask(tiny):
    tokens = tokens_of(tiny)
    pad = 3
    padded = torch.cat([torch.full((pad,), tiny.tokenizer.eos_token_id), tokens])
    mask = torch.cat([torch.zeros(pad, dtype=torch.long), torch.ones(len(tokens), dtype=torch.long)])
    plain = al.influence(tiny, tokens, (2, 5))
    shifted = al.influence(tiny, padded, (2 + pad, 5 + pad), attention_mask=mask)
    assert torch.all(shifted[:, :pad] == 0)
    # rotary positions are relative: shifting the real tokens changes nothing
    torch.testing.assert_close(shifted[:, pad:], plain, rtol=1e-4, atol=1e-5)


def test_runs_without_grad_and_leaves_no_hooks(tiny):
    tokens = tokens_of(tiny)
    before = hook_count(tiny)
    out = al.influence(tiny, tokens, (0, 2))
    assert not out.requires_grad
    assert hook_count(tiny) == before
    bad = tokens.clone()
    bad[3] = tiny.cfg.d_vocab + 100  # fails inside the forward pass
    with pytest.raises(Exception):
        al.influence(tiny, bad, (0, 2))
    assert hook_count(tiny) == before


def test_holds_no_pattern_after_its_layer(tiny):
    """The hooks keep numbers, never a layer's pattern: every pattern is freed after the pass."""
    refs = []

    def keep_ref(pattern, hook):
        refs.append(weakref.ref(pattern))

    tokens = tokens_of(tiny)
    with tiny.hooks(fwd_hooks=[(f"blocks.{l}.attn.hook_pattern", keep_ref) for l in range(tiny.cfg.n_layers)]):
        trace_influence(tiny, tokens, [(0, 2)], methods=("influence", "rollout"), use_values=True, per_head=True)
    assert len(refs) == tiny.cfg.n_layers
    assert all(ref() is None for ref in refs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(span=(3, 3)), "empty"),
        (dict(span=(5, 2)), "empty"),
        (dict(span=(-1, 2)), "negative"),
        (dict(span=(0, 999)), "runs past the sequence"),
        (dict(span=(0, 2), spans=[(0, 1)]), "not both"),
        (dict(), "needs a span"),
        (dict(spans=[]), "spans is empty"),
        (dict(span=(0, 1.5)), "integers"),
        (dict(span=(0, 1, 2)), r"\(start, end\) pair"),
        (dict(span=(0, 2), method="flow"), "unknown influence method"),
        (dict(span=(0, 2), attention_mask=[1, 1]), "attention_mask"),
    ],
)
def test_bad_input(tiny, kwargs, match):
    tokens = tokens_of(tiny)
    with pytest.raises(AttnlensError, match=match):
        al.influence(tiny, tokens, **kwargs)


def test_bad_tokens(tiny):
    with pytest.raises(AttnlensError, match="empty"):
        al.influence(tiny, [], (0, 1))
    with pytest.raises(AttnlensError, match="shape"):
        al.influence(tiny, torch.ones(2, 5, dtype=torch.long), (0, 1))
    with pytest.raises(AttnlensError, match="integer token ids"):
        al.influence(tiny, torch.ones(5), (0, 1))
    with pytest.raises(AttnlensError, match="list of ints"):
        al.influence(tiny, 3.5, (0, 1))  # (a string is text: tokenized with the model's tokenizer)
    with pytest.raises(SpanError):
        al.influence(tiny, [1, 2, 3], (2, 4))


# ----------------------------------------------------------------------------- the embedded model


@pytest.mark.embedded
def test_embedded_matches_naive(embedded):
    tokens = tokens_of(embedded)
    span = (0, 5)  # "Rewrite in French:"
    with fused_attention(False):  # the hook path reads the bridge's own patterns, as the naive loop does
        trace = trace_influence(embedded, tokens, [span], methods=("influence", "rollout"))
        values = al.influence(embedded, tokens, span, use_values=True)
    for method in ("influence", "rollout"):
        got = trace[method][0]
        assert got.shape == (embedded.cfg.n_layers + 1, len(tokens))
        assert_close(got, naive_influence(embedded, tokens, span, method))
    assert_close(values, naive_influence(embedded, tokens, span, use_values=True))
    fused = trace_influence(embedded, tokens, [span], methods=("influence", "rollout"))  # sdpa's float32 sums
    for method in ("influence", "rollout"):
        assert (fused[method] - trace[method]).abs().max() < 1e-4
    assert (values[-1] - trace["influence"][0][-1]).abs().max() > 1e-4


@pytest.mark.embedded
def test_embedded_influence_under_guide(embedded):
    tokens = tokens_of(embedded)
    span = (0, 5)
    outside = al.influence(embedded, tokens, span)
    with al.guide(embedded, [span], delta=3.0):
        inside = al.influence(embedded, tokens, span)
        naive_inside = naive_influence(embedded, tokens, span)
    assert_close(inside, naive_inside)
    # GUIDE raises the attention paid to the span, so the span reaches the last token more
    assert inside[-1, -1] > outside[-1, -1] + 1e-3
    assert_close(al.influence(embedded, tokens, span), outside)  # the steering hooks are gone


# ----------------------------------------------------------------------------- pipeline


@pytest.mark.embedded
def test_pipeline_reports_influence_per_tagged_span(embedded):
    pipe = al.pipeline("pay-attention", model=embedded)
    text = "<?-> Rewrite in French <-?> Paris is the most <?->visited city<-?> in the world."
    out = pipe(text, max_new_tokens=4)
    assert isinstance(out[0]["generated_text"], str)
    entries = out[0]["influence"]
    assert [e["text"] for e in entries] == ["Rewrite in French", "visited city"]  # padding inside tags is markup
    prompt = pipe.prepare(text)
    n = len(prompt.input_ids)
    for entry, span in zip(entries, prompt.influence_spans()):
        assert (entry["start"], entry["end"]) == (span.start, span.end)
        assert entry["tensor"].shape == (embedded.cfg.n_layers + 1, n)
        assert entry["prompt_length"] == n and len(entry["tokens"]) == n
        assert_close(entry["tensor"], al.influence(embedded, prompt.input_ids, (span.start, span.end)))
    assert "visited" in "".join(entries[1]["tokens"][entries[1]["start"] : entries[1]["end"]])


@pytest.mark.embedded
def test_pipeline_influence_under_guide_tags_and_over_generation(embedded):
    pipe = al.pipeline("pay-attention", model=embedded, delta_mid=2.0)
    text = "<?-> Rewrite in French <-?> <!!->Paris is the most visited city<-!!> in the world."
    out = pipe(text, max_new_tokens=3, influence_generated=True, influence_method="rollout")
    entry = out[0]["influence"][0]
    prompt = pipe.prepare(text)
    guide_span = prompt.guide_spans()[0]
    seq = entry["tensor"].shape[-1]
    tokens = entry["token_ids"]
    assert seq == len(tokens) > len(prompt.input_ids)  # generated tokens are covered
    assert tokens[: len(prompt.input_ids)] == prompt.input_ids
    assert embedded.tokenizer.decode(tokens[len(prompt.input_ids) :], skip_special_tokens=True) == out[0]["generated_text"]
    assert entry["method"] == "rollout" and len(entry["tokens"]) == seq
    with al.guide(embedded, [(guide_span.start, guide_span.end)], delta=2.0):
        expected = al.influence(embedded, tokens, (entry["start"], entry["end"]), method="rollout")
    assert_close(entry["tensor"], expected)
    unsteered = al.influence(embedded, tokens, (entry["start"], entry["end"]), method="rollout")
    assert (entry["tensor"] - unsteered).abs().max() > 1e-4


@pytest.mark.embedded
def test_pipeline_influence_errors(embedded):
    pipe = al.pipeline("pay-attention", model=embedded)
    with pytest.raises(AttnlensError, match="no influence tag"):
        pipe("Paris is big.", max_new_tokens=1, influence=True)
    with pytest.raises(AttnlensError, match="no input has an influence tag"):
        pipe("Paris is big.", max_new_tokens=1, influence_generated=True)
    with pytest.raises(AttnlensError, match="unknown influence_method"):
        pipe("<?->Paris<-?> is big.", max_new_tokens=1, influence_method="flow")
    plain = pipe("Paris is big.", max_new_tokens=1)
    assert "influence" not in plain[0]


# ----------------------------------------------------------------------------- views


def test_influence_views(tiny, tmp_path):
    from attnlens import viz

    tokens = tokens_of(tiny)
    trace = trace_influence(tiny, tokens, [(0, 4)], methods=("influence", "rollout"))
    curves = {m: trace[m][0] for m in trace.methods}
    str_tokens = [tiny.tokenizer.decode([t]) for t in tokens.tolist()]
    fig = viz.influence_figure(curves, str_tokens, positions=[len(tokens) - 1, 5])
    assert len(fig.data) == 4
    last = [t for t in fig.data if t.name.startswith("influence") and f"pos {len(tokens) - 1} " in t.name]
    assert len(last) == 1
    assert list(last[0].y) == pytest.approx(curves["influence"][:, -1].tolist())
    assert list(last[0].x) == list(range(-1, tiny.cfg.n_layers))

    view = viz.influence_view(curves, str_tokens, title="instruction")
    html_path = view.save(tmp_path / "inf.html")
    text = html_path.read_text()
    assert re.search(r"<script[^>]*\bsrc=", text) is None  # every script is inlined: renders offline
    assert "ColoredTokens" in text and "Plotly.newPlot" in text
    assert view.data["final"]["influence"] == pytest.approx(curves["influence"][-1].tolist(), abs=1e-4)
    with pytest.raises(AttnlensError, match="position"):
        viz.influence_figure(curves, str_tokens, positions=[99])
    with pytest.raises(AttnlensError, match="tokens"):
        viz.influence_view(curves, str_tokens[:-1])


# ----------------------------------------------------------------------------- CLI


@pytest.fixture
def cli_model(embedded, monkeypatch):
    from attnlens import cli

    monkeypatch.setattr(cli, "_load", lambda args: embedded)
    return embedded


@pytest.mark.embedded
def test_cli_influence_json_and_plot(cli_model, capsys, tmp_path):
    from attnlens.cli import main

    plot = tmp_path / "influence.html"
    prompt = "<?-> Summarize in French <-?> Paris is the most visited city in the world."
    assert main(["influence", prompt, "--method", "both", "--raw", "--json", "--plot", str(plot)]) == 0
    result = json.loads(capsys.readouterr().out)
    (span,) = result["spans"]
    assert span["text"] == "Summarize in French" and result["prompt_format"] == "raw"
    n_layers = cli_model.cfg.n_layers
    assert len(span["influence"]) == n_layers + 1 and len(span["rollout"]) == n_layers + 1
    assert len(span["influence"][0]) == len(result["tokens"])
    tokens = cli_model.tokenizer(result["prompt"])["input_ids"]
    expected = al.influence(cli_model, tokens, (span["start"], span["end"]))
    assert torch.tensor(span["influence"]) == pytest.approx(expected, abs=1e-5)
    html = plot.read_text()
    assert "Plotly.newPlot" in html and "ColoredTokens" in html


@pytest.mark.embedded
def test_cli_influence_text_and_errors(cli_model, capsys):
    from attnlens.cli import main

    assert main(["influence", "<?->Be brief.<-?> What is Paris?", "--method", "rollout"]) == 0
    out = capsys.readouterr().out
    assert "Be brief." in out and "rollout" in out and "last token" in out
    assert main(["influence", "What is Paris?"]) == 2
    assert "no influence tag" in capsys.readouterr().err


# ----------------------------------------------------------------------------- demo notebook


@pytest.mark.notebook
def test_influence_notebook():
    from test_notebooks import fresh, outputs_text

    nb = fresh("03_influence.ipynb")  # executed once per session (test_notebooks runs it too)
    text = outputs_text(nb)
    assert "influence at the last token" in text
    assert "GUIDE raises the instruction's influence at the last token: True" in text
    # the notebook shows its curves as pictures (its interactive views are saved, not embedded)
    assert any("image/png" in out.get("data", {}) for cell in nb.cells for out in cell.get("outputs", []))
