"""Every demo notebook runs top to bottom on the embedded model, and shows what it promises.

The notebooks are stored executed, so a reader on the web sees the results. The stored outputs are
checked here without running anything (small, at least one picture, no warning, no progress bar),
and against a fresh run's structure (each cell's outputs: their kinds and formats) by executing them.

Refresh the stored outputs after changing a notebook (or what it calls):

    python tests/test_notebooks.py            # every notebook
    python tests/test_notebooks.py 03_influence.ipynb
"""

from __future__ import annotations

import re
import sys
from functools import lru_cache
from pathlib import Path

import nbformat
import pytest

DEMOS = Path(__file__).resolve().parent.parent / "demos"
NOTEBOOKS = sorted(p.name for p in DEMOS.glob("*.ipynb"))
#: the most a stored notebook (all its outputs) may weigh, and one output of it
MAX_NOTEBOOK_BYTES = 400_000
MAX_OUTPUT_BYTES = 250_000
#: what a warning or a progress bar leaves in an output
NOISE = re.compile(r"Warning\b|warnings\.warn|\d+%\|[^|]*\||\bit/s\]|Loading weights|IProgress")


def run_notebook(name: str, timeout: int = 900) -> nbformat.NotebookNode:
    """Execute ``demos/<name>`` in a fresh kernel (cwd: demos/) and return the executed notebook."""
    from nbclient import NotebookClient

    nb = nbformat.read(DEMOS / name, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(DEMOS)}})
    client.execute()
    return nb


@lru_cache(maxsize=None)
def fresh(name: str) -> nbformat.NotebookNode:
    """``name`` executed once per test session."""
    return run_notebook(name)


def stored(name: str) -> nbformat.NotebookNode:
    return nbformat.read(DEMOS / name, as_version=4)


def outputs_text(nb: nbformat.NotebookNode) -> str:
    """All text and HTML the notebook's cells produced, concatenated."""
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if "text" in out:
                parts.append(out["text"])
            data = out.get("data", {})
            for key in ("text/plain", "text/html"):
                if key in data:
                    parts.append(data[key])
    return "\n".join(parts)


def structure(nb: nbformat.NotebookNode) -> list[list[tuple[str, ...]]]:
    """Per code cell, its outputs as (kind, stream name or the sorted formats); consecutive stream
    outputs of one name count as one (the kernel may split a print into several)."""
    cells = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        outs: list[tuple[str, ...]] = []
        for out in cell.get("outputs", []):
            if out["output_type"] == "stream":
                shape = ("stream", out["name"])
                if outs and outs[-1] == shape:
                    continue
            else:
                shape = (out["output_type"], *sorted(out.get("data", {})))
            outs.append(shape)
        cells.append(outs)
    return cells


def _size(out) -> int:
    return len(nbformat.writes(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(outputs=[out])])))


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_stored_notebook_is_executed_small_and_clean(name):
    nb = stored(name)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.get("execution_count") for c in code), f"{name} is stored unexecuted: run {__file__}"
    counts = [c.execution_count for c in code]
    assert counts == list(range(1, len(code) + 1)), f"{name} was not run top to bottom in one kernel"
    assert (DEMOS / name).stat().st_size <= MAX_NOTEBOOK_BYTES
    pictures = 0
    for cell in code:
        for out in cell.get("outputs", []):
            assert _size(out) <= MAX_OUTPUT_BYTES, f"an output of {name} is {_size(out)} bytes"
            assert out["output_type"] != "error", f"{name} stored an error"
            assert not (out["output_type"] == "stream" and out["name"] == "stderr"), \
                f"{name} has stderr output: {out['text'][:200]!r}"
            pictures += "image/png" in out.get("data", {}) or "image/svg+xml" in out.get("data", {})
    assert pictures >= 1, f"{name} shows no picture"
    noise = NOISE.search(outputs_text(nb))
    assert noise is None, f"{name} shows a warning or a progress bar: {noise.group(0)!r}"


@pytest.mark.notebook
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_stored_outputs_match_a_fresh_run(name):
    assert structure(fresh(name)) == structure(stored(name))
    noise = NOISE.search(outputs_text(fresh(name)))
    assert noise is None, f"a fresh run of {name} shows a warning or a progress bar: {noise.group(0)!r}"


@pytest.mark.notebook
def test_01_guide_notebook():
    text = outputs_text(fresh("01_guide.ipynb"))
    # the notebook prints one unsteered answer and one per GUIDE level
    for label in ("unsteered", "level 1", "level 2", "level 3"):
        assert label in text
    assert "steered answers differ from the unsteered one: True" in text


def _strip_metadata(nb: nbformat.NotebookNode) -> None:
    """Drop per-run metadata (timings, kernel versions), so a refresh changes only what the cells show."""
    nb.metadata.pop("widgets", None)
    nb.metadata["language_info"] = {"name": "python"}
    for cell in nb.cells:
        cell.metadata.pop("execution", None)


def refresh(names: list[str]) -> None:
    """Execute each notebook and store it with its outputs."""
    for name in names or NOTEBOOKS:
        nb = run_notebook(name)
        _strip_metadata(nb)
        nbformat.write(nb, DEMOS / name)
        print(f"{name}: {(DEMOS / name).stat().st_size:,} bytes")


if __name__ == "__main__":
    refresh(sys.argv[1:])
