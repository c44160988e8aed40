"""The steering contract: the three kinds a method's steering() returns, and where a steering acts."""

from __future__ import annotations

import threading

import pytest
import torch

import attnlens as al
from attnlens import steering
from attnlens.api import chain
from attnlens.core.errors import AttnlensError
from attnlens.runtime import fused
from attnlens.runtime.direct import direct
from attnlens.runtime.generate import generate_batch
from attnlens.steering.kinds import DecodingOverride, KeyBias, SpanReweight, Steering, checked
from attnlens.steering.edits import install
from conftest import make_tiny_bridge


class NotASteering(steering.SteeringMethod):
    """Returns something that is none of the kinds (it even has install(), as the old duck-typed contract took)."""

    name = "not_a_steering"
    spans = "guide"

    def steering(self, model, prompts, settings):
        class Lookalike:
            def install(self, model):
                raise AssertionError("never installed")

        return Lookalike()


def _prompt(model, text="<!-> Write about cats. <-!> Tell me about dogs."):
    return al.prepare(model.tokenizer, text)


def test_a_method_returning_no_kind_is_an_error_naming_it(tiny):
    steering.register(NotASteering())
    prompt = _prompt(tiny)
    with pytest.raises(AttnlensError, match="'not_a_steering' returned a Lookalike"):
        chain.plans_for(tiny, [prompt], steer={"not_a_steering": {}})
    with pytest.raises(AttnlensError, match="'not_a_steering' returned a Lookalike"):
        chain.steered_generation(tiny, "<!-> cats <-!> dogs", steer={"not_a_steering": {}}, max_new_tokens=1)
    # a plain dict (or anything else) is refused the same way; None means "nothing to do"
    with pytest.raises(AttnlensError, match="'m' returned a dict"):
        checked({"bias": 1}, "m")
    assert checked(None, "m") is None
    # the runtime's own entry points refuse a stranger too, naming its type
    with pytest.raises(AttnlensError, match="KeyBias.*SpanReweight.*DecodingOverride.*got object"):
        generate_batch(tiny, [[1, 5, 9]], [object()], max_new_tokens=1)


@pytest.mark.parametrize("name, settings, kind", [
    ("guide", {"delta_mid": 2.0}, KeyBias),
    ("pasta", {"head_config": {"0": [0, 1]}, "alpha": 0.1}, KeyBias),
    ("instaboost", {"alpha": 5.0}, KeyBias),
    ("spotlight", {"target": 0.5}, SpanReweight),
    ("spa", {"omega": 2.0}, DecodingOverride),
])
def test_each_built_in_method_returns_its_declared_kind(tiny, name, settings, kind):
    text = "<!-> Write about cats. <-!> Tell me about dogs."
    prompt = _prompt(tiny, text)
    if name == "pasta":
        prompt = chain.with_emphasis(tiny.tokenizer, prompt, text, ["cats"])
    made = steering.get(name).steering(tiny, [prompt], steering.get(name).settings(settings))
    assert isinstance(made, kind) and isinstance(made, Steering)
    others = {KeyBias, SpanReweight, DecodingOverride} - {kind}
    assert not any(isinstance(made, k) for k in others)
    # every kind follows a padded batch and splits into rows through the same operations
    moved = made.shifted([2])
    assert isinstance(moved, kind) and moved.rows in (None, 1)
    assert isinstance(moved.select_rows(0, 1), kind)


def test_the_kinds_are_the_types_the_runtimes_dispatch_on(tiny):
    from attnlens.runtime.continuous import joinable
    from attnlens.steering.edits import decoder_of

    prompt = _prompt(tiny)
    bias, = chain.plans_for(tiny, [prompt], steer={"guide": {"delta_mid": 2.0}})
    edit, = chain.plans_for(tiny, [prompt], steer={"spotlight": {"target": 0.5}})
    spa, = chain.plans_for(tiny, [prompt], steer={"spa": {"omega": 2.0}})
    assert joinable([bias]) and not joinable([edit]) and not joinable([spa])
    assert decoder_of([bias, edit]) is None and decoder_of([bias, spa]) is spa


# ----------------------------------------------------------------------------- one call's steering, one call's forward

TOKENS = torch.tensor([[1, 5, 9, 200, 17, 3000, 44, 8, 90, 12]])


@pytest.fixture(scope="module")
def model(tokenizer):
    return make_tiny_bridge(tokenizer, seed=5)


