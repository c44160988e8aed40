"""A tiny experiment in its own process, for tests that kill it (see test_store.py).

    python tests/experiment_child.py OUT
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from conftest import make_tiny_bridge  # noqa: E402

from attnlens.experiments import JSONConfig, run_experiment  # noqa: E402
from attnlens.runtime.models import load_embedded_tokenizer  # noqa: E402

CONFIG = dict(deltas=[0, 2], conditions=["guide"], limit=6, max_new_tokens=3, batch_size=1,
              influence=False, plots=False)

if __name__ == "__main__":
    torch.set_num_threads(1)
    model = make_tiny_bridge(load_embedded_tokenizer())
    print("ready", flush=True)
    result = run_experiment("json", JSONConfig(out=sys.argv[1], **CONFIG), model=model)
    print("done", result.generated, result.skipped, flush=True)
