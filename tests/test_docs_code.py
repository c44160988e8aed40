"""Every ```python block of docs/*.md and README.md runs, page by page, on the embedded model.

Each page's blocks run in order in one namespace, in a temporary working directory
(files a block saves land there). A block whose fence follows the line
``<!-- network -->`` needs the network and is not run (see docs/architecture.md,
"Contributing"). A new page is picked up without changing this file.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NETWORK = "<!-- network -->"
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)

#: what a page's blocks must print, beyond running (the migration snippets print the views' headings)
EXPECTED_OUTPUT = {
    "docs/coming-from.md": ["Layer 3, head 2:", "Layer 3 Head 2, top 5"],
}


def blocks(text: str) -> list[tuple[int, str, bool]]:
    """(line number, code, needs the network) of each ```python block, in order."""
    found = []
    for match in FENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        before = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
        found.append((line, match.group(1), before == NETWORK))
    return found


#: pages whose blocks are run by a test of their own (it also writes their ``# file:`` modules and runs
#: their command lines)
OWN_RUNNER = {"docs/extending.md": "tests/test_extending.py"}


def pages() -> list[str]:
    found = [p.relative_to(ROOT).as_posix() for p in sorted((ROOT / "docs").glob("*.md"))]
    return [p for p in [*found, "README.md"] if p not in OWN_RUNNER]


def test_blocks_are_found_and_network_blocks_are_marked():
    text = (
        "a\n\n```python\nx = 1\n```\n\n<!-- network -->\n```python\nimport urllib\n```\n"
        "```bash\nls\n```\n```python   \ny = x\n```\n"
    )
    assert blocks(text) == [(3, "x = 1\n", False), (8, "import urllib\n", True), (14, "y = x\n", False)]
    listed = pages()
    assert "README.md" in listed and "docs/coming-from.md" in listed and "docs/steering.md" in listed
    assert all((ROOT / runner).is_file() for runner in OWN_RUNNER.values())
    # the migration snippets moved from the README to their page, and cover every tool
    code = "\n".join(c for _, c, _ in blocks((ROOT / "docs/coming-from.md").read_text(encoding="utf-8")))
    for marker in ('transformers.pipeline("pay-attention"', "compat.pastalib import PASTA", "head_config=[4, 9]",
                   "compat.attention_data import AttentionData"):
        assert marker in code


@pytest.mark.embedded
@pytest.mark.parametrize("page", [p for p in pages() if blocks((ROOT / p).read_text(encoding="utf-8"))])
def test_every_block_of_the_page_runs(page, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    ran = 0
    try:
        for line, code, network in blocks((ROOT / page).read_text(encoding="utf-8")):
            if network:
                continue
            exec(compile(code, f"{page}, block at line {line}", "exec"), namespace)
            ran += 1
    finally:
        server = namespace.get("server")
        if server is not None and hasattr(server, "stop"):
            server.stop()
    assert ran > 0
    out = capsys.readouterr().out
    for expected in EXPECTED_OUTPUT.get(page, []):
        assert expected in out, f"{page} should print {expected!r}"
