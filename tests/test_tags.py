import pytest

from attnlens import TagError, escape_tags, parse_tags
from attnlens.prompts.tags import has_tags


def test_plain_text_has_no_spans():
    parsed = parse_tags("no tags here")
    assert parsed.text == "no tags here" and parsed.spans == ()


@pytest.mark.parametrize(
    "text, level",
    [("<!->a b<-!> c", 1), ("<!!->a b<-!!> c", 2), ("<!!!->a b<-!!!> c", 3)],
)
def test_guide_levels(text, level):
    parsed = parse_tags(text)
    assert parsed.text == "a b c"
    (span,) = parsed.spans
    assert (span.start, span.end, span.kind, span.level) == (0, 3, "guide", level)
    assert parsed.substring(span) == "a b"


def test_several_spans_mixed_levels_and_influence():
    parsed = parse_tags("x <!->one<-!> y <!!!->two<-!!!> z <?->three<-?> end")
    assert parsed.text == "x one y two z three end"
    got = [(parsed.substring(s), s.kind, s.level) for s in parsed.spans]
    assert got == [("one", "guide", 1), ("two", "guide", 3), ("three", "influence", 0)]


def test_whitespace_keep_is_verbatim():
    parsed = parse_tags("<!-> Rewrite: <-!> Paris", whitespace="keep")
    assert parsed.text == " Rewrite:  Paris"
    assert parsed.substring(parsed.spans[0]) == " Rewrite: "


@pytest.mark.parametrize("text, clean, spans", [
    ("<!-> Rewrite in French: <-!> Paris", "Rewrite in French: Paris", ["Rewrite in French:"]),
    ("Hello <!-> world <-!> again", "Hello world again", ["world"]),
    ("Paris<!-> is big<-!>.", "Paris is big.", ["is big"]),
    ("<!->a <-!><!!-> b<-!!>", "a b", ["a", "b"]),
    ("Intro:<!->\n\nText <-!>", "Intro:\n\nText", ["Text"]),
    ("  <!-> hi <-!>  ", "  hi  ", ["hi"]),
    ("<!->Be brief.<-!> Hi", "Be brief. Hi", ["Be brief."]),
    ("a<!-> b <-!> <?->  c<-?>d", "a b cd", ["b", "c"]),
])
def test_padding_inside_tags_is_markup(text, clean, spans):
    parsed = parse_tags(text)
    assert parsed.text == clean
    assert [parsed.substring(s) for s in parsed.spans] == spans


def test_whitespace_option_is_checked():
    with pytest.raises(TagError, match="whitespace must be 'collapse' or 'keep'"):
        parse_tags("a", whitespace="strip")


@pytest.mark.parametrize(
    "text, words, position",
    [
        ("a <!->b", "unbalanced", 2),
        ("a b<-!> c", "without an opening", 3),
        ("<!->a <!!->b<-!!> c<-!>", "nested", 6),
        ("<!->a <?->b<-!> c<-?>", "nested or overlapping", 6),
        ("x <!-><-!>", "empty span", 6),
        ("x <!->   <-!>", "empty span", 9),
        ("<!->a<-!!>", "does not match", 5),
        ("<!!->a<-?>", "does not match", 6),
    ],
)
def test_bad_tags_name_the_position(text, words, position):
    with pytest.raises(TagError) as info:
        parse_tags(text)
    assert words in str(info.value)
    assert info.value.position == position
    assert f"at character {position}" in str(info.value)


def test_escape_makes_untrusted_text_inert():
    untrusted = r"ignore <!->this<-!> and \<?-> that <-!!!> \\<!->"
    escaped = escape_tags(untrusted)
    assert parse_tags(escaped).text == untrusted
    assert parse_tags(escaped).spans == ()
    assert not has_tags(escaped) and has_tags(untrusted)


def test_escaped_tag_inside_real_span():
    text = "<!->keep " + escape_tags("<-!>") + " inside<-!> out"
    parsed = parse_tags(text)
    assert parsed.text == "keep <-!> inside out"
    assert parsed.substring(parsed.spans[0]) == "keep <-!> inside"


@pytest.mark.parametrize("function", [parse_tags, escape_tags, has_tags])
@pytest.mark.parametrize("value", [["<!->x<-!>"], b"<!->x<-!>", None, 3])
def test_non_string_is_rejected(function, value):
    with pytest.raises(TagError, match=f"{function.__name__} expects a str, got {type(value).__name__}"):
        function(value)
