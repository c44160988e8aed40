"""Property tests for the tag syntax: escaped text is inert in every context; parsing is consistent.

Hypothesis runs with the fixed-seed profile registered in conftest.py.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from attnlens import TagError, escape_tags, parse_tags
from attnlens.prompts.tags import BREAK, has_tags

# text made mostly of the characters that tags are built from, so the tricky cases are common
TAG_ALPHABET = st.sampled_from(list("\\<>!-? ax") + ["<!->", "<-!>", "<!!->", "<-!!>", "<?->", "<-?>", BREAK, "\\\\"])
tricky_text = st.lists(TAG_ALPHABET, max_size=20).map("".join)
any_text = st.one_of(tricky_text, st.text(max_size=30))
OPEN_CLOSE = [("<!->", "<-!>", "guide", 1), ("<!!->", "<-!!>", "guide", 2), ("<!!!->", "<-!!!>", "guide", 3),
              ("<?->", "<-?>", "influence", 0)]


@given(any_text)
def test_escaped_text_reads_back_unchanged(text):
    parsed = parse_tags(escape_tags(text))
    assert parsed.text == text and parsed.spans == ()
    assert not has_tags(escape_tags(text))


@given(any_text, any_text.filter(lambda t: t.strip() != ""), any_text, st.sampled_from(OPEN_CLOSE))
def test_escaped_text_next_to_tags_is_inert(before, inside, after, tags):
    opening, closing, kind, level = tags
    prompt = escape_tags(before) + opening + escape_tags(inside) + closing + escape_tags(after)
    parsed = parse_tags(prompt, whitespace="keep")
    assert parsed.text == before + inside + after
    (span,) = parsed.spans
    assert (span.start, span.end, span.kind, span.level) == (len(before), len(before) + len(inside), kind, level)
    assert has_tags(prompt)
    # the default reading: the padding just inside the tags is markup (tags.py's stated rule)
    core = inside.strip()
    lead, trail = inside[: len(inside) - len(inside.lstrip())], inside[len(inside.rstrip()):]
    left = before + (lead if lead and before and not before[-1].isspace() else "")
    right = (trail if trail and after and not after[0].isspace() else "") + after
    collapsed = parse_tags(prompt)
    assert collapsed.text == left + core + right
    (span,) = collapsed.spans
    assert (span.start, span.end, span.kind, span.level) == (len(left), len(left) + len(core), kind, level)


@given(any_text, any_text.filter(lambda t: t.strip() != ""), any_text.filter(lambda t: t.strip() != ""))
def test_two_adjacent_spans_keep_one_separator(before, first, second):
    parsed = parse_tags(escape_tags(before) + "<!->" + escape_tags(first) + " <-!><!!-> " + escape_tags(second)
                        + "<-!!>")
    a, b = parsed.spans
    assert parsed.substring(a) == first.strip() and parsed.substring(b) == second.strip()
    between = parsed.text[a.end:b.start]
    assert between == first[len(first.rstrip()):] + " "  # the first padding of the run, never both


@given(st.lists(any_text, min_size=1, max_size=5))
def test_escaping_composes(pieces):
    assert parse_tags("".join(escape_tags(p) for p in pieces)).text == "".join(pieces)


@given(any_text)
def test_parse_either_succeeds_consistently_or_names_a_position(text):
    try:
        parsed = parse_tags(text)
    except TagError as exc:
        assert exc.position is not None and 0 <= exc.position < len(text)
        assert f"at character {exc.position}" in str(exc)
        return
    for span in parsed.spans:
        assert 0 <= span.start < span.end <= len(parsed.text)
        assert parsed.substring(span).strip()
    assert has_tags(text) == bool(parsed.spans)


@pytest.mark.parametrize("before, inside", [("a\\", "b\\"), ("a\\\\", "x"), ("\\", "\\\\\\"), ("", "\\")])
def test_text_ending_in_backslashes_next_to_a_tag(before, inside):
    parsed = parse_tags(escape_tags(before) + "<!->" + escape_tags(inside) + "<-!>", whitespace="keep")
    assert parsed.text == before + inside
    assert [parsed.substring(s) for s in parsed.spans] == [inside]


@given(any_text, any_text.filter(lambda t: t.strip() != ""), any_text, st.sampled_from(["guide", "none"]))
def test_experiment_prompts_have_exactly_the_focus_span(before, focus, after, method):
    from attnlens.experiments.config import Condition
    from attnlens.experiments.study import Segments, build_messages

    class _Study:
        def segments(self, item, config):
            return Segments(before=before, focus=focus, after=after)

        def emphatic(self, text):  # pragma: no cover - not used by these conditions
            return text

    (message,) = build_messages(_Study(), None, Condition(method, 1.0), None)
    parsed = parse_tags(message["content"])
    assert parsed.text == before + focus + after
    (span,) = parsed.spans
    assert parsed.substring(span) == focus.strip()
