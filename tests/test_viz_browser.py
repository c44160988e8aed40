"""circuitsvis views: what they contain, that saved files are standalone, and that Chromium draws them offline.

The browser tests need Debian's ``chromium`` (``make test`` installs it when it can)
and skip with the reason otherwise. Screenshots go to ``test-artifacts/``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import attnlens as al
from attnlens.core.errors import AttnlensError
from attnlens.analysis.capture import PatternSamples
from attnlens.steering import BiasPlan, guide

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
TEXTS = [
    "The cat sat on the mat because it was tired after chasing the mouse all day.",
    "Paris is the capital of France and Rome is the capital of Italy.",
]
PROMPT = "Answer in French: what is the capital of Italy? Rome is the capital."
SPAN = (1, 4)


@pytest.fixture(scope="module")
def ad(tiny):
    return al.AttentionData(tiny, text_batch=TEXTS, min_length=4, max_length=16, seed=0)


@pytest.fixture(scope="module")
def diff_view(tiny):
    return al.steering_diff(tiny, PROMPT, 1, guide(tiny, [SPAN], delta=2.0))


def test_steering_diff_shows_guide_raising_span_attention(tiny, diff_view):
    before, after = diff_view.data["unsteered"], diff_view.data["steered"]
    n = len(diff_view.data["tokens"])
    assert before.shape == after.shape == (tiny.cfg.n_heads, n, n)
    start, end = SPAN
    # every head, every query that sees the span and other keys: the span's share grows
    assert bool((after[:, end:, start:end].sum(-1) > before[:, end:, start:end].sum(-1)).all())
    # the same steering given as a plan (and as a function returning a context) gives the same view data
    plan = al.guide_plan(tiny, [SPAN], delta=2.0)
    again = al.steering_diff(tiny, PROMPT, -2, plan)
    assert torch.allclose(again.data["steered"], after, atol=1e-6) and again.data["layer"] == 1
    third = al.steering_diff(tiny, PROMPT, 1, lambda: al.apply_bias(tiny, plan), heads=[2])
    assert torch.allclose(third.data["steered"], after[2:3], atol=1e-6)
    assert all(not hp.fwd_hooks for hp in tiny.hook_dict.values())


def test_steering_diff_bad_input(tiny):
    with pytest.raises(AttnlensError, match="plan_or_context must be a BiasPlan"):
        al.steering_diff(tiny, PROMPT, 0, 3.0)
    with pytest.raises(AttnlensError, match="layer 7 out of range"):
        al.steering_diff(tiny, PROMPT, 7, BiasPlan.for_model(tiny))
    with pytest.raises(AttnlensError, match="non-empty sequence"):
        al.steering_diff(tiny, [], 0, BiasPlan.for_model(tiny))


def test_saved_views_are_standalone(ad, diff_view, tmp_path):
    path = diff_view.save(tmp_path / "sub" / "diff.html")
    html = path.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>")
    # nothing is loaded from elsewhere: no script src, no import from a CDN
    assert "<script src" not in html and "esm.js" not in html
    assert re.search(r"""import\s*\{[^}]*\}\s*from\s*["']https?:""", html) is None
    assert html.count("var CircuitsVis=") == 1  # the bundle is inlined once for the three parts
    assert html.count("CircuitsVis.render(") == 3
    assert diff_view._repr_html_() in html
    view = ad.patterns_view(1, 2, max_texts=2)
    assert set(view.data["patterns"]) <= {0, 1} and len(view.data["patterns"]) >= 1
    for index, pattern in view.data["patterns"].items():
        n = len(ad.str_tokens(index))
        assert pattern.shape == (n, n)
        assert bool((pattern[1:, 0] == 0).all())  # the first token is hidden, rows renormalised
        assert torch.allclose(pattern[1:].sum(-1), torch.ones(n - 1), atol=1e-5)


