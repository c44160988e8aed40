"""Hostile and careless input, round three: an interrupt never leaves a model locked, the window is checked
before the expensive work, the registries' methods are checked at the boundary, and attribution refuses
empty, invalid or meaningless input with an AttnlensError naming it."""

from __future__ import annotations

import importlib
import threading

import pytest
import torch

import attnlens as al
from attnlens import attribution, cli, steering
from attnlens.api import chain
from attnlens.attribution.faithfulness import bootstrap_interval, compare_faithfulness, faithfulness
from attnlens.attribution.registry import AttributionMethod, RecursionMethod
from attnlens.core.concurrency import _state, exclusive
from attnlens.core.errors import AttnlensError, ContextWindowError, ExperimentError
from attnlens.runtime import fused
from attnlens.runtime.direct import direct
from attnlens.steering.bias import BiasPlan
from attnlens.steering.edits import RunEdit
from attnlens.steering.guide_method import GuideMethod

influence_module = importlib.import_module("attnlens.attribution.influence")

TEXT = "The cat sat on the mat and slept all day"
TAGGED = "The <!!->capital<-!!> of France is"


@pytest.fixture
def ids(tokenizer):
    return torch.tensor([tokenizer(TEXT)["input_ids"]])


@pytest.fixture
def registries():
    """The steering and attribution registries put back as they were after the test."""
    from attnlens.attribution.registry import _REGISTRY as attribution_table
    from attnlens.steering.registry import _REGISTRY as steering_table

    saved = steering_table.snapshot(), attribution_table.snapshot()
    yield
    steering_table.restore(saved[0])
    attribution_table.restore(saved[1])


def _forwards(model):
    """A list that gets one entry per forward of ``model`` (remove the handle afterwards)."""
    calls: list[int] = []
    handle = model.register_forward_pre_hook(lambda module, args: calls.append(1))
    return calls, handle


def _lock_is_free_elsewhere(model) -> bool:
    """Whether another thread can take the model's lock now (without waiting)."""
    got = []

    def probe():
        lock = _state(model).lock
        if lock.acquire(blocking=False):
            lock.release()
            got.append(True)
        else:
            got.append(False)

    thread = threading.Thread(target=probe)
    thread.start()
    thread.join()
    return got == [True]


# ----------------------------------------------------------------------------- hangs


@pytest.mark.parametrize("method", ["rollout", "influence"])
def test_an_interrupt_inside_a_measurement_leaves_the_model_free(tiny, ids, method, monkeypatch):
    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(influence_module.Recursion, "attn_out", interrupted)
    with fused.fused_attention(False), pytest.raises(KeyboardInterrupt):
        al.influence(tiny, ids, (1, 3), method=method)
    monkeypatch.undo()
    assert _lock_is_free_elsewhere(tiny)  # the lock is not held by the interrupted thread
    assert "forward" not in vars(tiny)  # the guard is gone with the run
    assert not any(point._forward_hooks for point in tiny.hook_dict.values())  # and the measurement's hooks
    done = []
    worker = threading.Thread(target=lambda: done.append(tiny(ids).shape), daemon=True)
    worker.start()
    worker.join(120)  # a forward blocked on a leaked lock would never finish
    assert done, "a forward in another thread is still waiting for the interrupted run's lock"
    assert al.influence(tiny, ids, (1, 3), method=method).shape[-1] == ids.shape[1]  # and measuring works again


def test_a_base_exception_inside_a_guarded_forward_releases_the_lock(tiny, ids):
    def leave(module, args):
        raise SystemExit(3)

    handle = tiny.blocks[0].register_forward_pre_hook(leave)  # inside the model's forward, past the guard
    try:
        with exclusive(tiny), pytest.raises(SystemExit):
            tiny(ids)  # torch runs always-call forward hooks only for an Exception: the guard's release must not
            # depend on one
    finally:
        handle.remove()
    assert _lock_is_free_elsewhere(tiny)
    assert "forward" not in vars(tiny)


