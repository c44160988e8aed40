"""AttentionData: rows, multiples and rankings against a hand computation; padding; bad input; CLI rank."""

from __future__ import annotations

import json
import logging
import re

import pytest
import torch

import attnlens as al
from attnlens import cli
from attnlens.core.errors import AttnlensError
from attnlens.analysis.multiples import Sample, TokenMultiple
from attnlens.api import AttentionData

TEXTS = [
    "The cat sat on the mat because it was tired after chasing the mouse all day.",
    "Paris is the capital of France and Rome is the capital of Italy.",
    "Water boils at one hundred degrees at sea level.",
    "Too short.",
]


def reference_pattern(model, ids: list[int], layer: int, head: int) -> torch.Tensor:
    """One text alone (no padding, no batch): the head's pattern ``[query, key]``."""
    got = {}

    def hook(pattern, hook=None):
        got["p"] = pattern[0, head].detach().double()

    with torch.no_grad():
        model.run_with_hooks(torch.tensor([ids]), fwd_hooks=[(f"blocks.{layer}.attn.hook_pattern", hook)])
    return got["p"]


def hand_samples(model, texts, layer, head, *, min_length, max_length, suppress):
    """Rows computed with plain loops, text by text: {(text, query): [(key, multiple), ...]}."""
    out = {}
    for t, text in enumerate(texts):
        ids = model.tokenizer(text)["input_ids"][:max_length]
        p = reference_pattern(model, ids, layer, head)
        for i in range(max(min_length, 1 if suppress else 0), len(ids)):
            keys = range(1 if suppress else 0, i + 1)
            average = sum(float(p[i, k]) for k in keys) / len(keys)
            pairs = [(k, float(p[i, k]) / average) for k in keys if float(p[i, k]) / average > 1]
            if pairs:
                out[(t, i)] = sorted(pairs, key=lambda kv: -kv[1])
    return out


@pytest.fixture(scope="module")
def ad(tiny):
    return AttentionData(tiny, text_batch=TEXTS, min_length=4, max_length=14, seed=0, batch_size=2)


@pytest.mark.parametrize("suppress", [True, False])
def test_samples_match_hand_computation_despite_padding(tiny, suppress, caplog):
    with caplog.at_level(logging.WARNING, logger="attnlens.analysis.attention_data"):
        data = AttentionData(
            tiny, text_batch=TEXTS, min_length=4, max_length=14, suppress_first_token=suppress, batch_size=2
        )
    assert "1 of 4 texts have fewer than 5 tokens" in caplog.text  # "Too short." is skipped
    assert data.texts_used == [0, 1, 2]
    lengths = [len(tiny.tokenizer(t)["input_ids"][:14]) for t in TEXTS[:3]]
    assert len(set(lengths)) > 1, "the texts must differ in length so that padding happens"
    expected = hand_samples(tiny, TEXTS[:3], 1, 2, min_length=4, max_length=14, suppress=suppress)
    samples = data.head_data(1, 2).samples
    got = {(s.text_index, s.query): [(m.key, m.multiple) for m in s.multiples] for s in samples}
    assert got.keys() == expected.keys()
    for key, pairs in expected.items():
        assert [k for k, _ in got[key]] == [k for k, _ in pairs], key
        assert [m for _, m in got[key]] == pytest.approx([m for _, m in pairs], rel=1e-4)
    keys = {m.key for s in samples for m in s.multiples}
    assert (0 in keys) is (not suppress)
    # token strings are those of the text
    for s in samples:
        tokens = data.str_tokens(s.text_index)
        assert all(m.token == tokens[m.key] for m in s.multiples)


def test_multiples_on_a_hand_made_pattern(ad):
    """Row [0.5, 0.2, 0.1, 0.1, 0.1] at query 4: without the first key the average is 0.5/4, with it 1/5."""
    width = ad.head_data(0, 0).patterns.shape[-1]
    patterns = torch.zeros(3, width, width)
    patterns[0, 4, :5] = torch.tensor([0.5, 0.2, 0.1, 0.1, 0.1])
    m = ad.multiples(patterns)
    assert m[0, 4, :5].tolist() == pytest.approx([0.0, 0.2 / 0.125, 0.1 / 0.125, 0.1 / 0.125, 0.1 / 0.125])
    assert m[0, 3].abs().sum() == 0  # query 3 < min_length: no row
    assert m[0, 4, 5:].abs().sum() == 0  # keys after the query are not visible
    keep = AttentionData(ad.model, text_batch=TEXTS[:3], min_length=4, max_length=14, suppress_first_token=False)
    m = keep.multiples(patterns)
    assert m[0, 4, :5].tolist() == pytest.approx([0.5 * 5, 0.2 * 5, 0.1 * 5, 0.1 * 5, 0.1 * 5])


