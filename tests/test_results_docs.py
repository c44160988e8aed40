"""The docs' result tables against the result files their commands wrote (docs/results/*.json).

A table printed from a results file has a marker line before it::

    <!-- results: docs/results/NAME.json TABLE -->
    <!-- results: docs/results/NAME.json TABLE rows: REGEX -->

The second shows only the file's rows whose label REGEX finds (one of many pairs, say). Every
marked table must have the file's headers and row labels (those the filter keeps), and every number in
it must be the file's number to the digits the table shows. A result table (one with
intervals) without a marker is one whose run is no longer on disk: those are counted
per page in UNBACKED, so a new one, or one that gets its file, changes the count.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from attnlens.experiments import results

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
MARKER = re.compile(r"^<!--\s*results:\s*(\S+)\s+(\S+)(?:\s+rows:\s*(.+?))?\s*-->\s*$")
NUMBER = re.compile(r"[+\-\u2212]?\d+(?:\.\d+)?")
INTERVAL = re.compile(r"\[\s*[+\-\u2212]?\d+(?:\.\d+)?,\s*[+\-\u2212]?\d+(?:\.\d+)?\s*\]")

#: result tables (cells with intervals) whose runs are no longer on disk, so no results file backs them:
#: page -> how many. Regenerate one with its command and --results, mark it, and lower its count.
UNBACKED: dict[str, int] = {}


def tables(text: str) -> list[tuple[int, tuple[str, str, str | None] | None, list[list[str]]]]:
    """Every Markdown table of a page: (line number, its marker (file, table, row filter or None) or None,
    its rows of cells with the header first and the separator left out)."""
    lines = text.split("\n")
    found, i = [], 0
    while i < len(lines):
        if lines[i].startswith("|") and i + 1 < len(lines) and re.match(r"^\|\s*:?-", lines[i + 1]):
            start = i
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                if i != start + 1:
                    rows.append([c.strip() for c in lines[i].strip().strip("|").split("|")])
                i += 1
            j = start - 1
            while j >= 0 and not lines[j].strip():
                j -= 1
            m = MARKER.match(lines[j].strip()) if j >= 0 else None
            found.append((start + 1, (m.group(1), m.group(2), m.group(3)) if m else None, rows))
            continue
        i += 1
    return found


def numbers(cell: str) -> list[tuple[float, int]]:
    """The numbers of a cell, each with the decimals it shows."""
    out = []
    for text in NUMBER.findall(cell.replace(",", ", ")):
        text = text.replace("\u2212", "-")
        out.append((float(text), len(text.split(".")[1]) if "." in text else 0))
    return out


def plain(cell: str) -> str:
    return " ".join(cell.replace("`", "").split())


def mismatches(rows: list[list[str]], spec: dict) -> list[str]:
    """How a table differs from a results file's table ([] when it matches)."""
    problems = []
    header, body = rows[0], rows[1:]
    if [plain(h) for h in header] != [plain(c) for c in spec["columns"]]:
        problems.append(f"headers {header} != {spec['columns']}")
        return problems
    if len(body) != len(spec["rows"]):
        problems.append(f"{len(body)} rows, the file has {len(spec['rows'])}")
        return problems
    for row, expected in zip(body, spec["rows"]):
        for column, (cell, value) in enumerate(zip(row, expected)):
            where = f"row {plain(row[0])!r}, column {spec['columns'][column]!r}"
            if value is None:
                if plain(cell):
                    problems.append(f"{where}: {cell!r} where the file has nothing")
            elif isinstance(value, str):
                if plain(cell) != plain(value):
                    problems.append(f"{where}: {cell!r} != {value!r}")
            else:
                want = value if isinstance(value, list) else [value]
                got = numbers(cell)
                if len(got) != len(want):
                    problems.append(f"{where}: {cell!r} has {len(got)} numbers, the file {len(want)}")
                    continue
                for (shown, decimals), exact in zip(got, want):
                    if abs(shown - exact) > 0.5 * 10 ** -decimals + 1e-9:
                        problems.append(f"{where}: {shown} is not {exact} to {decimals} decimals")
    return problems


def marked() -> list[tuple[str, int, str, str, str | None, list[list[str]]]]:
    return [(page.name, line, path, name, pattern, rows) for page in PAGES
            for line, mark, rows in tables(page.read_text(encoding="utf-8")) if mark
            for path, name, pattern in [mark]]


MARKED = marked()


def test_some_tables_are_marked():
    assert MARKED, "no docs table is marked with its results file"


@pytest.mark.parametrize("page,line,path,name,pattern,rows", MARKED, ids=[f"{m[0]}:{m[1]}" for m in MARKED])
def test_table_matches_its_results_file(page, line, path, name, pattern, rows):
    data = results.read_results(ROOT / path)
    assert data["command"].startswith("attnlens "), f"{path} does not name the command that wrote it"
    assert name in data["tables"], f"{page}:{line}: {path} has no table {name!r}"
    spec = results.rows_matching(data["tables"][name], pattern)
    assert spec["rows"], f"{page}:{line}: no row of {path} {name} matches {pattern!r}"
    assert mismatches(rows, spec) == [], f"{page}:{line} against {path} {name}"