def test_a_prompt_past_the_window_fails_before_any_forward(tiny):
    long_text = "word " * (tiny.cfg.n_ctx + 50)
    calls, handle = _forwards(tiny)
    try:
        with pytest.raises(ContextWindowError, match="context window"):
            al.attribute(tiny, long_text, method="attention")
        with pytest.raises(ContextWindowError, match="context window"):
            faithfulness(tiny, long_text, method="attention", seeds=1, points=2)
    finally:
        handle.remove()
    assert calls == []  # the next token was not computed over the whole prompt first


def test_the_faithfulness_experiment_checks_every_prompt_against_the_window_first(tiny, tmp_path):
    from attnlens.experiments import run_experiment
    from attnlens.experiments.faithfulness import FaithfulnessConfig

    data = tmp_path / "prompts.jsonl"
    data.write_text('{"id": "short", "text": "The cat sat on the"}\n'
                    + '{"id": "long", "text": "' + "word " * (tiny.cfg.n_ctx + 50) + '"}\n', encoding="utf-8")
    calls, handle = _forwards(tiny)
    try:
        with pytest.raises(ExperimentError, match="prompt long has .* context window"):
            run_experiment("faithfulness", FaithfulnessConfig(out=str(tmp_path / "out"), dataset=str(data),
                                                              methods=["attention"], seeds=1, points=2),
                           model=tiny)
    finally:
        handle.remove()
    assert calls == []  # neither the short prompt nor the long one ran


# ----------------------------------------------------------------------------- registries


def test_a_guide_registered_in_place_of_the_built_in_steers_the_tags(tiny, registries):
    seen = []

    class MyGuide(GuideMethod):
        def steering(self, model, prompts, settings):
            seen.append(len(prompts))
            return super().steering(model, prompts, settings)

    steering.register(MyGuide(), replace=True)
    result = al.steered_generation(tiny, TAGGED, max_new_tokens=2, raw=True)
    assert seen == [1] and result["methods"] == ["guide"]
    chain.plans_for(tiny, [al.prepare(tiny.tokenizer, TAGGED)])
    assert seen == [1, 1]


def test_a_guide_that_is_not_on_by_default_is_named_when_tags_ask_for_it(tiny, registries):
    class Quiet(steering.SteeringMethod):
        name = "guide"
        spans = "guide"

        def steering(self, model, prompts, settings):
            return None

    steering.register(Quiet(), replace=True)
    with pytest.raises(AttnlensError, match="registered as 'guide' .*Quiet.* not on by default"):
        al.steered_generation(tiny, TAGGED, max_new_tokens=2, raw=True)


def test_tagged_prompts_after_unregistering_guide_are_an_error_and_untagged_ones_run(tiny, registries):
    steering.unregister("guide")
    with pytest.raises(AttnlensError, match="GUIDE tags .* no steering method is registered as 'guide'"):
        al.steered_generation(tiny, TAGGED, max_new_tokens=2, raw=True)
    with pytest.raises(AttnlensError, match="registered as 'guide'"):
        chain.plans_for(tiny, [al.prepare(tiny.tokenizer, TAGGED)])
    assert chain.plans_for(tiny, [al.prepare(tiny.tokenizer, "no tags here")]) == []
    # steering chosen explicitly leaves the tags alone, as documented
    assert chain.plans_for(tiny, [al.prepare(tiny.tokenizer, TAGGED)], steer={}) == []


def test_a_bias_term_for_a_row_past_the_batch_is_refused(tiny):
    plan = BiasPlan.for_model(tiny).add(0, 2, 5.0, row=7)
    with pytest.raises(AttnlensError, match="row 7; the batch has 1 row"):
        chain.generate(tiny, [list(range(5, 15))], [plan], max_new_tokens=2, progress=False)
    sized = BiasPlan(tiny.cfg.n_layers, tiny.cfg.n_heads, n_rows=1)
    with pytest.raises(AttnlensError, match="row 7 is past the plan's batch of 1 row"):
        sized.add(0, 2, 5.0, row=7)


