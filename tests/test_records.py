"""JSON Lines reading shared by the experiments and head profiling."""

import pytest

from attnlens import AttnlensError
from attnlens.experiments.runner import ExperimentError
from attnlens.core.json_lines import JSONLineError, parse_line
from attnlens.core.records import damaged_lines, read_jsonl


def test_rows_with_where_they_came_from(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"a": 1}\n\n{"b": 2}\n', encoding="utf-8")
    assert read_jsonl(path) == [("data.jsonl, line 1", {"a": 1}), ("data.jsonl, line 3", {"b": 2})]


@pytest.mark.parametrize("content, words", [
    (b'{"a": 1}\n[1, 2]\n', "bad.jsonl, line 2: not a JSON object (a list)"),
    (b'{"a": 1}\n{oops\n', "bad.jsonl, line 2: not valid JSON (Expecting property name enclosed in double quotes)"),
    (b'{"a": 1}\n{"b": "\xff"}\n', "bad.jsonl, line 2: invalid UTF-8 at byte 7"),
    (b"[" * 100_000 + b"\n", "bad.jsonl, line 1: not valid JSON (nested too deeply)"),
    (b"1" * 5_000 + b"\n", "bad.jsonl, line 1: not valid JSON (Exceeds the limit"),
])
def test_bad_lines_name_the_line_and_raise_the_callers_error(tmp_path, content, words):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(ExperimentError) as info:
        read_jsonl(path, error=ExperimentError)
    assert type(info.value) is ExperimentError and str(info.value).startswith(words)


def test_a_byte_order_mark_and_blank_lines_are_skipped(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\n \t\n{"b": "\xe2\x80\xa8"}')
    assert read_jsonl(path) == [("bom.jsonl, line 1", {"a": 1}), ("bom.jsonl, line 3", {"b": "\u2028"})]


@pytest.mark.parametrize("raw", [b'{"a": 1}', '{"a": 1}', b' {"a": 1}\r'])
def test_parse_line_reads_bytes_or_text_and_none_for_a_blank_line(raw):
    assert parse_line(raw, path="x.jsonl", line_number=1) == {"a": 1}
    assert parse_line(b"  \r", path="x.jsonl", line_number=1) is None
    assert parse_line("", path="x.jsonl", line_number=1) is None


@pytest.mark.parametrize("raw, problem", [
    (b"\xff", "invalid UTF-8 at byte 0"), ("[1]", "not a JSON object (a list)"), (b"null", "not a JSON object (a NoneType)"),
    ("{", "not valid JSON (Expecting property name enclosed in double quotes)"),
    ("[" * 100_000, "not valid JSON (nested too deeply)"),
])
def test_parse_line_names_the_file_the_line_and_what_is_wrong(raw, problem):
    with pytest.raises(JSONLineError) as info:
        parse_line(raw, path="/some/dir/rows.jsonl", line_number=4)
    assert isinstance(info.value, AttnlensError) and info.value.problem == problem
    assert info.value.line_number == 4 and info.value.path.name == "rows.jsonl"
    assert str(info.value) == f"rows.jsonl, line 4: {problem}"


def test_damaged_lines_shows_the_first_ones_and_counts_the_rest():
    problems = [f"line {n}: not valid JSON (Expecting value)" for n in range(1, 13)]
    assert damaged_lines(problems[:2]) == "line 1: not valid JSON (Expecting value); line 2: not valid JSON (Expecting value)"
    assert damaged_lines(problems, limit=1) == "line 1: not valid JSON (Expecting value); and 11 more"
    assert damaged_lines(problems).endswith("line 10: not valid JSON (Expecting value); and 2 more")


def test_a_missing_file_says_what_was_read(tmp_path):
    with pytest.raises(AttnlensError, match="cannot read examples .*nothing.jsonl"):
        read_jsonl(tmp_path / "nothing.jsonl", what="examples")
