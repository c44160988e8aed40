"""Head descriptions scored on held-out texts: fixed patterns, the chat model's predictions (stub server), the CLI."""

from __future__ import annotations

import json
import re

import pytest
import torch
from openai import OpenAI

from attnlens import cli
from attnlens.analysis.description_scores import (
    fixed_pattern, parse_prediction, predicted_keys, score_description,
)
from attnlens.api import AttentionData
from attnlens.core.errors import AttnlensError
from attnlens.testing import ChatStubServer

TEXTS = ["The cat sat on the mat because it was tired after chasing the mouse all day.",
         "Paris is the capital of France and Rome is the capital of Italy."]
HELD_OUT = ["A river runs through the old town and the river floods in spring.",
            "Seven students read seven books in seven days."]
KEY = "sk-attnlens-test-0123456789abcdef"


def previous_token_patterns(model, texts, max_length=30):
    """A synthetic head that puts all its attention on the previous token (the first token on itself)."""
    out = {}
    for i, text in enumerate(texts):
        n = min(len(model.tokenizer(text)["input_ids"]), max_length)
        p = torch.zeros(n, n)
        p[0, 0] = 1.0
        for q in range(1, n):
            p[q, q - 1] = 1.0
        out[i] = p
    return out


def predict_previous(body):
    """A deterministic chat model: every marked query attends to the token before it."""
    text = body["messages"][-1]["content"]
    marks = re.findall(r"^(\d+): .*<- Q(\d+)$", text, flags=re.M)
    return "\n".join(f"Q{q}: {int(pos) - 1}" for pos, q in marks)


def test_fixed_patterns_and_parsing():
    assert fixed_pattern("It attends to the previous token.") == "previous"
    assert fixed_pattern("An induction head: the token after the previous occurrence") == "induction"
    assert fixed_pattern("Attends mostly to the BOS token") == "first"
    assert fixed_pattern("It looks at nouns") is None
    ids = [5, 7, 9, 7, 3, 7]
    assert predicted_keys("previous", ids, 3) == [2]
    assert predicted_keys("first", ids, 4) == [0]
    assert predicted_keys("same", ids, 5) == [1, 3]
    assert predicted_keys("induction", ids, 5) == [2, 4]
    assert parse_prediction("Q1: 3, 4\nQ2: 9\nnoise\nQ3 - 1", [5, 6, 2]) == [[3, 4], [], [1]]


def test_score_is_the_share_on_predicted_keys(tiny):
    patterns = previous_token_patterns(tiny, HELD_OUT)
    right = score_description(tiny, 0, 0, "The previous token.", HELD_OUT, patterns=patterns, first_query=2)
    wrong = score_description(tiny, 0, 0, "The first token of the text.", HELD_OUT, patterns=patterns, first_query=2)
    assert right.score == 1.0 and right.how == "pattern:previous" and right.queries == 6
    assert wrong.score == 0.0
    with ChatStubServer(predict_previous, api_key=KEY) as server:
        client = OpenAI(base_url=server.url, api_key=KEY)
        chat = score_description(tiny, 0, 0, "It looks back one step.", HELD_OUT, patterns=patterns, first_query=2,
                                 client=client, openai_model="stub")
    assert chat.how == "chat" and chat.score == 1.0 and len(server.requests) == len(HELD_OUT)
    # on the tiny model's real head: the share of its attention on the previous key, averaged by hand
    real = score_description(tiny, 1, 2, "The previous token.", HELD_OUT, first_query=2, queries_per_text=50)
    from attnlens.analysis.capture import capture_patterns

    rows = [tiny.tokenizer(t)["input_ids"][:30] for t in HELD_OUT]
    pats = capture_patterns(tiny, rows, {1: (2,)})[(1, 2)]
    by_hand = [float(pats[i, q, q - 1]) for i, r in enumerate(rows) for q in range(2, len(r))]
    assert real.score == pytest.approx(sum(by_hand) / len(by_hand), abs=1e-6)


def test_describe_heads_scores_beside_a_control(tiny):
    answers = {"n": 0}

    def reply(body):
        text = body["messages"][-1]["content"]
        if "<- Q1" in text:
            return predict_previous(body)
        answers["n"] += 1
        return "It attends to the previous token." if answers["n"] == 1 else "It attends to the first token."

    with ChatStubServer(reply, api_key=KEY) as server:
        ad = AttentionData(tiny, openai_model="stub", text_batch=TEXTS, min_length=4, max_length=14,
                           client=OpenAI(base_url=server.url, api_key=KEY), seed=0)
        rows = ad.describe_heads(layers=[1], heads=[0, 1], max_concurrency=1, progress=False, held_out=HELD_OUT)
    first, second = rows
    kwargs = dict(first_query=ad.first_query, max_length=ad.max_length, seed=0)
    assert first.score == pytest.approx(score_description(tiny, 1, 0, first.description, HELD_OUT, **kwargs).score)
    assert first.control_score == pytest.approx(
        score_description(tiny, 1, 0, second.description, HELD_OUT, **kwargs).score)
    assert first.score != first.control_score
    assert {"score", "control_score"} <= set(rows.to_records()[0])
    with pytest.raises(AttnlensError, match="chat client"):
        score_description(tiny, 0, 0, "It looks at nouns", HELD_OUT)
    with pytest.raises(AttnlensError, match="held-out"):
        score_description(tiny, 0, 0, "previous token", [])


