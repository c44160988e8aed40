"""One sweep worker for the distributed tests: ``python -m torch.distributed.run ... tests/sweep_worker.py``.

Runs the sweeps named on the command line (experiment, profile, describe, batch) on
the model directory given, each into its own folder of ``OUT``. With
``--kill-rank R --kill-after N``, worker ``R`` kills itself (SIGKILL) when it starts
its ``N+1``-th experiment batch: an interrupted sweep for the resume test.
Without torchrun it runs as one process (world size 1): the reference.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

PROFILE_EXAMPLES = [
    {"prompt": "Mary is a doctor and lives in Paris. Answer in JSON.", "emphasize": "Answer in JSON",
     "target": '{"occupation": "doctor"}'},
    {"prompt": "Tom is a baker from Lyon. Reply in French.", "emphasize": "Reply in French", "target": "Tom est"},
]
TEXTS = [
    "The quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat by the door.",
    "In the beginning the city was small, but traders came from every port and the markets grew quickly.",
    "Bees tell each other where flowers are by dancing inside the hive, turning and waggling their bodies.",
]
PROMPTS = [
    {"id": f"p{i}", "prompt": text}
    for i, text in enumerate([
        "<!-> Answer in French. <-!> What is the capital of Italy?",
        "Tell me about <!!-> bees <-!!> and flowers.",
        "<?-> Rewrite in French <-?> Paris is the most visited city.",
        "A plain prompt without tags.",
        "<!!!-> Be brief. <-!!!> Why is the sky blue?",
    ])
]


class FakeClient:
    """An OpenAI-shaped client whose answer is a digest of the prompt (deterministic, offline)."""

    def __init__(self) -> None:
        self.chat = SimpleNamespace(completions=SimpleNamespace(create=self._create))

    def _create(self, *, model, messages, **_):
        digest = hashlib.sha256(messages[-1]["content"].encode()).hexdigest()[:12]
        message = SimpleNamespace(content=f"head digest {digest}")
        return SimpleNamespace(choices=[SimpleNamespace(message=message, finish_reason="stop")])


TASKS = ("experiment", "profile", "describe", "batch")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("out")
    parser.add_argument("tasks", nargs="+", choices=TASKS)
    parser.add_argument("--kill-rank", type=int, default=None)
    parser.add_argument("--kill-after", type=int, default=0)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)  # the tests compare bits: every process computes with one thread
    run(args.model, args.out, args.tasks, kill_rank=args.kill_rank, kill_after=args.kill_after)
    return 0


def run(model_dir: str, out_dir: str, tasks=TASKS, *, kill_rank: int | None = None, kill_after: int = 0) -> None:
    """The sweeps ``tasks`` on the model in ``model_dir``, each into its folder of ``out_dir``."""
    args = SimpleNamespace(model=model_dir, out=out_dir, tasks=tasks, kill_rank=kill_rank, kill_after=kill_after)
    from attnlens.runtime.models import load_model
    from attnlens.runtime.distributed import current_workers, sweep_device

    workers = current_workers()
    model = load_model(args.model, device=sweep_device())
    out = Path(args.out)
    if "experiment" in args.tasks:
        from attnlens.experiments import JSONConfig, run_experiment
        from attnlens.experiments import runner

        if args.kill_rank == workers.rank:
            original, calls = runner._run_batch, []

            def dying(*a, **k):
                if len(calls) == args.kill_after:
                    os.kill(os.getpid(), signal.SIGKILL)
                calls.append(1)
                return original(*a, **k)

            runner._run_batch = dying
        config = JSONConfig(out=out / "experiment", deltas=[0, 2], conditions=["guide", "emphatic"], limit=3,
                            max_new_tokens=4, batch_size=2, plots=False, bootstrap=50, chat=False)
        run_experiment("json", config, model=model)
    if "profile" in args.tasks:
        from attnlens.api.profile import profile_heads

        result = profile_heads(model, PROFILE_EXAMPLES, sweep_dir=out / "profile", batch_size=3, progress=False)
        if workers.is_main:
            (out / "profile.json").write_text(json.dumps({
                "per_example": result.per_example.tolist(), "baseline": result.baseline_per_example.tolist()}))
    if "describe" in args.tasks:
        from attnlens.analysis.attention_data import AttentionData

        data = AttentionData(model, "fake-model", text_batch=TEXTS, min_length=4, max_length=20, client=FakeClient(),
                             seed=3)
        described = data.describe_heads(num_samples=3, sweep_dir=out / "describe", progress=False)
        if workers.is_main:
            (out / "describe.json").write_text(json.dumps(described.to_records()))
    if "batch" in args.tasks:
        from attnlens.api.pipeline import PayAttentionPipeline, run_prompts

        pipe = PayAttentionPipeline(model, batch_size=2)
        run_prompts(pipe, PROMPTS, out / "batch" / "results.jsonl", max_new_tokens=4)


if __name__ == "__main__":
    sys.exit(main())