def test_only_the_requested_head_is_computed_and_hooks_are_removed(tiny):
    data = AttentionData(tiny, text_batch=TEXTS[:3], min_length=4, max_length=14)
    record = data.head_data(2, 3)
    assert set(data.heads) == {(2, 3)}
    assert record.patterns.shape[0] == 3
    assert torch.allclose(record.patterns.sum(-1)[0, :5], torch.ones(5), atol=1e-5)
    assert all(not hp.fwd_hooks for hp in tiny.hook_dict.values())
    assert data.head_data(-1, -1) is record  # negative indices count from the end


def test_ranking_is_every_pair_sorted(ad):
    ranked = ad.ranked_multiples(1, 2)
    pairs = sorted((m.multiple for s in ad.head_data(1, 2).samples for m in s.multiples), reverse=True)
    assert [r.multiple for r in ranked] == pairs
    assert all(r.multiple > 1 for r in ranked)
    top = ad.get_ranked_multiples(layer=1, head=2, num_multiples=5)
    assert top == ranked[:5]
    first = top[0]
    assert first.str_tokens == tuple(ad.str_tokens(first.text_index)[: first.query + 1])
    assert first.pattern.shape == (first.query + 1,)
    average = float(first.pattern[1:].mean())
    assert first.multiple == pytest.approx(float(first.pattern[first.key]) / average, rel=1e-4)
    bottom = ad.get_ranked_multiples(layer=1, head=2, num_multiples=3, reverse=True)
    assert [r.multiple for r in bottom] == [r.multiple for r in ranked[::-1][:3]]
    token = first.token
    only = ad.get_ranked_multiples(layer=1, head=2, str_token=token.strip(), num_multiples=1000)
    assert only and all(r.token.strip() == token.strip() for r in only)
    assert len(only) == sum(1 for r in ranked if r.token.strip() == token.strip())


def test_display_outside_a_notebook_prints_the_table(ad, capsys):
    # display=True asks for output: printed outside a notebook, whatever the logging level
    rows = ad.get_ranked_multiples(layer=1, head=2, num_multiples=3, display=True)
    out = capsys.readouterr().out
    assert "Layer 1 Head 2, top 3" in out
    assert f"{rows[0].multiple:.2f}" in out
    ad.get_ranked_multiples(layer=1, head=2, num_multiples=3)
    assert capsys.readouterr().out == ""  # nothing asked, nothing printed
    table = al.viz.multiples_table(rows, title="t")
    html = table._repr_html_()
    assert html.count("<tr>") == 2 + len(rows)  # title and header rows, then one per multiple
    assert "outline" in html  # the ranked token is marked


def test_seeded_sampling_is_reproducible(tiny):
    def draw(seed):
        data = AttentionData(tiny, text_batch=TEXTS[:3], min_length=4, max_length=14, seed=seed)
        samples = data.get_head_samples(layer=0, head=1, num_samples=4)
        randoms = data.get_random_multiples(layer=0, head=1, num_multiples=4)
        return [(s.text_index, s.query) for s in samples], [(r.text_index, r.query, r.key) for r in randoms]

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


def test_prompt_lists_text_then_sorted_pairs(ad):
    samples = ad.get_head_samples(layer=1, head=2, num_samples=2)
    prompt = ad.build_prompt(samples, custom_prompt="Mind the punctuation.")
    assert prompt.startswith(al.analysis.descriptions.PROMPT_PREFIX)
    assert prompt.rstrip().endswith(al.analysis.descriptions.PROMPT_SUFFIX)
    assert prompt.index("Mind the punctuation.") > prompt.index("Example 2:")
    block = prompt.split("Example 1:\n", 1)[1].split("\n")
    text, pairs = block[0], block[1]
    assert text == ad.sample_text(samples[0])
    values = [float(p.rsplit(" ", 1)[1]) for p in pairs.split(", ")]
    assert values == sorted(values, reverse=True) and len(values) == len(samples[0].multiples)


def test_list_of_lists_is_flattened(tiny):
    data = AttentionData(tiny, text_batch=[TEXTS[:2], [TEXTS[2]]], min_length=4, max_length=14)
    assert data.text_batch == TEXTS[:3]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"text_batch": []}, "text_batch is empty"),
        ({"text_batch": None}, "text_batch is required"),
        ({"text_batch": "one string"}, "single string"),
        ({"text_batch": ["ok", 3]}, r"text_batch\[1\]"),
        ({"text_batch": ["Hi.", "Too short."]}, "too short: a text needs at least 11 tokens"),
        ({"text_batch": TEXTS, "min_length": 10, "max_length": 10}, "max_length"),
        ({"text_batch": TEXTS, "min_length": -1}, "min_length"),
    ],
)
def test_bad_constructor_input(tiny, kwargs, message):
    with pytest.raises(AttnlensError, match=message):
        AttentionData(tiny, **kwargs)


