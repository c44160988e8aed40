"""One model, many threads and tasks: every call gives what it gives alone, and nothing is left behind."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import attnlens as al
from attnlens.analysis.capture import layer_pattern
from attnlens.attribution.influence import trace_influence
from attnlens.runtime.direct import IMPLEMENTATION, direct
from attnlens.runtime.fused import fused_attention
from attnlens.runtime.generate import generate_batch
from attnlens.steering.guide import guide_plan
from conftest import make_tiny_bridge

TOKENS = torch.tensor([[1, 5, 9, 200, 17, 3000, 44, 8, 90, 12]])
ROWS = [[1, 5, 9, 200, 17, 3000, 44], [1, 300, 7, 9]]
ROUNDS = 2


@pytest.fixture(scope="module")
def model(tokenizer):
    return make_tiny_bridge(tokenizer, seed=3)


def hooks_left(model) -> int:
    """Forward hooks of any kind on any module of the model (the bridge's and transformers' own aside)."""
    from attnlens.core._internals import capture_hook_ids, has_hooks

    own = set().union(*(capture_hook_ids(block) for block in model.blocks))
    return sum(has_hooks(m, own) for m in model.modules()) + sum(len(hp.fwd_hooks) for hp in model.hook_dict.values())


def registered() -> bool:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    return IMPLEMENTATION in AttentionInterface._global_mapping or IMPLEMENTATION in AttentionMaskInterface._global_mapping


def implementations(model) -> set:
    return {getattr(m.config, "_attn_implementation", None) for m in model.original_model.modules()
            if hasattr(m, "config")}


def forward(model, tokens=TOKENS):
    with torch.no_grad():
        return model(tokens)


# ----------------------------------------------------------------------------- the leak, as reported


def test_a_guide_block_does_not_steer_another_threads_forward(model):
    alone = forward(model)
    with al.guide(model, [(1, 7)], delta=10.0):
        steered = forward(model)
    assert (steered - alone).abs().max() > 1e-2  # the block steers its own forwards

    inside, release = threading.Event(), threading.Event()

    def steer():
        with al.guide(model, [(1, 7)], delta=10.0):
            inside.set()
            release.wait(30)

    thread = threading.Thread(target=steer)
    thread.start()
    try:
        assert inside.wait(30)
        other = forward(model)
    finally:
        release.set()
        thread.join()
    assert torch.equal(other, alone)
    assert hooks_left(model) == 0


def test_context_copies_carry_the_block_and_new_threads_do_not(model):
    alone = forward(model)
    with al.guide(model, [(1, 7)], delta=10.0):
        steered = forward(model)
        copied = asyncio.run(asyncio.to_thread(forward, model))  # copies this context: steered
        fresh: list = []
        thread = threading.Thread(target=lambda: fresh.append(forward(model)))  # a new, empty context
        thread.start()
        thread.join()
    assert torch.equal(copied, steered)
    assert torch.equal(fresh[0], alone)


# ----------------------------------------------------------------------------- the stress test


def jobs(model):
    """Named calls of every kind attnlens runs on a model; each returns something comparable."""
    plan = guide_plan(model, [(1, 4)], delta=4.0)
    pasta_spans = [(2, 5)]

    def steered_generation():
        out = generate_batch(model, ROWS, [plan], max_new_tokens=6, stop_at_eos=False)
        return out.backend, list(out)

    def plain_generation():
        out = generate_batch(model, ROWS, max_new_tokens=6, stop_at_eos=False)
        return out.backend, list(out)

    def bridge_generation():
        out = generate_batch(model, ROWS[:1], [plan], max_new_tokens=4, stop_at_eos=False, backend="bridge")
        return out.backend, list(out)

    def guide_block_forward():
        with al.guide(model, [(2, 6)], delta=3.0):
            return forward(model)

    def pasta_block_forward():
        with al.pasta(model, pasta_spans, {0: [1], 2: [0, 3]}, alpha=0.05):
            return forward(model)

    def plain_forward():
        return forward(model)

    def influence():
        return trace_influence(model, TOKENS, [(2, 5)], methods=("influence", "rollout")).results

    def reference_influence():  # the hook-based path, whose hooks live on the model during the pass
        with fused_attention(False):
            return trace_influence(model, TOKENS, [(2, 5)], methods=("influence",), use_values=True).results

    def steered_influence():
        with al.guide(model, [(1, 3)], delta=2.0):
            return trace_influence(model, TOKENS, [(2, 5)]).results

    def capture():
        return layer_pattern(model, TOKENS[0], 1)

    def direct_block():
        with torch.no_grad(), al.guide(model, [(1, 5)], delta=2.0), direct(model) as hf:
            return hf(TOKENS).logits

    return {f.__name__: f for f in (steered_generation, plain_generation, bridge_generation, guide_block_forward,
                                     pasta_block_forward, plain_forward, influence, reference_influence,
                                     steered_influence, capture, direct_block)}


def same(a, b, path=""):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, torch.Tensor):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5), f"{path}: differs by {(a - b).abs().max()}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def check_clean(model, before):
    assert hooks_left(model) == 0
    assert implementations(model) == before
    assert not registered()
    assert generate_batch(model, ROWS[:1], max_new_tokens=1).backend == "direct"  # alone: the direct run again


def test_a_capture_pass_does_not_stop_another_threads_forward(model):
    """A user's plain forward is running; a capture of layer 0 (which stops its own pass early) starts and
    stays mid-pass while the user's forward goes on through the later layers: that forward still returns
    its logits, not the residual stream where the capture stopped."""
    from attnlens.analysis.capture import layer_pattern as capture

    expected = forward(model)
    paused, finished = threading.Event(), threading.Event()
    results: dict = {}
    capture_thread: list = []

    def user_hook(pattern, hook=None):  # on every forward of the model, the capture's included
        if threading.current_thread() is user and not capture_thread:
            capture_thread.append(threading.Thread(target=lambda: results.__setitem__("pattern", capture(model, TOKENS[0], 0))))
            capture_thread[0].start()
            assert paused.wait(30), "the capture did not start while the user's forward ran"
        elif capture_thread and threading.current_thread() is capture_thread[0]:
            paused.set()
            finished.wait(30)  # mid-pass until the user's forward is done

    def users_forward():
        try:
            results["logits"] = forward(model)
        finally:
            finished.set()

    model.blocks[0].attn.hook_pattern.add_hook(user_hook)
    try:
        user = threading.Thread(target=users_forward)
        user.start()
        user.join(60)
        capture_thread[0].join(60)
    finally:
        model.blocks[0].attn.hook_pattern.remove_hooks()
    assert not user.is_alive() and not capture_thread[0].is_alive()
    assert results["pattern"].shape[0] == model.cfg.n_heads
    assert results["logits"].shape == expected.shape and torch.allclose(results["logits"], expected, atol=1e-5)
    assert hooks_left(model) == 0


def test_racing_threads_give_each_calls_own_result(model):
    calls = jobs(model)
    before = implementations(model)
    alone = {name: fn() for name, fn in calls.items()}
    order = [name for _ in range(ROUNDS) for name in calls]
    with ThreadPoolExecutor(max_workers=6) as pool:
        raced = list(pool.map(lambda name: (name, calls[name]()), order))
    for name, result in raced:
        same(alone[name], result, name)
    check_clean(model, before)


def test_racing_asyncio_tasks_give_each_calls_own_result(model):
    calls = jobs(model)
    before = implementations(model)
    alone = {name: fn() for name, fn in calls.items()}
    order = [name for _ in range(ROUNDS) for name in reversed(list(calls))]

    async def race():
        return await asyncio.gather(*(asyncio.to_thread(calls[name]) for name in order))

    for name, result in zip(order, asyncio.run(race())):
        same(alone[name], result, name)
    check_clean(model, before)


def test_two_separately_loaded_models_at_once(tokenizer):
    first, second = make_tiny_bridge(tokenizer, seed=5), make_tiny_bridge(tokenizer, seed=6)
    plans = {id(m): guide_plan(m, [(1, 4)], delta=3.0) for m in (first, second)}

    def run(m):
        out = generate_batch(m, ROWS, [plans[id(m)]], max_new_tokens=5, stop_at_eos=False)
        return out.backend, list(out)

    alone = {id(m): run(m) for m in (first, second)}
    assert alone[id(first)] != alone[id(second)]
    order = [first, second] * (2 * ROUNDS)
    with ThreadPoolExecutor(max_workers=4) as pool:
        raced = list(pool.map(run, order))
    for m, result in zip(order, raced):
        assert result == alone[id(m)]
        assert result[0] == "direct"
    assert not registered()
    for m in (first, second):
        assert hooks_left(m) == 0


def test_direct_blocks_of_two_models_overlap(tokenizer):
    """Each model's block registers and restores nothing the other's still uses."""
    first, second = make_tiny_bridge(tokenizer, seed=5), make_tiny_bridge(tokenizer, seed=6)
    with torch.no_grad():
        expected = second(TOKENS)
        with direct(first):
            with direct(second) as hf:
                pass
            with direct(second) as hf:  # the first model's block is still open
                got = hf(TOKENS).logits
    assert torch.allclose(got, expected, atol=1e-5)
    assert not registered()


# ----------------------------------------------------------------------------- seeds


def test_a_seed_gives_the_same_samples_whatever_runs_beside_it(model):
    def seeded():
        return list(generate_batch(model, ROWS, max_new_tokens=8, do_sample=True, seed=1234, stop_at_eos=False))

    def unseeded():
        return list(generate_batch(model, ROWS[:1], max_new_tokens=8, do_sample=True, stop_at_eos=False))

    state = torch.get_rng_state()
    alone = seeded()
    assert torch.equal(torch.get_rng_state(), state)  # the process's random state is left as it was
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(seeded if i % 2 else unseeded) for i in range(4 * ROUNDS)]
        results = [(i % 2, f.result()) for i, f in enumerate(futures)]
    assert all(result == alone for is_seeded, result in results if is_seeded)
    assert len({str(result) for is_seeded, result in results if not is_seeded}) > 1  # unseeded still varies
