"""Views that explain themselves, as headless Chromium draws them.

Each kind of view is rendered from the tiny model, saved, drawn by Chromium and
screenshotted: the pages and pictures stay in ``test-artifacts/views/`` (and the test's
tmp dir) for a person to look at. A small probe script added to each saved page writes
what the browser laid out into the DOM (where the parts sit, how tall the page is,
whether each legend is visible), so the checks read the drawing, not only the markup.
Needs Debian's ``chromium``; skips otherwise.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import attnlens as al
from attnlens.viz.multiples import word_of

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "views"
TEXTS = ["The cat chases the mouse all day long.", "Paris is the capital of France and Rome of Italy."]
TAGGED = "<!-> Answer in French: <-!> <?-> Rewrite this <-?> Paris is the capital of France."

#: runs after the page has drawn; writes the layout it sees into <body data-probe="...">
PROBE = """<script>
window.addEventListener("load", () => setTimeout(() => {
  const box = (e) => { const r = e.getBoundingClientRect(); return [Math.round(r.left), Math.round(r.top),
                                                                    Math.round(r.width), Math.round(r.height)]; };
  const probe = {
    height: document.documentElement.scrollHeight,
    columns: [...document.querySelectorAll(".attnlens-column")].map(box),
    legends: [...document.querySelectorAll(".attnlens-legend")].map(box),
    canvases: document.querySelectorAll("canvas").length,
  };
  document.body.setAttribute("data-probe", JSON.stringify(probe));
}, 300));
</script>"""


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("chromium is not installed (`make test` runs `apt-get install -y chromium` when it can)")
    return path


def _draw(view, name: str, tmp: Path, width: int = 1600) -> dict:
    """Save ``view`` with the probe, screenshot it into ARTIFACTS and tmp, and return the probe's record."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = tmp / f"{name}.html"
    page.write_text(view.to_html().replace("</body>", PROBE + "\n</body>"), encoding="utf-8")
    base = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
            f"--user-data-dir={tmp / 'profile'}", "--virtual-time-budget=10000", f"--window-size={width},1200"]
    dom = subprocess.run([*base, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    match = re.search(r'data-probe="([^"]*)"', dom.stdout)
    assert match, f"{name}: the page did not finish drawing"
    probe = json.loads(match.group(1).replace("&quot;", '"'))
    shot = tmp / f"{name}.png"
    done = subprocess.run([*base, f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120)
    assert done.returncode == 0 and shot.stat().st_size > 5_000
    shutil.copy(shot, ARTIFACTS / shot.name)
    shutil.copy(page, ARTIFACTS / page.name)
    return probe


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("views")


@pytest.fixture(scope="module")
def ad(tiny):
    return al.AttentionData(tiny, text_batch=TEXTS, min_length=4, max_length=16, seed=0)


def test_the_steering_difference_sits_side_by_side_with_its_colours_explained(tiny, tmp):
    prompt = al.tokenize_prompt(tiny.tokenizer, "<!-> Answer in French: <-!> Paris is the capital.")
    span = prompt.guide_spans()[0]
    view = al.steering_diff(tiny, prompt, 1, al.guide_plan(tiny, prompt.guide_spans(), delta=2.0))
    assert view.data["steered_spans"] == [(span.start, span.end)]
    body = view.body
    assert "red: steering raised" in body and "blue: lowered" in body  # the colours, on the page
    assert f"tokens [{span.start}, {span.end})" in body and "\u27e6" in body  # the steered span, marked
    probe = _draw(view, "steering_diff", tmp)
    columns = probe["columns"]
    assert len(columns) == 3
    assert len({top for _, top, _, _ in columns}) == 1  # one row: the same top
    assert columns[0][0] < columns[1][0] < columns[2][0]  # left to right
    assert probe["height"] < 1400  # was three stacked grids, about 3,600 pixels
    assert len(probe["legends"]) == 3 and all(w > 100 and h > 0 for _, _, w, h in probe["legends"])
    assert probe["canvases"] == 3 * (tiny.cfg.n_heads + 1)  # circuitsvis drew every part


def test_influence_heat_maps_state_their_scale(tiny, tmp):
    report = al.influence_report(tiny, TAGGED, methods=("influence", "rollout"))
    view = al.viz.influence_view(report)
    for method in ("influence", "rollout"):
        top = float(report["spans"][0][method][-1].max())
        assert f"darkest token is this row&#x27;s maximum ({top:.3g})" in view.body  # the scaling, with its number
    assert view.body.count("Scaled per row") == 2
    probe = _draw(view, "influence", tmp)
    assert len(probe["legends"]) == 2 and all(w > 100 for _, _, w, _ in probe["legends"])


def test_chat_views_leave_the_template_system_prompt_out(tiny, tmp):
    pipe = al.pipeline("pay-attention", model=tiny)
    record = pipe(TAGGED, chat=True, max_new_tokens=1)[0]
    entry = record["influence"][0]
    hidden = entry["system_tokens"]
    assert hidden > 5 and "You are" in "".join(entry["tokens"][:hidden])  # SmolLM2's default system prompt
    assert "<|im_start|>" == entry["tokens"][hidden].strip()  # the user's turn begins right after it
    view = al.viz.influence_view(entry)
    assert view.data["hidden_tokens"] == hidden and view.data["tokens"] == entry["tokens"][hidden:]
    assert torch.allclose(torch.tensor(view.data["final"]["influence"]), entry["tensor"][-1, hidden:], atol=1e-4)
    assert "system prompt" in view.body and "You are" not in view.body.split("<script")[0]
    full = al.viz.influence_view(entry, system_prompt=True)
    assert full.data["hidden_tokens"] == 0 and len(full.data["tokens"]) == len(entry["tokens"])
    # the record's own view: its prompt text without the template's system prompt, unless asked
    assert record["prompt"].startswith(record["system_text"]) and "You are" in record["system_text"]
    page = record.view().body.split("<script")[0]
    assert "You are" not in page and "left out" in page and "Rewrite this" in page
    assert "You are" in record.view(system_prompt=True).body.split("<script")[0]
    # a chat with its own system message hides nothing
    own = pipe([{"role": "system", "content": "Be brief."}, {"role": "user", "content": TAGGED}], max_new_tokens=1)
    assert "system_tokens" not in own[0]["influence"][0]


def test_ranked_heads_show_words_as_words(ad, tmp):
    assert word_of([" The", " ch", "ases", " the"], 2) == "chases"
    assert word_of([" The", " ch", "ases", " the"], 3) == "the"
    assert word_of(["<|im_start|>", "The"], 1) == "The"
    rows = ad.get_ranked_multiples(1, 2, num_multiples=6)
    view = rows.view()
    text = re.sub(r"<[^>]+>", "", view.body.split("</table>")[0].split("<table")[1])
    import html

    text = html.unescape(text)
    # the rows read as the texts do: the tokens joined with their own spaces, none added between sub-words
    for row in rows:
        assert "".join(row.str_tokens[1:]) in text
    assert "token boundaries" in view.body
    probe = _draw(view, "multiples", tmp)
    assert len(probe["legends"]) == 1


def test_every_circuitsvis_view_has_a_legend(ad, tmp):
    patterns = ad.patterns_view(1, 2, max_texts=1)
    assert "attention weight" in patterns.body
    probe = _draw(patterns, "head_patterns", tmp)
    assert len(probe["legends"]) == 1 and probe["canvases"] >= 2
