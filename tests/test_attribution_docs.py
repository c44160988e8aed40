"""docs/attribution-methods.md: every Python block runs, in order, in one namespace, on the embedded model
(a block preceded by ``<!-- network -->`` needs a chat server and is skipped)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "attribution-methods.md"


def offline_blocks() -> list[str]:
    text = DOC.read_text(encoding="utf-8")
    out = []
    for match in re.finditer(r"(<!-- network -->\n)?```python\n(.*?)```", text, re.DOTALL):
        if not match.group(1):
            out.append(match.group(2))
    return out


def test_the_page_has_examples_and_no_placeholders():
    text = DOC.read_text(encoding="utf-8")
    assert len(offline_blocks()) >= 3 and "PLACEHOLDER" not in text


@pytest.mark.embedded
def test_every_block_runs(embedded, monkeypatch, capsys):
    import attnlens as al

    monkeypatch.setattr(al, "load_model", lambda *a, **k: embedded)
    namespace: dict = {}
    for i, code in enumerate(offline_blocks()):
        exec(compile(code, f"{DOC.name}, block {i + 1}", "exec"), namespace)
    assert namespace["record"].method == "grad_x_input" and len(namespace["record"].scores) > 3
    assert set(namespace["result"].summary()) == {"deletion_area", "insertion_area", "comprehensiveness_aopc",
                                                  "sufficiency_aopc"}
    assert "random" in capsys.readouterr().out