def _nan(tensor, ctx):
    return tensor * float("nan")


@pytest.mark.parametrize("fn, words", [
    (_nan, "returned NaN where the pattern it was given had numbers"),
    (lambda t, ctx: t.long(), "must return floating-point numbers"),
    (lambda t, ctx: t[..., :-1], "must return a tensor shaped"),
    (lambda t, ctx: t.tolist(), "got list"),
])
def test_a_pattern_edit_is_checked_at_the_boundary(tiny, fn, words):
    prompt = al.prepare(tiny.tokenizer, TEXT)
    edit = RunEdit.for_prompts(tiny, "pattern", fn, [[(1, 3)]], name="mine")
    with fused.fused_attention(False), pytest.raises(AttnlensError, match=f"mine edit of pattern.*{words}"):
        chain.generate(tiny, [prompt], [edit], max_new_tokens=2, progress=False)


def test_a_pattern_edit_may_return_another_float_dtype(tiny, ids):
    edit = RunEdit.for_prompts(tiny, "pattern", lambda t, ctx: t.double(), [[(1, 3)]], name="wide")
    with fused.fused_attention(False), steering.install(tiny, edit), torch.no_grad():
        got = tiny(ids)
    assert torch.allclose(got, tiny(ids), atol=1e-5)


def _identity(t, ctx):
    return t


@pytest.mark.parametrize("factor, words", [
    (lambda share, seen: share * float("nan"), "not a finite number"),
    (lambda share, seen: share[..., :2], "does not broadcast"),
    (lambda share, seen: "2", "must return numbers"),
    (lambda share, seen: share > 0, "real numbers"),
])
def test_a_span_factor_is_checked_on_the_fused_path(tiny, ids, factor, words):
    edit = RunEdit.for_prompts(tiny, "pattern", _identity, [[(1, 3)]], name="mine", span_factor=factor)
    with torch.no_grad(), steering.install(tiny, edit), direct(tiny) as hf:
        with pytest.raises(AttnlensError, match=f"mine edit's span_factor at layer 0 .*{words}"):
            hf(ids)


class _NanMix(RecursionMethod):
    name = "nan_mix"
    fused_conventions = ("stated",)

    def mix(self, prev, att, x_share):
        return prev + float("nan") * att


class _IntMix(RecursionMethod):
    name = "int_mix"

    def mix(self, prev, att, x_share):
        return prev.long()


@pytest.mark.parametrize("enabled", [True, False], ids=["fused", "hooks"])
def test_a_recursion_mix_returning_nan_is_an_error_on_both_paths(tiny, ids, registries, enabled):
    attribution.register(_NanMix())
    with fused.fused_attention(enabled), pytest.raises(AttnlensError, match="'nan_mix': mix\\(\\) returned NaN"):
        al.influence(tiny, ids, (1, 3), method="nan_mix")


def test_a_recursion_mix_of_the_wrong_dtype_is_named(tiny, ids, registries):
    attribution.register(_IntMix())
    with pytest.raises(AttnlensError, match="'int_mix': mix\\(\\) must return a float tensor"):
        al.influence(tiny, ids, (1, 3), method="int_mix")


@pytest.mark.parametrize("scores, words", [
    (lambda n: ["a"] * n, "must be numbers"),
    (lambda n: torch.zeros(n, dtype=torch.complex64), "real numbers"),
    (lambda n: torch.zeros(n + 2), "has .* values for"),
    (lambda n: [float("nan")] * n, "not a finite number"),
])
def test_token_scores_are_checked_at_the_boundary(tiny, registries, scores, words):
    class Bad(AttributionMethod):
        name = "bad_scores"

        def token_scores(self, model, target):
            return scores(target.n_prompt)

    attribution.register(Bad())
    with pytest.raises(AttnlensError, match=f"'bad_scores'.*token_scores.*{words}"):
        al.attribute(tiny, TEXT, method="bad_scores", target=" day")


