"""A command's result tables as a small JSON file, for the docs to print and a test to check.

``attnlens compare ... --results FILE`` and ``attnlens experiment STUDY ... --results FILE``
write, beside everything they write under ``--out``, one small JSON file holding the
tables they print: the command that made them, and per table its column headers and
rows. A cell is a text, a number, ``[mean, low, high]`` (an estimate with its
interval) or ``null`` (empty). The docs keep these files in ``docs/results/`` and
put a marker line before each table they print from one::

    <!-- results: docs/results/faithfulness.json summary -->

``tests/test_results_docs.py`` reads every marked table and checks its headers,
row labels and every number against the file, to the digits the table shows.
``python -m attnlens.experiments.results FILE [TABLE] [--rows REGEX]`` prints a file's tables as
Markdown (what the command printed when it wrote it), or only the rows of a table whose label
REGEX finds, after a marker ``<!-- results: FILE TABLE rows: REGEX -->`` that says so.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..core.errors import ExperimentError

#: the format of the files; a reader refuses another
FORMAT = 1
MINUS = "\u2212"


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]], *, digits: int = 3,
          signed: Sequence[int] = ()) -> dict[str, Any]:
    """One table: ``columns`` its headers, ``rows`` its cells (text, number, ``[mean, low, high]`` or None);
    ``digits`` the decimals shown; ``signed`` the column indices shown with a sign (differences)."""
    columns = [str(c) for c in columns]
    out_rows = []
    for row in rows:
        if len(row) != len(columns):
            raise ExperimentError(f"a result row has {len(row)} cells for {len(columns)} columns: {row!r}")
        out_rows.append([_cell(c) for c in row])
    return {"columns": columns, "rows": out_rows, "digits": int(digits), "signed": sorted(int(i) for i in signed)}


def _cell(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        raise ExperimentError(f"a result cell cannot be a boolean: {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, Sequence) and len(value) == 3:
        parts = [_cell(float(v)) if v is not None else None for v in value]
        return None if any(p is None for p in parts) else parts
    raise ExperimentError(f"a result cell is text, a number or [mean, low, high]; got {value!r}")


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command as typed: ``attnlens`` and its arguments (``sys.argv`` by default)."""
    args = list(sys.argv[1:] if argv is None else argv)
    return "attnlens " + shlex.join(args)