def test_every_results_file_is_printed():
    used = {path for _, _, path, _, _, _ in MARKED}
    files = {f"docs/results/{p.name}" for p in (ROOT / "docs" / "results").glob("*.json")}
    assert files, "docs/results/ holds no results file"
    assert files <= used, f"results files no docs table prints: {sorted(files - used)}"


def test_unbacked_result_tables_are_counted():
    counts = {}
    for page in PAGES:
        for _, mark, rows in tables(page.read_text(encoding="utf-8")):
            if mark is None and any(INTERVAL.search(c) for row in rows[1:] for c in row):
                counts[page.name] = counts.get(page.name, 0) + 1
    assert counts == UNBACKED


# ----------------------------------------------------------------------------- the checker itself


SPEC = results.table(["method", "n", "score"], [["a", 10, [0.5, 0.25, 0.75]], ["b \u2212 a", 10, [-0.125, -0.5, 0.25]]],
                     digits=2, signed=[2])


def test_rendered_table_matches_and_a_changed_number_does_not():
    text = "<!-- results: docs/results/x.json main -->\n\n" + results.markdown(SPEC, minus="\u2212")
    [(_, mark, rows)] = tables(text)
    assert mark == ("docs/results/x.json", "main", None)
    assert mismatches(rows, SPEC) == []
    wrong = text.replace("[\u22120.50, +0.25]", "[\u22120.50, +0.35]")
    assert wrong != text
    [(_, _, rows)] = tables(wrong)
    assert mismatches(rows, SPEC) == ["row 'b \u2212 a', column 'score': 0.35 is not 0.25 to 2 decimals"]
    swapped = text.replace("\u22120.13 [", "+0.13 [").replace("\u22120.12 [", "+0.12 [")
    [(_, _, rows)] = tables(swapped)
    assert mismatches(rows, SPEC), "a sign flip must be found"


def test_rounding_is_judged_at_the_shown_digits():
    [(_, _, rows)] = tables("| method | n | score |\n|---|---:|---|\n| a | 10 | 0.5 [0.3, 0.8] |\n"
                            "| b \u2212 a | 10 | \u22120.13 [\u22120.50, +0.25] |\n")
    assert mismatches(rows, SPEC) == []
    [(_, _, rows)] = tables("| method | n | score |\n|---|---|---|\n| a | 11 | 0.5 [0.3, 0.8] |\n"
                            "| b \u2212 a | 10 | \u22120.13 [\u22120.50, +0.25] |\n")
    assert mismatches(rows, SPEC) == ["row 'a', column 'n': 11.0 is not 10 to 0 decimals"]
    [(_, _, rows)] = tables("| method | n | score |\n|---|---|---|\n| a | 10 | 0.5 [0.3, 0.8] |\n")
    assert mismatches(rows, SPEC) == ["1 rows, the file has 2"]


def test_results_file_round_trip(tmp_path):
    path = results.write_results(tmp_path / "r.json", command="attnlens experiment x", kind="x",
                                 tables={"main": SPEC})
    assert results.read_results(path)["tables"]["main"] == json.loads(json.dumps(SPEC))
    (tmp_path / "bad.json").write_text('{"format": 99, "tables": {}}')
    with pytest.raises(Exception, match="not a results file"):
        results.read_results(tmp_path / "bad.json")


def test_compare_results_are_the_printed_table():
    from attnlens.experiments.compare import Comparison, MethodRow

    comparison = Comparison("json", "exact_format", 4, 6, {"mean": 0.4, "low": 0.1, "high": 0.7, "n": 6},
                            [MethodRow("spa", "tuned", "omega", 2.0, 0.6, 0.3, 0.9, 0.2, -0.1, 0.5, 6, tied=2),
                             MethodRow("guide", "default", "delta_mid", 1.0, 0.3, 0.0, 0.6, -0.1, -0.4, 0.2, 6),
                             MethodRow("spotlight", "tuned", "target", None, *[float("nan")] * 6, 6)])
    spec = results.comparison_tables(comparison)["comparison"]
    [(_, _, rows)] = tables(comparison.markdown())
    assert mismatches(rows, spec) == []
    assert spec["rows"][1][1] == "omega=2 (2 tied on development)" and spec["rows"][3][2:] == [None, None]
    [(_, _, rows)] = tables(comparison.markdown().replace("+0.200 [", "+0.300 ["))
    assert mismatches(rows, spec) == ["row 'spa (tuned)', column 'difference from none [95% CI]': "
                                      "0.3 is not 0.2 to 3 decimals"]