def test_a_run_of_the_wrong_kind_is_named(tiny, ids, registries):
    class Words(AttributionMethod):
        name = "words"

        def run(self, model, row, spans, **kwargs):
            return [["x"]]

    attribution.register(Words())
    with pytest.raises(AttnlensError, match="'words': run\\(\\) must return a tensor of numbers"):
        al.influence(tiny, ids, (1, 3), method="words")


# ----------------------------------------------------------------------------- searches and attribution


def test_experiment_faithfulness_with_no_methods_is_refused_before_the_model(tmp_path, monkeypatch, capsys):
    from attnlens.runtime import models

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("the model must not load"))
    for given in ("", " , "):
        assert cli.main(["experiment", "faithfulness", "--out", str(tmp_path / "f"), "--methods", given]) == 2
        err = capsys.readouterr().err
        assert err.startswith("attnlens: error: ") and err.count("\n") == 1, err
        assert "--methods" in err and "names no method" in err


@pytest.mark.parametrize("call", [
    lambda m: al.attribute(m, ""),
    lambda m: faithfulness(m, "", method="attention"),
    lambda m: al.influence(m, "", (0, 1)),
])
def test_empty_text_is_refused(tiny, call):
    calls, handle = _forwards(tiny)
    try:
        with pytest.raises(AttnlensError, match="is empty"):
            call(tiny)
    finally:
        handle.remove()
    assert calls == []


@pytest.mark.parametrize("call, what", [
    (lambda m: al.attribute(m, "a\ud800b"), "the prompt"),
    (lambda m: al.attribute(m, "The cat", target="\udfff"), "target"),
    (lambda m: al.influence(m, "x \ud800 y", (0, 1)), "tokens"),
    (lambda m: faithfulness(m, "\ud800", method="attention"), "the prompt"),
])
def test_a_lone_surrogate_is_refused_naming_the_input(tiny, call, what):
    with pytest.raises(AttnlensError, match=f"{what} has a lone surrogate"):
        call(tiny)


@pytest.mark.parametrize("kwargs, words", [
    ({"fractions": []}, "fractions must be a non-empty list"),
    ({"fractions": ["0.1"]}, "fractions must be numbers"),
    ({"points": "3"}, "points must be an integer"),
    ({"seeds": 0}, "seeds must be a positive integer"),
    ({"erase": "blank"}, "erase must be one of"),
])
def test_faithfulness_settings_are_refused_before_the_model_runs(tiny, kwargs, words):
    calls, handle = _forwards(tiny)
    try:
        with pytest.raises(AttnlensError, match=words):
            faithfulness(tiny, TEXT, method="attention", **kwargs)
        with pytest.raises(AttnlensError, match=words):
            compare_faithfulness(tiny, [TEXT], methods=["attention"], **kwargs)
    finally:
        handle.remove()
    assert calls == []


def test_nan_scores_and_no_bootstrap_resamples_are_refused(tiny):
    n = len(tiny.tokenizer(TEXT)["input_ids"])
    with pytest.raises(AttnlensError, match="scores: nan at token 0 is not a finite number"):
        faithfulness(tiny, TEXT, scores=[float("nan")] + [0.0] * (n - 1), seeds=1, points=2)
    with pytest.raises(AttnlensError, match="n_boot must be a positive integer"):
        compare_faithfulness(tiny, [TEXT], methods=["attention"], n_boot=0)
    with pytest.raises(AttnlensError, match="n_boot must be a positive integer"):
        bootstrap_interval([1.0, 2.0], n_boot=0)
    with pytest.raises(AttnlensError, match="finite"):
        bootstrap_interval([1.0, float("nan")])
