"""One steering description through the server, and continuous batching.

A request's ``extra_body={"attnlens": {"steer": {method: settings}}}`` names any
registered steering method (a plugin's defined here too); every answer equals the
pipeline's greedy answer with the same ``steer``. Rows of a continuous batch join and
leave between decoding steps, each with its own plans, and make the tokens they make
alone.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from typing import Any

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")

import attnlens as al  # noqa: E402
from attnlens.api import chain  # noqa: E402
from attnlens.api.server import start_server  # noqa: E402
from attnlens.core.model import pad_id  # noqa: E402
from attnlens.runtime.continuous import ContinuousBatch, Row, joinable  # noqa: E402
from attnlens.runtime.generate import generate_batch  # noqa: E402
from attnlens.steering import Param, SteeringMethod, register  # noqa: E402
from attnlens.steering.bias import BiasPlan  # noqa: E402
from test_serve import NAME, client, pipe, server  # noqa: E402,F401 - the tiny lively model's server, shared


class FirstHeadBoost(SteeringMethod):
    """A plugin's static key bias: ``+value`` on the tagged spans' keys, in head 0 of every layer only."""

    name = "first_head_boost"
    help = "raise head 0's attention to the tagged spans"
    params = (Param("value", float, 4.0, "the bias"),)
    spans = "guide"
    edits = "bias"

    def steering(self, model: Any, prompts: Sequence[Any], settings: Mapping[str, Any]) -> Any:
        spans = [self.prompt_spans(p) for p in prompts]
        if not any(spans):
            return None
        plan = BiasPlan.for_model(model)
        for row, row_spans in enumerate(spans):
            for start, end in row_spans:
                plan.add(start, end, settings["value"], heads=[0], row=row if len(prompts) > 1 else None)
        return plan


@pytest.fixture
def plugin():
    return register(FirstHeadBoost())


CHAT = [{"role": "user", "content": "<!!-> Answer in French. <-!!> What is the capital of Italy?"}]
OTHER = [{"role": "user", "content": "Name three <!-> colours <-!> and a <!!!-> fruit <-!!!> please."}]


def _chat(client, messages, attnlens=None, max_tokens=10):
    extra = {} if attnlens is None else {"extra_body": {"attnlens": attnlens}}
    reply = client.chat.completions.create(model=NAME, messages=messages, max_tokens=max_tokens, **extra)
    return reply.choices[0].message.content


def test_a_plugin_method_is_served_and_equals_the_pipeline(plugin, server, client, pipe):
    cases = [
        (CHAT, {"steer": {"first_head_boost": {"value": 6.0}}}, {"first_head_boost": {"value": 6.0}}),
        (OTHER, {"steer": ["first_head_boost"]}, {"first_head_boost": {}}),
        (CHAT, {"steer": {"instaboost": {"alpha": 20}}}, {"instaboost": {"alpha": 20}}),
        (OTHER, {"steer": [{"guide": {"delta_mid": 3.0}}, ["first_head_boost", {"value": 2.0}]]},
         {"guide": {"delta_mid": 3.0}, "first_head_boost": {"value": 2.0}}),
        (CHAT, {"method": "first_head_boost"}, {"first_head_boost": {}}),
        (CHAT, {"delta_mid": 2.0}, {"guide": {"delta_mid": 2.0}}),
        (CHAT, {"method": "none"}, {}),
    ]
    with ThreadPoolExecutor(len(cases)) as pool:
        served = list(pool.map(lambda case: _chat(client, case[0], case[1]), cases))
    for (messages, _, steer), text in zip(cases, served):
        assert text == pipe(messages, max_new_tokens=10, steer=steer)[0]["generated_text"], steer
    # the plugin's bias changes the answer (so an ignored steer would fail above)
    assert served[0] != served[-1]
    assert server.engine.stats.peak > 1  # they shared a running batch


def test_the_response_names_the_methods_that_steered(plugin, client):
    reply = client.chat.completions.create(model=NAME, messages=CHAT, max_tokens=3,
                                           extra_body={"attnlens": {"steer": {"first_head_boost": {}}}})
    assert reply.model_extra["attnlens"]["methods"] == ["first_head_boost"]


def test_an_edit_method_runs_alone_and_equals_the_pipeline(client, pipe, server):
    steer = {"spotlight": {"target": 0.5}}
    text = _chat(client, CHAT, {"steer": steer})
    assert text == pipe(CHAT, max_new_tokens=10, steer=steer)[0]["generated_text"]
    assert not joinable(server.engine.job(CHAT, {"attnlens": {"steer": steer}}, chat=True, loop=None).steerings)


@pytest.mark.parametrize("settings, param", [
    ({"steer": {"nosuch": {}}}, "attnlens.steer.nosuch"),
    ({"steer": {"guide": {"delta_mid": "strong"}}}, "attnlens.steer.guide"),
    ({"steer": {"guide": {"nosuch": 1}}}, "attnlens.steer.guide"),
    ({"steer": {"guide": 3}}, "attnlens.steer.guide"),
    ({"steer": 7}, "attnlens.steer"),
    ({"steer": [7]}, "attnlens.steer[0]"),
    ({"steer": {}, "method": "guide"}, "attnlens.method"),
    ({"method": "nosuch"}, "attnlens.method"),
    ({"steer": {"pasta": {"head_config": {"0": [0]}}}}, "attnlens.emphasize"),
    ({"emphasize": ["capital"]}, "attnlens.emphasize"),
    ({"steer": {"pasta": {"head_config": {"0": [0]}}}, "emphasize": [""]}, "attnlens.emphasize"),
])
def test_bad_steering_descriptions_get_400_naming_the_field(client, settings, param):
    with pytest.raises(openai.BadRequestError) as caught:
        _chat(client, CHAT, settings)
    assert caught.value.body["param"] == param, caught.value.body


def test_pasta_is_served_on_emphasised_substrings(lively, client):
    heads = {"1": [0, 2]}
    messages = [{"role": "user", "content": "What is the capital of Italy? Answer briefly."}]
    steer = {"pasta": {"head_config": heads, "alpha": 0.01}}
    text = _chat(client, messages, {"steer": steer, "emphasize": ["Answer briefly."]})
    alone = chain.steered_generation(lively, messages, steer=steer, emphasize=["Answer briefly."], max_new_tokens=10)
    assert text == alone["steered"]
    assert text != _chat(client, messages, {"method": "none"})


def test_a_short_request_finishes_while_a_long_one_runs(lively, monkeypatch):
    """Continuous batching: a request that arrives during a long generation joins it and ends first."""
    long = 400
    with start_server(lively, model_name=NAME, batch_wait=0, max_batch_size=4) as running:
        engine = running.engine
        assert engine.continuous, engine.continuous_reason
        advance = engine._advance

        def slowly(job):  # the long stream takes at least 2 s, whatever the hardware
            time.sleep(0.005)
            return advance(job)

        monkeypatch.setattr(engine, "_advance", slowly)
        client = openai.OpenAI(base_url=running.url, api_key="unused", max_retries=0, timeout=120)
        stream = client.completions.create(model=NAME, prompt="Once upon a time", max_tokens=long, stream=True,
                                           extra_body={"attnlens": {"method": "none"}})
        for i, _ in enumerate(stream):
            if i == 2:
                break
        reply = client.completions.create(model=NAME, prompt="<!-> A short <-!> one", max_tokens=5)
        generated = engine.stats.tokens
        stream.close()
        assert reply.usage.completion_tokens == 5
        assert generated < long, "the short request waited for the long one to end"
        assert engine.stats.peak == 2


def _plans(model, prompt, steer):
    return chain.plans_for(model, [prompt], steer=steer)


def test_rows_join_and_leave_with_their_own_plans(lively, plugin):
    tok = lively.tokenizer
    texts = ["<!!-> Answer in French. <-!!> Tell me about the sea.", "Bread <!-> is <-!> good",
             "A much longer prompt about <!!!-> a winding road through the mountains <-!!!> at night, with rain.",
             "Hi", "<!-> Music <-!> and rain"]
    steers = [{"guide": {"delta_mid": 3.0}}, {"first_head_boost": {"value": 5.0}}, {"guide": {"delta_mid": 8.0}},
              {}, {"guide": {"delta_mid": 2.0}, "first_head_boost": {"value": 3.0}}]
    prompts = [chain.prepare(tok, t) for t in texts]
    limits = [12, 4, 12, 7, 9]
    alone = [generate_batch(lively, [list(p.input_ids)], _plans(lively, p, s), max_new_tokens=n, stop_at_eos=False)[0]
             for p, s, n in zip(prompts, steers, limits)]
    unsteered = [generate_batch(lively, [list(p.input_ids)], [], max_new_tokens=n, stop_at_eos=False)[0]
                 for p, n in zip(prompts, limits)]
    assert sum(a != u for a, u in zip(alone, unsteered)) >= 3  # the plans change the text
    joins = {0: [0, 1], 2: [2], 3: [3, 4]}  # step -> rows that join then
    got: dict[int, list[int]] = {i: [] for i in range(len(prompts))}
    with ExitStack() as stack:
        batch = ContinuousBatch(lively, stack, pad=pad_id(tok))
        step = 0
        while step == 0 or len(batch):
            batch.admit([Row(prompts[i].input_ids, _plans(lively, prompts[i], steers[i]), key=i)
                         for i in joins.get(step, [])])
            tokens = batch.choose()
            keep = []
            for key, token in zip(batch.keys, tokens):
                got[key].append(token)
                keep.append(len(got[key]) < limits[key])
            batch.advance(tokens, keep)
            step += 1
    assert [got[i] for i in range(len(prompts))] == alone


def test_a_seeded_sample_repeats_and_another_seed_differs(lively):
    prompt = chain.prepare(lively.tokenizer, "Once upon a time")

    def sample(seed):
        out = []
        with ExitStack() as stack:
            batch = ContinuousBatch(lively, stack, pad=pad_id(lively.tokenizer))
            batch.admit([Row(prompt.input_ids, temperature=1.5, seed=seed)])
            for _ in range(12):
                token = batch.choose()
                out += token
                batch.advance(token, [True])
        return out

    assert sample(3) == sample(3)
    assert sample(3) != sample(4)


def test_a_run_edit_cannot_join(lively):
    prompt = chain.prepare(lively.tokenizer, "<!-> Hi <-!> there")
    edits = chain.plans_for(lively, [prompt], steer={"spotlight": {}})
    with ExitStack() as stack:
        batch = ContinuousBatch(lively, stack, pad=pad_id(lively.tokenizer))
        with pytest.raises(al.AttnlensError, match="static bias plans"):
            batch.admit([Row(prompt.input_ids, edits)])


def test_tags_follow_the_method_registered_as_guide(lively, client, pipe):
    """A method registered in GUIDE's place steers the tags; with none registered, a tagged request is a 400."""
    from attnlens import steering
    from attnlens.steering.guide_method import GuideMethod

    class Doubled(GuideMethod):  # GUIDE at twice the strength, under GUIDE's name
        def steering(self, model, prompts, settings):
            return super().steering(model, prompts, {**settings, "delta_mid": 2 * settings["delta_mid"]})

    plain = _chat(client, CHAT)  # GUIDE at the default delta_mid 1
    doubled = pipe(CHAT, max_new_tokens=10, steer={"guide": {"delta_mid": 2.0}})[0]["generated_text"]
    steering.register(Doubled(), replace=True)
    assert _chat(client, CHAT) == doubled != plain
    steering.unregister("guide")
    with pytest.raises(openai.BadRequestError) as caught:
        _chat(client, CHAT)
    assert caught.value.body["param"] == "messages" and "guide" in caught.value.body["message"]
    assert _chat(client, [{"role": "user", "content": "No tags here."}])  # an untagged request is served


