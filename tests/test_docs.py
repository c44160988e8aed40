"""The docs site builds strictly and offline, its references are complete, and its views are drawn.

One strict build (``mkdocs build --strict``, what ``make docs`` runs) into a temporary
folder serves every test here: the command-line reference lists every subcommand and
option of the parsers, the API reference every name in ``attnlens.__all__``, no page
loads anything from the network, and a built page opened in headless Chromium draws its
embedded view (the Chromium tests skip, saying why, where it is not installed).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import attnlens
from attnlens.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
HOOKS = ROOT / "docs" / "hooks"


def _hook(name: str):
    spec = importlib.util.spec_from_file_location(f"docs_hook_{name}", HOOKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    return out


def _page(site: Path, name: str) -> str:
    return (site / name / "index.html").read_text(encoding="utf-8")


def test_every_page_is_in_the_nav_and_built(site):
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f" {page.name}" in nav, f"{page.name} is not in mkdocs.yml's nav"
        built = site / "index.html" if page.stem == "index" else site / page.stem / "index.html"
        assert built.is_file()


def test_no_page_loads_anything_from_the_network(site):
    for page in site.rglob("*.html"):
        html = page.read_text(encoding="utf-8")
        assert re.search(r"""<(script|img|iframe)\b[^>]*\bsrc=["']?(https?:)?//""", html) is None, page
        assert re.search(r"""<link\b[^>]*\bhref=["']?(https?:)?//""", html) is None, page
        assert "fonts.googleapis" not in html and "fonts.gstatic" not in html, page


def test_the_cli_reference_has_every_command_and_option(site):
    html = _page(site, "cli")
    walk = _hook("cli_reference").walk
    parser = build_parser()
    commands = [((), parser)] + [(path, sub) for path, _, sub in walk(parser)]
    assert len(commands) > 10
    for path, sub in commands:
        title = " ".join(("attnlens", *path))
        heading = re.search(rf'<h[234] id="[^"]*">{re.escape(title)}<', html)
        assert heading, f"{title} is missing from the command-line reference"
        section = html[heading.end():]
        section = re.split(r"<h[234] id=", section, maxsplit=1)[0]
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            for option in action.option_strings:
                assert f"<code>{option}</code>" in section, f"{title} {option} is missing"
            if not action.option_strings and not isinstance(action, argparse._SubParsersAction):
                assert f"<code>{action.metavar or action.dest}</code>" in section, f"{title} {action.dest}"


def test_the_api_reference_has_every_public_name(site):
    html = _page(site, "api")
    defined_at = _hook("api_reference").defined_at
    assert len(attnlens.__all__) > 40
    for name in attnlens.__all__:
        path = defined_at(name)
        # a heading named for the public name, anchored at where it is defined
        heading = rf'id="{re.escape(path)}"[^>]*>\s*attnlens\.{re.escape(name)}\s*<'
        assert re.search(heading, html), f"attnlens.{name} ({path}) is not on the API page"
    # generated from the docstrings: a parameter's description is there
    assert "level-2 bias" in html or "delta_mid" in html
    assert "the layer to show (negative counts from the end)" in html  # steering_diff's docstring


def _chromium() -> str:
    import shutil

    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("chromium is not installed (`make test` runs `apt-get install -y chromium` when it can)")
    return path


def _drawn(page: Path, profile: Path) -> str:
    command = [
        _chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
        "--virtual-time-budget=10000", "--dump-dom", page.resolve().as_uri(),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return re.sub(r"<script.*?</script>", "", result.stdout, flags=re.DOTALL)  # what the page drew


def test_chromium_draws_the_views_of_the_built_pages(site, tmp_path):
    _chromium()
    steering = site / "steering" / "index.html"
    assert "<!-- view:" not in steering.read_text(encoding="utf-8")  # every marker was replaced
    drawn = _drawn(steering, tmp_path / "profile")
    # the steering difference of layer 5, heads 0-2: three parts, each a head selector with one
    # thumbnail per head and the zoomed pattern, all drawn on canvases by circuitsvis' inlined script
    assert drawn.count("Head Selector") == 3
    assert drawn.count("<canvas") == 3 * (3 + 1)
    assert all(f"L5H{h}" in drawn for h in range(3))
    # without its script the same page draws nothing: the check above sees drawing, not markup
    blank = tmp_path / "blank.html"
    blank.write_text(re.sub(r"<script.*?</script>", "", steering.read_text(encoding="utf-8"), flags=re.DOTALL),
                     encoding="utf-8")
    assert _drawn(blank, tmp_path / "profile").count("<canvas") == 0
    # Influence: plotly draws its figure into SVG, circuitsvis the token heat maps
    drawn = _drawn(site / "attribution" / "index.html", tmp_path / "profile")
    assert "main-svg" in drawn and drawn.count("Influence of") >= 1
    # the experiment plot the experiments page embeds
    plot = site / "views" / "experiment" / "accuracy_vs_delta.html"
    assert 'src="../views/experiment/accuracy_vs_delta.html"' in _page(site, "experiments")
    assert "main-svg" in _drawn(plot, tmp_path / "profile")
