import pytest

from attnlens import SpanError, encode_chat, encode_text, prepare
from attnlens.prompts.spans import char_span_to_tokens, find_substring, render_chat


def test_overlap_rule_straddling_tokens_belong_to_the_span():
    offsets = [(0, 0), (0, 5), (5, 8), (8, 13), (13, 14)]  # BOS, "Hello", " my", " name", "!"
    assert char_span_to_tokens(offsets, 6, 8) == (2, 3)  # inside " my": the whole token
    assert char_span_to_tokens(offsets, 4, 9) == (1, 4)  # straddles both edges
    assert char_span_to_tokens(offsets, 0, 5) == (1, 2)  # zero-width BOS never belongs
    with pytest.raises(SpanError):
        char_span_to_tokens(offsets, 3, 3)
    with pytest.raises(SpanError):
        char_span_to_tokens(offsets, 20, 25)


def test_token_span_decodes_to_the_tagged_text(tokenizer):
    prompt = prepare(tokenizer, "Some context. <!->Answer in French.<-!> Then more.")
    (span,) = prompt.spans
    decoded = tokenizer.decode(prompt.input_ids[span.start : span.end])
    assert decoded.strip() == "Answer in French."
    # tokens just outside are not part of the span
    assert "French" not in tokenizer.decode(prompt.input_ids[span.end :])


def test_chat_spans_in_every_message(tokenizer):
    chat = [
        {"role": "system", "content": "You are <!->terse<-!>."},
        {"role": "user", "content": "Hi <!!!->there<-!!!>"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "<?->What now?<-?>"},
    ]
    prompt = prepare(tokenizer, chat)
    assert [s.message for s in prompt.spans] == [0, 1, 3]
    assert [s.level for s in prompt.spans] == [1, 3, 0]
    for span, word in zip(prompt.spans, ["terse", "there", "What now?"]):
        assert tokenizer.decode(prompt.input_ids[span.start : span.end]).strip() == word
    # the rendered template is what the model sees: the clean contents, in order
    assert "<!->" not in prompt.text and "You are terse." in prompt.text
    assert prompt.text.index("terse") < prompt.text.index("there") < prompt.text.index("What now?")


def test_render_chat_locates_repeated_contents(tokenizer):
    chat = [{"role": "user", "content": "same"}, {"role": "assistant", "content": "same"}]
    text, starts = render_chat(tokenizer, chat)
    assert [text[s : s + 4] for s in starts] == ["same", "same"]
    assert starts[0] < starts[1]


def test_encode_chat_matches_the_tokenizers_own_template(tokenizer):
    chat = [{"role": "user", "content": "Paris is big."}]
    enc = encode_chat(tokenizer, chat)
    expected = tokenizer.apply_chat_template(chat, tokenize=True, add_generation_prompt=True)
    expected = expected["input_ids"] if isinstance(expected, dict) or hasattr(expected, "keys") else expected
    assert enc.input_ids == list(expected)


def test_encode_text_offsets_cover_the_text(tokenizer):
    enc = encode_text(tokenizer, "Hello my name")
    assert enc.offsets[-1][1] == len("Hello my name")


def test_find_substring_occurrences():
    text = "a cat and a cat"
    assert find_substring(text, "cat") == [(2, 5)]
    assert find_substring(text, "cat", 1) == [(12, 15)]
    assert find_substring(text, "cat", None) == [(2, 5), (12, 15)]
    with pytest.raises(SpanError, match="does not occur"):
        find_substring(text, "dog")
    with pytest.raises(SpanError, match="occurs 2 time"):
        find_substring(text, "cat", 2)


def test_bad_chat_messages(tokenizer):
    with pytest.raises(SpanError, match="message 0"):
        encode_chat(tokenizer, [{"role": "user"}])
