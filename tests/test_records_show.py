"""Records that compose: every public result shows itself (``view()``, ``show()``) and converts to JSON,
the view functions take the library's own records, and span arguments take the library's own spans.

Everything runs on the tiny random model (``tiny``), offline.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import attnlens as al
from attnlens.analysis.capture import steering_patterns
from attnlens.analysis.descriptions import HeadDescription, HeadDescriptions
from attnlens.api.autofocus import Focus
from attnlens.experiments.compare import Comparison, MethodRow
from attnlens.api.profile import HeadProfile
from attnlens.core.errors import AttnlensError, SpanError
from attnlens.experiments.metrics import Estimate
from attnlens.experiments.summary import ConditionSummary, ExperimentResult
from attnlens.experiments.tune import Trial, Tuning
from attnlens.viz import HTMLView

TAGGED = "<!-> Answer in French: <-!> <?-> Rewrite this <-?> Paris is the capital of France."
TEXTS = ["The cat chases the mouse all day long.", "Paris is the capital of France and Rome of Italy."]


@pytest.fixture(scope="module")
def made(tiny):
    """One of every public result, made once on the tiny model."""
    pipe = al.pipeline("pay-attention", model=tiny)
    record = pipe(TAGGED, max_new_tokens=2)[0]
    report = al.influence_report(tiny, TAGGED, methods=("influence", "rollout"))
    prompt = al.tokenize_prompt(tiny.tokenizer, TAGGED)
    ad = al.AttentionData(tiny, text_batch=TEXTS, min_length=4, max_length=16, seed=0)
    summary = ConditionSummary("guide@1", "guide", 1.0, 4, 1, {"ok": Estimate(0.5, 0.25, 0.75, 4)},
                               {"ok": Estimate(0.1, -0.2, 0.4, 4)})
    scores = np.array([[0.5, np.nan], [0.25, 0.75]])
    return {
        "pipeline record": record,
        "influence entry": record["influence"][0],
        "influence report": report,
        "steered generation": al.steered_generation(tiny, TAGGED, max_new_tokens=2),
        "influence trace": al.trace_influence(tiny, prompt, prompt.spans, methods=("influence", "rollout")),
        "token attribution": al.attribute(tiny, "Paris is the capital of", method="rollout"),
        "faithfulness": al.faithfulness(tiny, "Paris is the capital of", method="rollout", seeds=1, points=3),
        "faithfulness comparison": al.compare_faithfulness(
            tiny, ["Paris is the capital of", "The cat sat on"], methods=("rollout",), seeds=1, points=3, n_boot=50),
        "ranked multiples": ad.get_ranked_multiples(1, 2, num_multiples=4),
        "pattern samples": ad.pattern_samples(1, 2, max_texts=1),
        "steering patterns": steering_patterns(tiny, prompt, 1, al.guide_plan(tiny, prompt.guide_spans(), delta=2.0)),
        "head descriptions": HeadDescriptions([HeadDescription(0, 1, "attends to <b>names</b>", "p"),
                                               HeadDescription(1, 0, None, "p", error="timed out")]),
        "head description": HeadDescription(2, 3, "copies the previous token", "p", score=0.5, control_score=0.1),
        "automatic focus": Focus("<!-> Tickets cost ten euros. <-!> When?", ("Tickets cost ten euros.",), "Sentence 2."),
        "method comparison": Comparison("json", "exact_format", 4, 6, {"mean": 0.4, "low": 0.1, "high": 0.7, "n": 6},
                                        [MethodRow("spa", "tuned", "omega", 2.0, 0.6, 0.3, 0.9, 0.2, -0.1, 0.5, 6)],
                                        {"spa": "its package"}),
        "head profile": HeadProfile(scores, np.stack([scores, scores], -1), 0.5, np.array([0.5, 0.5]), 0.01,
                                    "exclude", "exact"),
        "experiment result": ExperimentResult("needle", Path("out"), Path("out/rows.jsonl"), Path("out/summary.csv"),
                                              [], [summary], ("ok",), 4, 0),
        "strength search": Tuning("guide", "delta", 2.0, [Trial(1.0, 0.25, 0.0, True), Trial(2.0, 0.75, 0.1, True)],
                                  {"mean": 0.7, "low": 0.5, "high": 0.9, "n": 4}, {"mean": 0.2, "low": 0.0, "high": 0.4,
                                                                                  "n": 4}, dev=[0, 1], test=[2, 3, 4, 5]),
    }


#: what each record's page must say (its numbers or words), beyond rendering at all
EXPECT = {
    "pipeline record": ["Generated", "Rewrite", "Scaled per row"],
    "influence entry": ["Scaled per row", "\u27e6"],
    "influence report": ["rollout of span", "influence of span", "Scaled per row"],
    "steered generation": ["Answer in French:", "Generated"],
    "influence trace": ["span tokens [", "Scaled per row"],
    "token attribution": ["red: toward the target", "attnlens-legend"],
    "faithfulness": ["comprehensiveness", "random"],
    "faithfulness comparison": ["n = 2 prompts", "bootstrap"],
    "ranked multiples": ["row max", "token boundaries"],
    "pattern samples": ["attention weight", "L1H2"],
    "steering patterns": ["Steered keys", "red: steering raised", "Answer in French"],
    "head descriptions": ["attends to &lt;b&gt;names&lt;/b&gt;", "error: timed out"],
    "head description": ["copies the previous token", "0.1"],
    "automatic focus": ["sentence 1", "Tickets cost ten euros.", "Sentence 2.", "1 sentence(s) named"],
    "method comparison": ["n = 6 held-out items", "exact_format", "spa", "tuned"],
    "head profile": ["+0.250", "n = 2 examples", "not profiled"],
    "experiment result": ["0.500 [0.250, 0.750]", "n items", "0.100 [-0.200, 0.400]"],
    "strength search": ["n = 2 development", "n = 4 examples", "chosen: 2.0", "0.75"],
}
COLOURED = {"pipeline record", "influence entry", "influence report", "influence trace", "token attribution",
            "ranked multiples", "pattern samples", "steering patterns", "head profile"}


@pytest.mark.parametrize("name", sorted(EXPECT))
def test_every_record_shows_itself_and_converts_to_json(made, name, tmp_path):
    record = made[name]
    view = record.view()
    assert isinstance(view, HTMLView) and view.body
    for words in EXPECT[name]:
        assert words in view.body, f"{name}: {words!r} not on its page"
    if name in COLOURED:  # a colour scale beside every coloured view
        assert "attnlens-legend" in view.body
    # outside a notebook show() returns the view; with a path it also writes a standalone page
    shown = record.show(tmp_path / "page.html")
    assert isinstance(shown, HTMLView) and shown.title == view.title  # (element ids differ between renders)
    page = (tmp_path / "page.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and shown.body in page and "<script src" not in page
    data = json.loads(record.to_json())
    assert data, name


def test_json_keeps_the_numbers(made):
    report = made["influence report"]
    data = json.loads(report.to_json())
    assert torch.allclose(torch.tensor(data["spans"][0]["influence"]), report["spans"][0]["influence"], atol=1e-6)
    trace = made["influence trace"]
    again = json.loads(trace.to_json())
    assert again["spans"] == [list(s) for s in trace.spans]
    assert torch.allclose(torch.tensor(again["results"]["rollout"]), trace["rollout"])
    rows = json.loads(made["ranked multiples"].to_json())
    assert [r["multiple"] for r in rows] == [m.multiple for m in made["ranked multiples"]]
    # HeadProfile.to_json is pastalib's head config (what save() writes); to_dict has everything
    assert json.loads(made["head profile"].to_json(1)) == {"1": [1]}
    assert [r["gain"] for r in made["head profile"].to_dict()["ranking"]] == [0.25, 0.0, -0.25]


def test_views_take_the_librarys_records(made, tiny):
    report, record, trace = made["influence report"], made["pipeline record"], made["influence trace"]
    entry = record["influence"][0]
    hidden = entry.get("system_tokens", 0)  # the chat template's own system prompt: left out of views
    final = [round(v, 4) for v in entry["tensor"][-1].tolist()][hidden:]
    for given in (entry, record, record["influence"]):
        view = al.viz.influence_view(given)
        assert view.data["final"]["influence"] == pytest.approx(final, abs=1e-4)
        assert view.data["tokens"] == entry["tokens"][hidden:]
        # the default position is the last prompt token, read from the record
        assert view.data["positions"] == [entry["prompt_length"] - 1 - hidden]
    shown = al.viz.influence_view(entry, system_prompt=True)
    assert shown.data["tokens"] == entry["tokens"]
    view = al.viz.influence_view(report)
    assert set(view.data["final"]) == {"influence", "rollout"}
    assert view.data["sections"][0]["span"] == (report["spans"][0]["start"], report["spans"][0]["end"])
    # the report and the pipeline measure the same span the same way (no steering in either: the
    # report steers by GUIDE tags too, so compare with the trace measured under no plan)
    view = al.viz.influence_view(trace)
    assert len(view.data["sections"]) == len(trace.spans)
    fig = al.viz.influence_figure(report)
    assert len(fig.data) == 2  # one curve per method at the default position
    with pytest.raises(AttnlensError, match="influence views take"):
        al.viz.influence_view("not a record")
    with pytest.raises(AttnlensError, match="no influence entries"):
        al.viz.influence_view({"influence": []})


def test_span_arguments_take_token_spans_pairs_and_substrings(tiny):
    prompt = al.tokenize_prompt(tiny.tokenizer, "<?-> Rewrite in French <-?> Paris is the capital.")
    span = prompt.spans[0]
    by_pair = al.influence(tiny, prompt.input_ids, (span.start, span.end))
    assert torch.equal(al.influence(tiny, prompt, span=span), by_pair)
    assert torch.equal(al.influence(tiny, prompt.input_ids, span=torch.tensor([span.start, span.end])), by_pair)
    assert torch.equal(al.rollout(tiny, prompt, span), al.rollout(tiny, prompt.input_ids, (span.start, span.end)))
    # a substring: the tokens overlapping its first occurrence in the decoded tokens
    pieces = [tiny.tokenizer.decode([t]) for t in prompt.input_ids]
    at = next(i for i, p in enumerate(pieces) if "Paris" in p)
    assert torch.equal(al.influence(tiny, prompt, span="Paris"), al.influence(tiny, prompt, span=(at, at + 1)))
    # a tokenizer's output (a batch of one) and a string are token inputs too
    from transformers import BatchEncoding

    batch = BatchEncoding({"input_ids": torch.tensor([prompt.input_ids]), "attention_mask": torch.ones(1, len(prompt))})
    several = al.influence(tiny, batch, spans=[span, "Paris"])
    assert several.shape[0] == 2 and torch.allclose(several[0], by_pair, atol=1e-6)
    assert al.influence(tiny, "Paris is nice", span="nice").shape[-1] == len(tiny.tokenizer("Paris is nice")["input_ids"])
    trace = al.trace_influence(tiny, prompt, prompt.spans)
    assert trace.spans == [(span.start, span.end)]
    # guide takes TokenSpans too
    assert al.guide_plan(tiny, prompt.spans, delta=2.0).terms == al.guide_plan(tiny, [(span.start, span.end)], 2.0).terms
    assert al.guide_plan(tiny, span, delta=2.0).terms == al.guide_plan(tiny, [(span.start, span.end)], 2.0).terms


@pytest.mark.parametrize("bad, match", [
    ("Lyon", "substring 'Lyon' does not occur in the tokens"),
    (("Paris", 3), "occurs 1 time"),
    ((5, 2), r"span \[5, 2\) is empty"),
    ((0, 999), "runs past the sequence"),
    ("", "non-empty substring"),
    ((0, 1, 2), r"\(start, end\) pair"),
    ((0, 1.5), "must be integers"),
])
def test_bad_span_arguments_are_named(tiny, bad, match):
    prompt = al.tokenize_prompt(tiny.tokenizer, "<?-> Rewrite <-?> Paris is the capital.")
    with pytest.raises(SpanError, match=match):
        al.influence(tiny, prompt, span=bad)


def test_spans_that_cannot_be_read_say_why(tiny):
    prompt = al.tokenize_prompt(tiny.tokenizer, "<?-> Rewrite <-?> Paris is the capital.")
    tag = al.parse_tags("<?-> Rewrite <-?> Paris").spans[0]
    with pytest.raises(SpanError, match="TagSpan: it counts characters"):
        al.influence(tiny, prompt, span=tag)
    with pytest.raises(SpanError, match="no tokens to find it in"):
        al.guide_plan(tiny, ["Paris"])
    with pytest.raises(AttnlensError, match="mapping without 'input_ids'"):
        al.influence(tiny, {"ids": [1, 2]}, span=(0, 1))
    with pytest.raises(AttnlensError, match=r"got shape \(2, 3\)"):
        al.influence(tiny, torch.ones(2, 3, dtype=torch.long), span=(0, 1))
