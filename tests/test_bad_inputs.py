"""Bad input to the public entry points: each case an AttnlensError whose message names the input.

Also the context window: a prompt (plus max_new_tokens) longer than the model's
window is a ContextWindowError in the pipeline, generate_batch, influence,
AttentionData and profiling. Every case leaves no hook behind.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

import attnlens as al
from attnlens.core.errors import AttnlensError, ContextWindowError, SpanError
from attnlens.steering import BiasPlan

SURROGATE = "bad \ud800 text"


@pytest.fixture(scope="module")
def pipe(tiny):
    return al.pipeline("pay-attention", model=tiny)


def _no_hooks(model):
    assert all(not hp.fwd_hooks for hp in model.hook_dict.values())


@pytest.mark.parametrize("inputs, words", [
    ({"role": "user", "content": "hi"}, "got dict"),
    (None, "got NoneType None"),
    (123, "got int 123"),
    (b"bytes", "got bytes"),
    (["fine", 7], "input 1 must be a string or a chat"),
    ([], "no inputs given"),
])
def test_pipeline_inputs(pipe, tiny, inputs, words):
    with pytest.raises(AttnlensError) as info:
        pipe(inputs, max_new_tokens=1)
    assert words in str(info.value)
    _no_hooks(tiny)


@pytest.mark.parametrize("kwargs, words", [
    ({"batch_size": -1}, "batch_size must be at least 1, got -1"),
    ({"batch_size": 0}, "batch_size must be at least 1, got 0"),
    ({"batch_size": True}, "batch_size must be an integer, got True"),
    ({"do_sample": "no"}, "do_sample must be True or False, got 'no'"),
    ({"layers": []}, "layers=[] selects no layer"),
    ({"layers": ""}, "layers='' selects no layer"),
    ({"layers": 3.5}, "layers=3.5"),
    ({"delta_mid": 1e39}, "delta_mid=1e+39 is too large"),
    ({"delta_mid": float("nan")}, "delta_mid must be finite"),
    ({"repetition_penalty": 0}, "repetition_penalty must be > 0, got 0"),
    ({"repetition_penalty": -1}, "repetition_penalty must be > 0, got -1"),
    ({"repetition_penalty": float("nan")}, "repetition_penalty must be a finite number, got nan"),
    ({"temperature": float("nan"), "do_sample": True}, "temperature must be a finite number, got nan"),
    ({"temperature": "hot"}, "temperature must be a number, got 'hot'"),
    ({"seed": "abc"}, "seed must be None or an integer in [0, 2**64), got 'abc'"),
    ({"seed": 2**70}, f"got {2**70}"),
    ({"max_new_tokens": 10**9}, "max_new_tokens=1000000000"),
])
def test_generation_arguments(pipe, tiny, kwargs, words):
    kwargs.setdefault("max_new_tokens", 1)
    with pytest.raises(AttnlensError) as info:
        pipe("<!->Be brief.<-!> Hello", **kwargs)
    assert words in str(info.value)
    _no_hooks(tiny)


@pytest.mark.parametrize("role", [None, 123, "wizard"])
def test_chat_roles(pipe, role):
    with pytest.raises(SpanError, match=f"message 0 has the role {role!r}; a role is one of system, user"):
        pipe([{"role": role, "content": "hi"}], max_new_tokens=1, chat=True)


def test_lone_surrogates(pipe, tiny):
    with pytest.raises(AttnlensError, match="the prompt has a lone surrogate '\\\\ud800' at character 4"):
        pipe(SURROGATE, max_new_tokens=1, raw=True)
    with pytest.raises(AttnlensError, match="message 0 \\(user\\) content has a lone surrogate"):
        pipe([{"role": "user", "content": SURROGATE}], max_new_tokens=1, chat=True)
    with pytest.raises(AttnlensError, match="text 1 has a lone surrogate"):
        al.AttentionData(tiny, text_batch=["fine text here", SURROGATE], min_length=1, max_length=8)


@pytest.mark.parametrize("tokens, words", [
    ([1, 2, 10**7], "10000000 at position 2 is not a token id of this model"),
    ([-1, 2, 3], "-1 at position 0 is not a token id"),
])
def test_influence_token_ids(tiny, tokens, words):
    with pytest.raises(AttnlensError) as info:
        al.influence(tiny, tokens, (0, 1))
    assert words in str(info.value)
    _no_hooks(tiny)


@pytest.mark.parametrize("rows, words", [
    ([[1, 2, 10**7]], "row 0: 10000000 at position 2"),
    ([[1, 2], "text"], "row 1 must be a list of token ids, got str"),
])
def test_generate_batch_rows(tiny, rows, words):
    with pytest.raises(AttnlensError) as info:
        al.generate_batch(tiny, rows, max_new_tokens=1)
    assert words in str(info.value)


@pytest.mark.parametrize("value, words", [
    (float("nan"), "bias value must be a finite number, got nan"),
    (1e39, "bias value 1e+39 is too large"),
    ("big", "bias value must be a number, got 'big'"),
    (None, "bias value must be a number, got None"),
])
def test_bias_values(tiny, value, words):
    plan = BiasPlan(tiny.cfg.n_layers, tiny.cfg.n_heads)
    with pytest.raises(AttnlensError) as info:
        plan.add(0, 2, value)
    assert words in str(info.value)


def test_level_three_bias_cannot_overflow():
    with pytest.raises(AttnlensError, match="delta_mid=6e\\+29 gives a level-3 bias of 1.2e\\+30"):
        al.level_delta(3, 6e29)


# ----------------------------------------------------------------------------- the context window

def _long_text(tiny, extra: int = 10) -> str:
    return "hello " * (tiny.cfg.n_ctx + extra)


def test_window_pipeline_and_generate_batch(pipe, tiny):
    n_ctx = tiny.cfg.n_ctx
    with pytest.raises(ContextWindowError, match=f"more than the model's context window of {n_ctx} tokens"):
        pipe(_long_text(tiny), max_new_tokens=1)
    with pytest.raises(ContextWindowError, match=f"max_new_tokens={10**9}"):
        pipe("Hello there", max_new_tokens=10**9)
    with pytest.raises(ContextWindowError, match="prompt 1 has"):  # before the first batch generates
        pipe(["Hi", _long_text(tiny)], max_new_tokens=1, batch_size=1)
    with pytest.raises(ContextWindowError, match=f"at most {n_ctx - 5} new tokens fit"):
        al.generate_batch(tiny, [[1, 2, 3, 4, 5]], max_new_tokens=n_ctx)
    with pytest.raises(ContextWindowError, match="the longest prompt has"):
        al.generate_batch(tiny, [[1], [1] * (n_ctx + 1)], max_new_tokens=1)
    _no_hooks(tiny)


def test_window_influence(tiny):
    with pytest.raises(ContextWindowError, match="the sequence to measure has"):
        al.influence(tiny, [1] * (tiny.cfg.n_ctx + 1), (0, 1))
    _no_hooks(tiny)


def test_window_attention_data(tiny):
    with pytest.raises(ContextWindowError, match="text 0 \\(cut to max_length=1000000\\)"):
        al.AttentionData(tiny, text_batch=[_long_text(tiny)], min_length=1, max_length=10**6)


def test_window_profiling(tiny):
    example = {"prompt": _long_text(tiny), "emphasize": ["hello"], "target": " yes"}
    with pytest.raises(ContextWindowError, match="example 0 \\(prompt and target\\)"):
        al.profile_heads(tiny, [example], heads=[0], chat=False, progress=False)
    _no_hooks(tiny)


# ----------------------------------------------------------------------------- property tests

TAGGED = st.lists(st.one_of(st.text(max_size=8), st.sampled_from(["<!->", "<-!>", "<?->", "<-?>", "\\", "\ud800"])),
                  max_size=8).map("".join)


@given(st.one_of(TAGGED, st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "wizard", None]),
                                                         "content": TAGGED}), max_size=3),
                 st.integers(), st.none()),
       st.one_of(st.floats(allow_nan=True), st.integers(-3, 3), st.just("x")), st.booleans())
def test_prepare_never_crashes(tokenizer, item, delta_mid, chat):
    try:
        prompt = al.prepare(tokenizer, item, delta_mid=delta_mid, chat=chat)
    except AttnlensError:
        return
    for span in prompt.spans:
        assert 0 <= span.start < span.end <= len(prompt.input_ids)


@given(st.integers(-5, 30), st.one_of(st.none(), st.integers(-5, 30)),
       st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10, 10), st.text(max_size=3)),
       st.one_of(st.sampled_from(["all", "none", "", "first", "0,1", "x"]), st.lists(st.integers(-5, 5), max_size=3)),
       st.one_of(st.none(), st.lists(st.integers(-6, 6), max_size=3)))
def test_bias_plan_add_never_crashes(tiny, start, end, value, layers, heads):
    plan = BiasPlan(tiny.cfg.n_layers, tiny.cfg.n_heads)
    try:
        plan.add(start, end, value, layers=layers, heads=heads)
    except AttnlensError:
        return
    for term in plan.terms:
        assert abs(term.value) <= 1e30


@given(st.binary(max_size=80))
def test_load_head_config_never_crashes(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("h") / "heads.json"
    path.write_bytes(content)
    try:
        data = al.load_head_config(path)
    except AttnlensError as exc:
        assert "heads.json" in str(exc)
        return
    assert isinstance(data, (dict, list))
