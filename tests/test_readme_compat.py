"""Every snippet of the README's "Coming from ..." section runs, in order, in one namespace (embedded model)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## Coming from pay-attention-pipeline, pastalib, AISteer360's PASTA or attention-data"


def snippets() -> list[str]:
    text = README.read_text(encoding="utf-8")
    start = text.index(SECTION)
    end = text.index("\n## ", start + len(SECTION))
    return re.findall(r"```python\n(.*?)```", text[start:end], re.DOTALL)


def test_the_section_has_snippets_for_every_tool():
    code = "\n".join(snippets())
    for marker in ("transformers.pipeline(\"pay-attention\"", "compat.pastalib import PASTA", "head_config=[4, 9]",
                   "compat.attention_data import AttentionData"):
        assert marker in code


@pytest.mark.embedded
def test_every_snippet_runs(capsys):
    namespace: dict = {}
    try:
        for i, code in enumerate(snippets()):
            exec(compile(code, f"README.md: Coming from ..., snippet {i + 1}", "exec"), namespace)
    finally:
        server = namespace.get("server")
        if server is not None:
            server.stop()
    out = capsys.readouterr().out
    assert "Layer 3, head 2:" in out and "Layer 3 Head 2, top 5" in out
