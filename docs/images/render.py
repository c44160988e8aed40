"""Redraw the README's picture: the steering difference view, rendered offline from the embedded model.

    python docs/images/render.py            # writes docs/images/steering_diff.png

The view is the one the docs' steering page draws (``docs/hooks/views.py``): layer 5 of the
embedded model on "Rewrite in French: Paris is the most visited city in the world.",
unsteered, with GUIDE (delta 2) on the tokens of "Rewrite in French:", and the difference,
heads 0-2, side by side, each with its colour scale, the steered tokens marked.
It is saved as standalone HTML and screenshotted by headless Chromium (``make browser``
installs it).
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "steering_diff.png"


def main() -> int:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("render.py: chromium is not installed (make browser installs it)", file=sys.stderr)
        return 2
    spec = importlib.util.spec_from_file_location("docs_views", HERE.parent / "hooks" / "views.py")
    views = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(views)
    view = views.render_views()["steering_diff"]
    with tempfile.TemporaryDirectory() as tmp:
        page = view.save(Path(tmp) / "steering_diff.html")
        subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
             f"--user-data-dir={Path(tmp) / 'profile'}", "--virtual-time-budget=10000",
             f"--screenshot={OUT}", "--window-size=1500,1000", page.as_uri()],
            check=True, capture_output=True, timeout=120,
        )
    print(OUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