def test_views_take_data_and_never_run_the_model(ad, tiny, monkeypatch):
    samples = ad.pattern_samples(1, 2, texts=[1], suppress_first_token=False)
    assert (samples.layer, samples.head, samples.texts, samples.first_token_hidden) == (1, 2, (1,), False)
    n = len(ad.str_tokens(1))
    assert samples.tokens[0] == tuple(ad.str_tokens(1)) and samples.patterns[0].shape == (n, n)
    assert torch.equal(samples.patterns[0], ad.head_data(1, 2).patterns[ad.row_of(1), :n, :n])
    # rendering is data in, HTML out: with every forward made to fail, the view still renders
    def no_forward(*args, **kwargs):
        raise AssertionError("a view ran the model")

    monkeypatch.setattr(type(tiny), "forward", no_forward)
    monkeypatch.setattr(type(tiny), "run_with_hooks", no_forward)
    view = al.viz.head_patterns(samples)
    assert torch.equal(view.data["patterns"][1], samples.patterns[0]) and "text 1: Paris" in view.to_html()
    made_up = PatternSamples(0, 3, (7,), (("a", "<b>"),), (torch.tensor([[1.0, 0.0], [0.25, 0.75]]),), ("a <b>",))
    html = al.viz.head_patterns(made_up).to_html()
    assert "L0H3" in html and "text 7: a &lt;b&gt;" in html and "<b>" not in html.split("<h3>")[1].split("</h3>")[0]
    with pytest.raises(AttnlensError, match="pattern_samples"):
        al.viz.head_patterns(ad)
    with pytest.raises(AttnlensError, match="texts must be a list"):
        ad.pattern_samples(1, 2, texts="0")
    with pytest.raises(AttnlensError, match="max_texts"):
        ad.pattern_samples(1, 2, max_texts=0)


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("chromium is not installed (`make test` runs `apt-get install -y chromium` when it can)")
    return path


def _browser(path: Path, profile: Path, *args: str) -> subprocess.CompletedProcess:
    command = [
        _chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
        "--virtual-time-budget=10000", *args, path.resolve().as_uri(),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def _drawn(dom: str) -> str:
    """The DOM without scripts: what the page drew."""
    return re.sub(r"<script.*?</script>", "", dom, flags=re.DOTALL)


def test_chromium_draws_the_steering_diff(diff_view, tiny, tmp_path):
    _chromium()
    ARTIFACTS.mkdir(exist_ok=True)
    page = diff_view.save(ARTIFACTS / "steering_diff.html")
    result = _browser(page, tmp_path / "profile", "--dump-dom")
    assert result.returncode == 0, result.stderr[-2000:]
    drawn = _drawn(result.stdout)
    heads = tiny.cfg.n_heads
    # three parts, each a head selector of one thumbnail per head plus the zoomed pattern
    assert drawn.count("Head Selector") == 3
    assert drawn.count("<canvas") == 3 * (heads + 1)
    assert all(f"L1H{h}" in drawn for h in range(heads))
    shot = ARTIFACTS / "steering_diff.png"
    shot.unlink(missing_ok=True)
    result = _browser(page, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1200,1500")
    assert result.returncode == 0 and shot.is_file() and shot.stat().st_size > 10_000


def test_chromium_draws_head_patterns(ad, tmp_path):
    _chromium()
    ARTIFACTS.mkdir(exist_ok=True)
    view = ad.patterns_view(1, 2, texts=[0, 1])
    page = view.save(ARTIFACTS / "head_patterns.html")
    result = _browser(page, tmp_path / "profile", "--dump-dom")
    assert result.returncode == 0, result.stderr[-2000:]
    drawn = _drawn(result.stdout)
    assert drawn.count("Head Selector") == 2 and drawn.count("<canvas") == 4
    assert "text 0: The cat sat" in drawn and "text 1: Paris" in drawn
    shot = ARTIFACTS / "head_patterns.png"
    shot.unlink(missing_ok=True)
    _browser(page, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1000,1200")
    assert shot.is_file() and shot.stat().st_size > 10_000


def test_chromium_draws_the_multiples_table(ad, tmp_path):
    _chromium()
    ARTIFACTS.mkdir(exist_ok=True)
    rows = ad.get_ranked_multiples(layer=1, head=2, num_multiples=4)
    page = al.viz.multiples_table(rows, title="Layer 1 Head 2").save(ARTIFACTS / "multiples_table.html")
    result = _browser(page, tmp_path / "profile", "--dump-dom")
    drawn = _drawn(result.stdout)
    assert drawn.count("<tr>") == 2 + len(rows)
    assert drawn.count("outline: 2px solid") + drawn.count("outline:2px solid") == len(rows)