def test_cli_describe_with_held_out(tiny, tmp_path, monkeypatch, capsys):
    texts, held = tmp_path / "texts.txt", tmp_path / "held.txt"
    texts.write_text("\n".join(TEXTS), encoding="utf-8")
    held.write_text("\n".join(HELD_OUT), encoding="utf-8")
    monkeypatch.setattr(cli, "_load", lambda args: tiny)
    monkeypatch.setenv("MY_KEY", KEY)
    with ChatStubServer("It attends to the previous token.", api_key=KEY) as server:
        assert cli.main(["heads", "describe", "--layer", "1", "--head", "2", "--texts", str(texts), "--min-length",
                         "4", "--max-length", "14", "--base-url", server.url, "--num-samples", "2", "--seed", "3",
                         "--openai-model", "stub", "--api-key-env", "MY_KEY", "--held-out", str(held),
                         "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert 0.0 <= out["score"] <= 1.0 and out["score"] == out["control_score"]  # the same description twice
    assert len(server.requests) == 2  # the head and the control head (fixed patterns need no more calls)


# ----------------------------------------------------------------------------- tests that can fail


def _describer_requests(server):
    """The text of every request the stub chat model received (the describer's prompts)."""
    return [" ".join(str(m.get("content", "")) for m in r.body["messages"]) for r in server.requests]


def test_the_describer_never_sees_the_held_out_texts(tiny):
    """What the describer received comes from the texts it describes from, never from the held-out texts the
    descriptions are then scored on."""
    with ChatStubServer("It attends to the previous token.", api_key=KEY) as server:
        ad = AttentionData(tiny, openai_model="stub", text_batch=TEXTS, min_length=4, max_length=14,
                           client=OpenAI(base_url=server.url, api_key=KEY), seed=0)
        rows = ad.describe_heads(layers=[1], heads=[0, 1], max_concurrency=1, progress=False, held_out=HELD_OUT)
    sent = _describer_requests(server)
    assert len(sent) == 2 and all(r.score is not None for r in rows)  # fixed patterns: no scoring calls
    seen = " ".join(sent)
    # words only the describer's texts have are there (so the check below looks at the right thing) ...
    assert any(word in seen for word in ("cat", "mat", "Paris", "Rome"))
    # ... and no word only the held-out texts have
    held_only = {w.strip(".").lower() for t in HELD_OUT for w in t.split()} - {
        w.strip(".").lower() for t in TEXTS for w in t.split()}
    assert held_only >= {"river", "floods", "spring", "students", "books"}
    # the prompt's own instructions (the same for every head) are not text the describer was shown
    instructions = {w.lower() for w in re.findall(r"[A-Za-z]+", ad.build_prompt([], None))}
    tokens = {w.lower() for w in re.findall(r"[A-Za-z]+", seen)} - instructions
    assert not held_only & tokens, held_only & tokens


def test_cli_scores_a_wrong_description_below_the_right_one(embedded, tmp_path, monkeypatch, capsys):
    """On a previous-token head of the embedded model, "the previous token" scores higher on held-out texts than
    "the first token" (the control head's description), and both are read from the head's real attention."""
    from attnlens.analysis.capture import capture_patterns

    rows = [embedded.tokenizer(t)["input_ids"][:30] for t in HELD_OUT]
    n_layers, n_heads = embedded.cfg.n_layers, embedded.cfg.n_heads
    pats = capture_patterns(embedded, rows, {layer: tuple(range(n_heads)) for layer in range(n_layers)})

    def previous_share(key):
        p = pats[key]
        return sum(float(p[i, q, q - 1]) for i, r in enumerate(rows) for q in range(2, len(r)))

    layer, head = max(pats, key=previous_share)
    right = score_description(embedded, layer, head, "The previous token.", HELD_OUT, first_query=2)
    wrong = score_description(embedded, layer, head, "The first token of the text.", HELD_OUT, first_query=2)
    assert right.how == "pattern:previous" and wrong.how == "pattern:first"
    assert right.score > 0.5 and right.score > wrong.score + 0.3

    texts, held = tmp_path / "texts.txt", tmp_path / "held.txt"
    texts.write_text("\n".join(TEXTS), encoding="utf-8")
    held.write_text("\n".join(HELD_OUT), encoding="utf-8")
    monkeypatch.setattr(cli, "_load", lambda args: embedded)
    monkeypatch.setenv("MY_KEY", KEY)
    answers = iter(["It attends to the previous token.", "It attends to the first token."])
    with ChatStubServer(lambda body: next(answers), api_key=KEY) as server:
        assert cli.main(["heads", "describe", "--layer", str(layer), "--head", str(head), "--texts", str(texts),
                         "--min-length", "4", "--max-length", "14", "--base-url", server.url, "--num-samples", "2",
                         "--seed", "3", "--openai-model", "stub", "--api-key-env", "MY_KEY", "--held-out", str(held),
                         "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["description"] == "It attends to the previous token."
    assert out["score"] > out["control_score"] + 0.3
    assert len(server.requests) == 2
    seen = " ".join(_describer_requests(server))
    assert "river" not in seen and "students" not in seen
