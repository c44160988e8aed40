"""JSON Lines reading shared by the experiments and head profiling."""

import pytest

from attnlens import AttnlensError
from attnlens.experiments.runner import ExperimentError
from attnlens.core.records import read_jsonl


def test_rows_with_where_they_came_from(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"a": 1}\n\n{"b": 2}\n', encoding="utf-8")
    assert read_jsonl(path) == [("data.jsonl, line 1", {"a": 1}), ("data.jsonl, line 3", {"b": 2})]


@pytest.mark.parametrize("text, words", [('{"a": 1}\n[1, 2]\n', "line 2: not a JSON object"),
                                         ('{"a": 1}\n{oops\n', "line 2: not valid JSON")])
def test_bad_lines_name_the_line_and_raise_the_callers_error(tmp_path, text, words):
    path = tmp_path / "bad.jsonl"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ExperimentError, match=words):
        read_jsonl(path, error=ExperimentError)


def test_a_missing_file_says_what_was_read(tmp_path):
    with pytest.raises(AttnlensError, match="cannot read examples .*nothing.jsonl"):
        read_jsonl(tmp_path / "nothing.jsonl", what="examples")
