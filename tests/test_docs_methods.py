"""docs/methods.md: every Python block runs, in order, in one namespace (on the embedded model)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "methods.md"


@pytest.mark.embedded
def test_methods_page_blocks_run(embedded, monkeypatch, tmp_path):
    import attnlens as al

    monkeypatch.setattr(al, "load_model", lambda *a, **k: embedded)
    monkeypatch.chdir(tmp_path)
    text = DOC.read_text(encoding="utf-8")
    blocks = re.findall(r"(<!-- network -->\n)?```python\n(.*?)```", text, re.DOTALL)
    assert len(blocks) >= 4
    namespace: dict = {}
    for i, (network, code) in enumerate(blocks):
        if not network:
            exec(compile(code, f"{DOC.name}, block {i + 1}", "exec"), namespace)
    assert namespace["result"].chosen in (2.0, 5.0)