def write_results(path: str | Path, *, command: str, kind: str, tables: Mapping[str, dict[str, Any]],
                  about: Mapping[str, Any] | None = None) -> Path:
    """Write the file (atomically): ``{"format", "kind", "command", "about", "tables"}``; returns its path."""
    from .store import write_atomic

    if not tables:
        raise ExperimentError("a results file needs at least one table")
    data = {"format": FORMAT, "kind": kind, "command": command, "about": dict(about or {}),
            "tables": {name: tables[name] for name in tables}}
    target = Path(path).expanduser()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(target, json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    except OSError as exc:
        raise ExperimentError(f"cannot write the results file {str(target)!r}: {exc.strerror or exc}") from None
    return target


def read_results(path: str | Path) -> dict[str, Any]:
    """A results file, checked for its format and the shape of its tables."""
    target = Path(path).expanduser()
    try:
        data = json.loads(target.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ExperimentError(f"cannot read the results file {str(target)!r}: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("tables"), dict):
        raise ExperimentError(f"{str(target)!r} is not a results file of format {FORMAT}")
    for name, t in data["tables"].items():
        if not isinstance(t, dict) or any(len(r) != len(t.get("columns", ())) for r in t.get("rows", ())):
            raise ExperimentError(f"{str(target)!r}: table {name!r} has rows that do not fit its columns")
    return data


def _number(x: float, digits: int, sign: bool, minus: str) -> str:
    text = f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"
    return text.replace("-", minus)


def render_cell(value: Any, digits: int, sign: bool = False, minus: str = "-") -> str:
    """A cell as the Markdown table shows it."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _number(value, digits, sign, minus)
    mean, low, high = value
    return (f"{_number(mean, digits, sign, minus)} [{_number(low, digits, sign, minus)}, "
            f"{_number(high, digits, sign, minus)}]")


def markdown(t: Mapping[str, Any], *, minus: str = "-") -> str:
    """A table of a results file as Markdown (``minus``: the sign negative numbers get)."""
    signed = set(t.get("signed", ()))
    digits = int(t.get("digits", 3))
    lines = ["| " + " | ".join(t["columns"]) + " |", "|" + "---|" * len(t["columns"])]
    for row in t["rows"]:
        cells = [render_cell(v, digits, i in signed, minus) for i, v in enumerate(row)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- the commands' tables


def comparison_tables(comparison: Any) -> dict[str, dict[str, Any]]:
    """``attnlens compare``'s table (:meth:`~attnlens.experiments.compare.Comparison.markdown`'s rows)."""
    pct = f"{comparison.confidence:.0%}"
    u = comparison.unsteered
    rows: list[list[Any]] = [["none", "", [u["mean"], u["low"], u["high"]], None]]
    for r in comparison.rows:
        if r.strength is None:
            rows.append([f"{r.method} ({r.setting})", r.label(), None, None])
        else:
            rows.append([f"{r.method} ({r.setting})", r.label(), [r.mean, r.low, r.high],
                         [r.difference, r.difference_low, r.difference_high]])
    columns = ["method", "strength", f"{comparison.metric} (mean [{pct} CI])", f"difference from none [{pct} CI]"]
    return {"comparison": table(columns, rows, digits=3, signed=[3])}


#: how the faithfulness tables name the metrics (the docs' headers)
FAITHFULNESS_HEADERS = {
    "deletion_area": "deletion area (lower better)",
    "insertion_area": "insertion area (higher better)",
    "comprehensiveness_aopc": "comprehensiveness AOPC (higher better)",
    "sufficiency_aopc": "sufficiency AOPC (lower better)",
}


def experiment_tables(result: Any, config: Any) -> dict[str, dict[str, Any]]:
    """``attnlens experiment``'s tables: each condition's means with intervals (``summary``) and, where the
    study has them, the paired differences (``paired``: from ``none``, or for ``faithfulness`` from the
    random orders and then every pair of methods, from ``pairs.csv``)."""
    rows = result.table()
    if result.study == "faithfulness":
        from .faithfulness import PAIRS_FILE, RANDOM

        metrics = list(FAITHFULNESS_HEADERS)
        label = {RANDOM: f"random (mean of {config.seeds} orders)"}
        summary = [[label.get(r["condition"], r["condition"]), r["items"]]
                   + [_estimate(r, m) for m in metrics] for r in rows]
        paired = [[f"{r['condition']} {MINUS} {RANDOM}", r["items"]] + [_estimate(r, f"{m}_diff") for m in metrics]
                  for r in rows if r["condition"] != RANDOM]
        pairs_path = Path(result.out) / PAIRS_FILE
        with open(pairs_path, newline="", encoding="utf-8") if pairs_path.is_file() else io.StringIO() as handle:
            pair_rows = list(csv.DictReader(handle))
        for p in pair_rows:
            paired.append([f"{p['first']} {MINUS} {p['second']}", int(p["items"])]
                          + [_estimate(p, m) for m in metrics])
        headers = [FAITHFULNESS_HEADERS[m] for m in metrics]
        plain = [h.split(" (")[0] for h in headers]
        return {"summary": table(["method", "n", *headers], summary, digits=2),
                "paired": table(["paired difference", "n", *plain], paired, digits=2, signed=range(2, 6))}
    # a metric no condition has a value for (influence under --no-influence) is left out
    metrics = [m for m in result.metrics if any(_estimate(r, m) is not None for r in rows)]
    summary = [[r["condition"], r["items"]] + [_estimate(r, m) for m in metrics] for r in rows]
    out = {"summary": table(["condition", "n", *metrics], summary, digits=3)}
    paired = [[r["condition"], r["items"]] + [_estimate(r, f"{m}_diff") for m in metrics]
              for r in rows if r["condition"] != "none"]
    if any(any(c is not None for c in row[2:]) for row in paired):
        out["paired"] = table(["difference from none", "n", *metrics], paired, digits=3, signed=range(2, 2 + len(metrics)))
    return out


def _estimate(row: Mapping[str, Any], key: str) -> list[float] | None:
    values = [row.get(key), row.get(f"{key}_low"), row.get(f"{key}_high")]
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):
        return None
    return None if any(math.isnan(v) for v in numbers) else numbers


def rows_matching(spec: Mapping[str, Any], pattern: str | None) -> dict[str, Any]:
    """A table with only the rows whose label (first cell) the regular expression ``pattern`` finds; the
    whole table when ``pattern`` is None. A docs marker ``<!-- results: FILE TABLE rows: PATTERN -->``
    prints such a part (one method's pairs out of every pair, say)."""
    if pattern is None:
        return dict(spec)
    import re

    try:
        found = re.compile(pattern)
    except re.error as exc:
        raise ExperimentError(f"rows {pattern!r} is not a regular expression: {exc}") from None
    return {**spec, "rows": [row for row in spec["rows"] if found.search(str(row[0]))]}


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m attnlens.experiments.results",
                                     description="Print a results file's tables as Markdown, each after its "
                                                 "docs marker (what the command printed when it wrote it).")
    parser.add_argument("file", help="a results file (docs/results/*.json)")
    parser.add_argument("table", nargs="?", help="only this table (default: every table)")
    parser.add_argument("--rows", metavar="REGEX", help="only the rows whose label this regular expression finds "
                        "(needs TABLE); the marker carries it")
    args = parser.parse_args(argv)
    if args.rows is not None and args.table is None:
        parser.error("--rows needs a TABLE")
    data = read_results(args.file)
    names = [args.table] if args.table else list(data["tables"])
    for name in names:
        if name not in data["tables"]:
            print(f"no table {name!r} in {args.file} (it has: {', '.join(data['tables'])})", file=sys.stderr)
            return 2
    print(f"<!-- {data['command']} -->")
    for name in names:
        spec = rows_matching(data["tables"][name], args.rows)
        if not spec["rows"]:
            print(f"no row of {name!r} in {args.file} matches {args.rows!r}", file=sys.stderr)
            return 2
        print(f"\n<!-- results: {args.file} {name}{f' rows: {args.rows}' if args.rows else ''} -->")
        print(markdown(spec, minus=MINUS if data.get("kind") == "faithfulness" else "-"), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["comparison_tables", "experiment_tables", "markdown", "read_results", "rows_matching", "table",
           "write_results"]
