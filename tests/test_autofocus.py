"""Automatic focus: the model's answer (controlled here) chooses the tagged sentences."""

from __future__ import annotations

import pytest

import attnlens as al
from attnlens.prompts.tags import parse_tags
from attnlens.api import autofocus
from attnlens.api.autofocus import FocusError, auto_focus, parse_answer, sentences

CONTEXT = "The museum opens at nine. Tickets cost ten euros! Children enter free. What time does it open?"


def test_sentences_and_robust_parsing():
    numbered = [CONTEXT[s:e] for s, e in sentences(CONTEXT)]
    assert numbered == ["The museum opens at nine.", "Tickets cost ten euros!", "Children enter free.",
                        "What time does it open?"]
    assert parse_answer("1, 3", numbered) == [0, 2]
    assert parse_answer("[3] and [1]; also 3 again and 9", numbered) == [2, 0]
    assert parse_answer("Sentences two and the fourth.", numbered) == [1, 3]
    assert parse_answer('The key one is "Children enter free."', numbered) == [0, 2]  # 'one' counts as 1
    assert parse_answer("none of them", numbered) == []


def test_auto_focus_tags_the_named_sentences():
    asked = []

    def ask(text):
        asked.append(text)
        return "Sentences 1 and 4."

    focus = auto_focus(None, CONTEXT, ask=ask)
    assert "[1] The museum opens at nine." in asked[0] and "[4] What time does it open?" in asked[0]
    parsed = parse_tags(focus.text)
    assert parsed.text.split() == CONTEXT.split()
    assert [parsed.text[s.start:s.end].strip() for s in parsed.spans] == [
        "The museum opens at nine.", "What time does it open?"]
    assert focus.sentences == ("The museum opens at nine.", "What time does it open?")


def test_an_answer_naming_no_sentence_is_an_error_or_the_fallback():
    with pytest.raises(FocusError, match="names no sentence.*I cannot tell"):
        auto_focus(None, CONTEXT, ask=lambda q: "I cannot tell")
    every = auto_focus(None, CONTEXT, ask=lambda q: "I cannot tell", fallback="all")
    assert len(parse_tags(every.text).spans) == 4
    assert auto_focus(None, CONTEXT, ask=lambda q: "nothing", fallback="none").text == CONTEXT
    with pytest.raises(al.AttnlensError, match="already has tags"):
        auto_focus(None, "<!-> a <-!> b.", ask=lambda q: "1")
    with pytest.raises(al.AttnlensError, match="fallback must be"):
        auto_focus(None, CONTEXT, ask=lambda q: "1", fallback="maybe")


def test_the_pipeline_focus_auto_steers_what_the_model_named(tiny, monkeypatch):
    from attnlens.api import chain
    from attnlens.runtime.generate import generate_batch

    monkeypatch.setattr(autofocus, "_default_ask", lambda model, n: (lambda q: "2"))
    pipe = al.PayAttentionPipeline(tiny)
    out = pipe(CONTEXT, max_new_tokens=3, focus="auto", steer={"instaboost": {"alpha": 20.0}})[0]["generated_text"]
    tagged = auto_focus(tiny, CONTEXT)
    prompt = pipe.prepare(tagged.text)
    (start, end), = [(s.start, s.end) for s in prompt.guide_spans()]
    assert "Tickets cost ten euros!" in tiny.tokenizer.decode(list(prompt.input_ids)[start:end])
    tokens = generate_batch(tiny, [list(prompt.input_ids)], chain.plans_for(tiny, [prompt],
                            steer={"instaboost": {"alpha": 20.0}}), max_new_tokens=3)[0]
    assert out.endswith(tiny.tokenizer.decode(tokens, skip_special_tokens=True))
    with pytest.raises(al.AttnlensError, match="focus must be 'auto'"):
        pipe(CONTEXT, max_new_tokens=1, focus="manual")


def test_the_cli_focus_auto(tiny, capsys, monkeypatch):
    import json

    from attnlens import cli
    from attnlens.cli import generate as gen

    monkeypatch.setattr(gen, "load_model_for", lambda args: tiny)
    monkeypatch.setattr(autofocus, "_default_ask", lambda model, n: (lambda q: "3"))
    assert cli.main(["generate", CONTEXT, "--focus", "auto", "--steer", "spotlight", "--max-new-tokens", "2",
                     "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["methods"] == ["spotlight"]
    assert [s["text"].strip() for s in result["spans"]] == ["Children enter free."]
    monkeypatch.setattr(autofocus, "_default_ask", lambda model, n: (lambda q: "no idea"))
    assert cli.main(["generate", CONTEXT, "--focus", "auto", "--max-new-tokens", "2"]) != 0
    assert "names no sentence" in capsys.readouterr().err


@pytest.mark.embedded
def test_auto_focus_with_the_embedded_model_answering(embedded):
    """No answer is given: the embedded model is asked (greedy, through its chat template), its own answer is
    parsed, those sentences are tagged, and the pipeline's focus="auto" steers exactly them."""
    from attnlens.api import chain
    from attnlens.api.autofocus import question
    from attnlens.prompts.prompt import tokenize_prompt
    from attnlens.runtime.generate import generate_batch

    request = "What time does the museum open?"
    focus = auto_focus(embedded, CONTEXT, request)
    numbered = [CONTEXT[s:e] for s, e in sentences(CONTEXT)]
    # the answer is the model's own: the question generated greedily through the chat template
    asked = tokenize_prompt(embedded.tokenizer, [{"role": "user", "content": question(numbered, request)}], chat=True)
    tokens = generate_batch(embedded, [list(asked.input_ids)], max_new_tokens=24)[0]
    assert focus.answer == embedded.tokenizer.decode(tokens, skip_special_tokens=True) and focus.answer.strip()
    chosen = parse_answer(focus.answer, numbered)
    assert chosen and focus.sentences == tuple(numbered[i] for i in sorted(chosen))
    parsed = parse_tags(focus.text)
    assert parsed.text.split() == CONTEXT.split()
    assert [parsed.text[s.start:s.end].strip() for s in parsed.spans] == list(focus.sentences)

    # the pipeline asks the same question (no request: the context alone) and steers what the model named
    pipe = al.PayAttentionPipeline(embedded)
    steer = {"instaboost": {"alpha": 5.0}}
    out = pipe(CONTEXT, max_new_tokens=6, focus="auto", steer=steer)[0]
    named = auto_focus(embedded, CONTEXT)
    assert [s["text"].strip() for s in out["spans"]] == list(named.sentences)
    prompt = pipe.prepare(named.text)
    expected = generate_batch(embedded, [list(prompt.input_ids)], chain.plans_for(embedded, [prompt], steer=steer),
                              max_new_tokens=6)[0]
    assert out["generated_text"].endswith(embedded.tokenizer.decode(expected, skip_special_tokens=True))