def test_an_engine_made_while_the_model_is_held_still_batches_continuously(lively):
    """Another generation holding the model when a server's engine is made is no lasting reason: the
    engine batches continuously, and its requests run once the model is free."""
    from attnlens.api.engine import Engine
    from attnlens.runtime.direct import direct, in_use

    with direct(lively):
        assert in_use(lively)
        engine = Engine(lively, model_name=NAME, batch_wait=0)
    assert not in_use(lively)
    assert engine.continuous, engine.continuous_reason
    with start_server(lively, model_name=NAME, batch_wait=0) as running:
        client = openai.OpenAI(base_url=running.url, api_key="unused", max_retries=0, timeout=60)
        reply = client.completions.create(model=NAME, prompt="<!-> A short <-!> one", max_tokens=3)
        assert reply.usage.completion_tokens == 3
        assert running.engine.continuous and running.engine.stats.peak == 1


def test_a_continuous_batch_waits_for_another_threads_block(lively):
    """A batch opened while another thread's direct block holds the model waits for it instead of failing
    (a server whose previous batch is still closing does not fall back to batch-by-batch)."""
    import threading

    from attnlens.runtime.direct import direct

    held, release = threading.Event(), threading.Event()

    def hold():
        with direct(lively):
            held.set()
            release.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    assert held.wait(10)
    threading.Timer(0.3, release.set).start()
    with ExitStack() as stack:
        batch = ContinuousBatch(lively, stack, pad=pad_id(lively.tokenizer))
        assert release.is_set()  # it waited for the other block to end
        batch.admit([Row(key="r", tokens=lively.tokenizer("Once upon")["input_ids"])])
        assert len(batch) == 1
    thread.join(10)