def test_faithfulness_results_file_from_a_run(tiny, tmp_path, capsys):
    """The experiment's tables in the file are its summary.csv and pairs.csv, and the CLI writes the file."""
    import csv

    from attnlens.cli.experiment import _write_results
    from attnlens.experiments import run_experiment
    from attnlens.experiments.faithfulness import FaithfulnessConfig

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("The cat sat on the mat and\nParis is the capital of\n")
    config = FaithfulnessConfig(out=str(tmp_path / "run"), dataset=str(prompts), methods=["attention", "occlusion"],
                                seeds=2, points=3, bootstrap=50)
    result = run_experiment("faithfulness", config, model=tiny)
    _write_results(str(tmp_path / "f.json"), result, config, quiet=False)
    printed = capsys.readouterr().out
    data = results.read_results(tmp_path / "f.json")
    assert data["kind"] == "faithfulness" and data["command"].startswith("attnlens ")
    summary, paired = data["tables"]["summary"], data["tables"]["paired"]
    assert [r[0] for r in summary["rows"]] == ["attention", "occlusion", "random (mean of 2 orders)"]
    assert [r[0] for r in paired["rows"]] == ["attention \u2212 random", "occlusion \u2212 random",
                                               "attention \u2212 occlusion"]
    with open(tmp_path / "run" / "summary.csv", newline="") as handle:
        occlusion = [r for r in csv.DictReader(handle) if r["condition"] == "occlusion"][0]
    assert summary["rows"][1][2] == [float(occlusion[k]) for k in ("deletion_area", "deletion_area_low",
                                                                    "deletion_area_high")]
    with open(tmp_path / "run" / "pairs.csv", newline="") as handle:
        [pair] = list(csv.DictReader(handle))
    assert paired["rows"][2][4] == [float(pair[k]) for k in ("comprehensiveness_aopc", "comprehensiveness_aopc_low",
                                                               "comprehensiveness_aopc_high")]
    # what the command printed is the docs' tables, each after its marker
    found = tables(printed)
    assert [m for _, m, _ in found] == [(str(tmp_path / "f.json"), "summary", None),
                                         (str(tmp_path / "f.json"), "paired", None)]
    for _, (_, name, _), rows in found:
        assert mismatches(rows, data["tables"][name]) == []


def test_experiment_tables_leave_out_a_metric_no_condition_has():
    """Under --no-influence the influence column is empty in every row: the tables leave it out."""

    class Result:
        study, metrics = "bios", ["accuracy", "influence"]

        def table(self):
            return [{"condition": "none", "items": 4, "accuracy": 0.5, "accuracy_low": 0.25, "accuracy_high": 0.75,
                     "influence": "", "influence_low": "", "influence_high": ""},
                    {"condition": "guide@1", "items": 4, "accuracy": 0.75, "accuracy_low": 0.5, "accuracy_high": 1.0,
                     "accuracy_diff": 0.25, "accuracy_diff_low": 0.0, "accuracy_diff_high": 0.5,
                     "influence": "", "influence_low": "", "influence_high": ""}]

    tables_ = results.experiment_tables(Result(), None)
    assert tables_["summary"]["columns"] == ["condition", "n", "accuracy"]
    assert tables_["paired"]["columns"] == ["difference from none", "n", "accuracy"]
    assert tables_["paired"]["rows"] == [["guide@1", 4, [0.25, 0.0, 0.5]]]
    Result.table_with_influence = Result.table

    def with_influence(self):
        rows = Result.table_with_influence(self)
        rows[0].update(influence=0.1, influence_low=0.05, influence_high=0.15)
        return rows

    Result.table = with_influence
    assert results.experiment_tables(Result(), None)["summary"]["columns"] == ["condition", "n", "accuracy",
                                                                                "influence"]


def test_a_row_filter_shows_some_rows_and_each_is_still_checked():
    text = ("<!-- results: docs/results/x.json main rows: \u2212 a$ -->\n\n"
            "| method | n | score |\n|---|---|---|\n| b \u2212 a | 10 | \u22120.13 [\u22120.50, +0.25] |\n")
    [(_, mark, rows)] = tables(text)
    assert mark == ("docs/results/x.json", "main", "\u2212 a$")
    assert mismatches(rows, results.rows_matching(SPEC, mark[2])) == []
    assert [r[0] for r in results.rows_matching(SPEC, mark[2])["rows"]] == ["b \u2212 a"]
    assert mismatches(rows, SPEC) == ["1 rows, the file has 2"]  # without the filter the row count differs
    [(_, _, rows)] = tables(text.replace("+0.25]", "+0.35]"))
    assert mismatches(rows, results.rows_matching(SPEC, mark[2])), "a changed number in a filtered table must be found"


def test_the_printer_shows_a_filtered_table_after_its_marker(tmp_path, capsys):
    path = results.write_results(tmp_path / "r.json", command="attnlens experiment x", kind="x", tables={"main": SPEC})
    assert results.main([str(path), "main", "--rows", "^a$"]) == 0
    [(_, mark, rows)] = tables(capsys.readouterr().out)
    assert mark == (str(path), "main", "^a$") and [r[0] for r in rows[1:]] == ["a"]
    assert results.main([str(path), "main", "--rows", "^zz"]) == 2
    assert "matches" in capsys.readouterr().err
    with pytest.raises(Exception, match="not a regular expression"):
        results.main([str(path), "main", "--rows", "("])
