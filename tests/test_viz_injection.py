"""Views embed untrusted text (tokens, labels, titles, method names) inertly, also inside their inline scripts."""

from __future__ import annotations

import re

import pytest
import torch

import attnlens as al
from test_viz_browser import _browser, _chromium

PAYLOADS = [
    '</script><script>document.body.setAttribute("data-pwned", "1")</script>',
    '<img src=x onerror="document.body.setAttribute(\'data-pwned\', \'2\')">',
    "<!--<script>",
    "\u2028\u2029&amp;",
]


def _injected_view():
    seq = 6
    tokens = ["Hello", *PAYLOADS, "end"]
    curves = {"influence": torch.rand(3, seq), PAYLOADS[0]: torch.rand(3, seq)}
    return al.viz.influence_view(curves, tokens, title=PAYLOADS[1]), tokens


def test_script_data_is_escaped(tmp_path):
    view, _ = _injected_view()
    html = view.to_html()
    # each payload is in the page only in escaped form: no raw tag, no raw line separator
    for payload in PAYLOADS[:3]:
        assert payload not in html
    assert "\u2028" not in html and "\u2029" not in html
    assert "\\u003c/script\\u003e\\u003cscript\\u003edocument" in html


def test_steering_diff_escapes_tokens(tiny):
    view = al.steering_diff(tiny, "a </script><script>alert(1)</script> b", 0, al.guide(tiny, [(1, 3)], delta=1.0))
    assert "<script>alert(1)</script>" not in view.to_html()


def test_chromium_runs_nothing_from_an_injected_view(tmp_path):
    _chromium()
    view, tokens = _injected_view()
    page = view.save(tmp_path / "injected.html")
    result = _browser(page, tmp_path / "profile", "--dump-dom")
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    drawn = re.sub(r"<script.*?</script>", "", dom, flags=re.DOTALL)
    # no payload ran: it would have set the attribute on <body>
    assert re.search(r"<body[^>]*data-pwned", drawn) is None and 'data-pwned="' not in drawn
    # and the view still drew: the plot and the token map (the payload shown as text)
    assert "plotly" in drawn and "Hello" in drawn