def _spy(monkeypatch):
    """What the fused attention found active, per thread: for each layer call, the number of key biases
    (``bias_hooks``) and of span edits (``pattern_edits``) it would run."""
    seen: dict[tuple[str, str], list[int]] = {}

    def wrap(name):
        real = getattr(fused, name)

        def spy(point):
            got = real(point)
            if got is not None:
                seen.setdefault((threading.current_thread().name, name), []).append(len(got))
            return got

        monkeypatch.setattr(fused, name, spy)

    wrap("bias_hooks")
    wrap("pattern_edits")
    return seen


def _direct_forward(model):
    with torch.no_grad(), direct(model) as hf:
        return hf(input_ids=TOKENS).logits


@pytest.mark.parametrize("kind", ["bias", "span"])
def test_a_steering_installed_in_one_threads_call_is_not_seen_by_another_threads_fused_forward(
        model, monkeypatch, kind):
    prompt_spans = [[(1, 6)]]
    if kind == "bias":
        made = al.BiasPlan.for_model(model).add(1, 6, 8.0)
    else:
        made = steering.RunEdit.for_prompts(
            model, "pattern", lambda p, ctx: p, prompt_spans, layers="all", name="lift",
            span_factor=lambda share, seen: torch.full_like(share, 3.0))
    alone = _direct_forward(model)
    seen = _spy(monkeypatch)
    found = "bias_hooks" if kind == "bias" else "pattern_edits"
    installed, go, done = threading.Event(), threading.Event(), threading.Event()
    result: dict[str, object] = {}

    def steered_call():
        try:
            with install(model, made):
                installed.set()
                assert go.wait(60)
                result["steered"] = _direct_forward(model)
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            result["error"] = exc
        finally:
            installed.set()
            done.set()

    thread = threading.Thread(target=steered_call, name="steering-thread")
    thread.start()
    try:
        assert installed.wait(60)
        assert "error" not in result, result.get("error")
        other = _direct_forward(model)  # the steering is installed, in the other thread's call only
    finally:
        go.set()
        thread.join(60)
    assert done.is_set() and "error" not in result, result.get("error")
    me = threading.current_thread().name
    # the fused attention of this thread's forward found none of the other call's steering
    assert seen.get((me, found)) and all(n == 0 for n in seen[(me, found)])
    assert torch.allclose(other, alone, atol=1e-5)  # (the path may differ: unsteered, not bit for bit)
    # the other call's own forward found it at every layer, and was steered
    assert seen[("steering-thread", found)] == [1] * model.cfg.n_layers
    assert (result["steered"] - alone).abs().max() > 1e-3


def test_installing_records_the_steering_for_this_call_only(model):
    from attnlens.steering import kinds

    plan = al.BiasPlan.for_model(model).add(1, 6, 8.0, layers=[0, 2])
    edit = steering.RunEdit.for_prompts(model, "pattern", lambda p, ctx: p, [[(1, 4)]], layers=[1], name="lift",
                                        span_factor=lambda share, seen: torch.full_like(share, 2.0))
    scores = [model.hook_dict[f"blocks.{l}.attn.hook_attn_scores"] for l in range(model.cfg.n_layers)]
    pattern = model.hook_dict["blocks.1.attn.hook_pattern"]
    assert kinds.active() == ()
    seen_elsewhere = []
    with install(model, plan), install(model, edit):
        assert [e.steering for e in kinds.active()] == [plan, edit]
        assert [len(kinds.active_at(p)) for p in scores] == [1, 0, 1]
        assert len(kinds.active_at(pattern)) == 1
        thread = threading.Thread(target=lambda: seen_elsewhere.append(kinds.active()))
        thread.start()
        thread.join(60)
    assert seen_elsewhere == [()]  # a thread started plainly has its own (empty) context
    assert kinds.active() == ()
    with pytest.raises(RuntimeError, match="boom"):
        with install(model, plan):
            raise RuntimeError("boom")
    assert kinds.active() == () and all(not kinds.active_at(p) for p in scores)


def test_a_runtime_is_chosen_and_opened_but_never_installs_a_steering():
    from attnlens.runtime import backends

    class Minimal:
        name = "minimal"

        def reason(self, model):
            return "never"

        def open(self, model):
            raise AssertionError("never opened")

    backends.register(Minimal())  # reason() and open() are the whole seam
    try:
        assert "minimal" in backends.names()
        assert not any(hasattr(backends.get(n), "steer") for n in ("bridge", "direct"))
    finally:
        backends.unregister("minimal")