def test_bad_head_input(ad, caplog):
    with pytest.raises(AttnlensError, match="layer 3 out of range: the model has 3 layers"):
        ad.get_ranked_multiples(layer=3, head=0)
    with pytest.raises(AttnlensError, match="head 4 out of range"):
        ad.head_data(0, 4)
    with pytest.raises(AttnlensError, match="layer must be an integer"):
        ad.head_data("1", 0)
    with pytest.raises(AttnlensError, match="num_samples must be a positive integer"):
        ad.get_head_samples(layer=0, head=0, num_samples=0)
    available = len(ad.head_data(0, 0).samples)
    with caplog.at_level(logging.WARNING, logger="attnlens.analysis.attention_data"):
        samples = ad.get_head_samples(layer=0, head=0, num_samples=available + 50)
    assert len(samples) == available  # clamped, with a warning
    assert f"only {available} rows" in caplog.text
    assert ad.get_ranked_multiples(layer=0, head=0, str_token="no-such-token") == []


def test_describe_without_a_model_name_is_a_clear_error(ad):
    with pytest.raises(al.DescribeError, match="openai_model is not set"):
        ad.describe_head(layer=0, head=0)


def test_samples_are_dataclasses(ad):
    s = ad.head_data(1, 2).samples[0]
    assert isinstance(s, Sample) and isinstance(s.multiples[0], TokenMultiple)


# ----------------------------------------------------------------------------- CLI


@pytest.fixture
def texts_file(tmp_path):
    path = tmp_path / "texts.txt"
    path.write_text("\n".join(TEXTS[:3]) + "\n\n", encoding="utf-8")
    return path


def test_cli_rank_prints_the_ranking(tiny, texts_file, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(cli, "_load", lambda args: tiny)
    html = tmp_path / "rank.html"
    argv = ["heads", "rank", "--layer", "1", "--head", "2", "--texts", str(texts_file),
            "--min-length", "4", "--max-length", "14", "--num", "3", "--json", "--html", str(html)]
    assert cli.main(argv) == 0
    rows = json.loads(capsys.readouterr().out)
    expected = AttentionData(tiny, text_batch=TEXTS[:3], min_length=4, max_length=14).get_ranked_multiples(
        layer=1, head=2, num_multiples=3
    )
    assert [(r["text_index"], r["query"], r["key"]) for r in rows] == [(e.text_index, e.query, e.key) for e in expected]
    assert [r["multiple"] for r in rows] == pytest.approx([e.multiple for e in expected], abs=1e-4)
    assert "<table" in html.read_text(encoding="utf-8")


def test_cli_rank_bad_input_is_one_line(tiny, texts_file, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_load", lambda args: tiny)
    assert cli.main(["heads", "rank", "--layer", "9", "--head", "0", "--texts", str(texts_file)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("attnlens: error: ") and "layer 9 out of range" in err
    assert cli.main(["heads", "rank", "--layer", "0", "--head", "0", "--texts", "/no/such/file"]) == 2
    assert "/no/such/file" in capsys.readouterr().err


# ----------------------------------------------------------------------------- demo notebook


@pytest.mark.notebook
def test_04_attention_data_notebook():
    from test_notebooks import fresh, outputs_text

    nb = fresh("04_attention_data.ipynb")  # executed once per session (test_notebooks runs it too)
    text = outputs_text(nb)
    assert "all multiples above 1: True" in text
    assert "rows for 'the': 5" in text
    assert "class='attnlens-multiples'" in text  # the ranked table was displayed
    assert "interactive view: " in text and "MB as a standalone file" in text  # built, and not embedded
    assert "var CircuitsVis=" not in text  # the notebook stays small: no view's bundle in its outputs
    assert any("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
    before, after = map(float, re.search(r"attention on .* ([\d.]+) unsteered -> ([\d.]+) steered", text).groups())
    assert after > before
    assert "description: This head mostly attends to the article" in text
    outputs = [o for c in nb.cells for o in c.get("outputs", [])]
    markdown = [o["data"]["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})]
    assert any(m.startswith("**Layer 3, head 2**") for m in markdown)  # print_description in a notebook
    assert "requests the endpoint received: 1" in text
    assert "described: [(3, 0), (3, 1), (3, 2)]" in text
