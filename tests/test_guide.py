"""GUIDE: the context manager, batched generation and the pipeline."""

import pytest
import torch

import attnlens as al
from attnlens import AttnlensError, SpanError
from attnlens.runtime.generate import generate_batch
from attnlens.steering.bias import BiasPlan
from conftest import make_tiny_bridge, make_tiny_hf
from reference import reference_guide, use_reference_attention


@pytest.fixture(scope="module")
def tiny_pair(tokenizer):
    """A tiny bridge and an independent copy of the same HF weights using the reference attention."""
    bridge = make_tiny_bridge(tokenizer, seed=3)
    hf = make_tiny_hf(tokenizer, seed=3)  # the same weights, never touched by a bridge
    use_reference_attention(hf)
    return bridge, hf


def test_level_deltas():
    assert [al.level_delta(level, 2.0) for level in (1, 2, 3)] == [1.0, 2.0, 4.0]
    with pytest.raises(AttnlensError):
        al.level_delta(4, 1.0)


@pytest.mark.parametrize("layers, ref_layers", [("all", None), ("first", {0}), ("last", {2}), ([0, 2], {0, 2})])
def test_guide_equals_reference_on_tiny(tiny_pair, layers, ref_layers):
    bridge, hf = tiny_pair
    tokens = torch.randint(0, 1000, (1, 12))
    spans = [(2, 5), (7, 9, 2.5)]
    with torch.no_grad():
        with al.guide(bridge, spans, delta=1.0, layers=layers):
            ours = bridge(tokens).log_softmax(-1)
        with reference_guide([(2, 5, 1.0), (7, 9, 2.5)], layers=ref_layers):
            ref = hf(tokens).logits.log_softmax(-1)
        plain = bridge(tokens).log_softmax(-1)
    assert (ours - ref).abs().max() < 1e-4
    assert (ours - plain).abs().max() > 1e-3


def test_guide_layers_none_changes_nothing(tiny):
    tokens = torch.randint(0, 1000, (1, 6))
    with torch.no_grad():
        plain = tiny(tokens)
        with al.guide(tiny, [(0, 3)], 5.0, layers="none"):
            steered = tiny(tokens)
    assert torch.equal(plain, steered)


def test_steered_generation_equals_reference_on_tiny(tiny_pair):
    bridge, hf = tiny_pair
    tokens = torch.randint(0, 1000, (1, 10))
    with torch.no_grad():
        with al.guide(bridge, [(1, 6)], delta=3.0):
            ours = bridge.generate(tokens, max_new_tokens=6, do_sample=False, verbose=False, stop_at_eos=False)
        with reference_guide([(1, 6, 3.0)]):
            ref = hf.generate(tokens, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert ours.tolist() == ref.tolist()


def test_left_padded_batch_equals_rows_alone(tiny):
    rows = [list(range(100, 112)), list(range(300, 305)), list(range(500, 508))]
    spans = [[(1, 4)], [(0, 2, 3.0)], [(2, 3), (5, 7)]]
    plan = BiasPlan.for_model(tiny)
    for r, row_spans in enumerate(spans):
        for span in row_spans:
            plan.add(span[0], span[1], span[2] if len(span) == 3 else 2.0, row=r)
    batched = generate_batch(tiny, rows, [plan], max_new_tokens=5, stop_at_eos=False)
    alone = []
    for r, row in enumerate(rows):
        single = BiasPlan.for_model(tiny)
        for span in spans[r]:
            single.add(span[0], span[1], span[2] if len(span) == 3 else 2.0)
        alone.extend(generate_batch(tiny, [row], [single], max_new_tokens=5, stop_at_eos=False))
    assert batched == alone
    unsteered = generate_batch(tiny, rows, [], max_new_tokens=5, stop_at_eos=False)
    assert unsteered != batched


def test_guide_accepts_per_row_spans(tiny):
    tokens = torch.randint(0, 1000, (2, 7))
    with torch.no_grad():
        with al.guide(tiny, [[(0, 2)], [(3, 5)]], delta=2.0):
            both = tiny(tokens)
        with al.guide(tiny, [(0, 2)], delta=2.0):
            first = tiny(tokens[:1])
    assert torch.allclose(both[:1], first, atol=1e-5)


@pytest.mark.parametrize("spans, match", [([], "at least one span"), ([(4, 2)], "empty"), ([(0,)], "must be"),
                                          ([(0, 1.5)], "not an integer")])
def test_bad_guide_spans(tiny, spans, match):
    with pytest.raises(AttnlensError, match=match):
        with al.guide(tiny, spans, 1.0):
            pass


def test_span_beyond_the_sequence_is_an_error(tiny):
    with pytest.raises(SpanError, match="sequence has 5 tokens"):
        with torch.no_grad(), al.guide(tiny, [(2, 9)], 1.0):
            tiny(torch.randint(0, 1000, (1, 5)))


def test_bad_layers(tiny):
    with pytest.raises(AttnlensError, match="out of range"):
        with al.guide(tiny, [(0, 2)], 1.0, layers=[7]):
            pass


# ----------------------------------------------------------------------------- pipeline (tiny)


def test_pipeline_inputs_and_outputs(tiny):
    pipe = al.pipeline("pay-attention", model=tiny, delta_mid=2.0)
    out = pipe("Hello <!!->world<-!!> and <!->more<-!>", max_new_tokens=3)
    assert isinstance(out, list) and len(out) == 1
    spans = out[0]["spans"]
    assert [(s["level"], s["delta"], s["text"]) for s in spans] == [(2, 2.0, "world"), (1, 1.0, "more")]
    assert isinstance(out[0]["generated_text"], str)
    batched = pipe(["<!->a<-!> b", [{"role": "user", "content": "<!!!->c<-!!!>"}]], max_new_tokens=2)
    assert len(batched) == 2 and all(len(item) == 1 for item in batched)
    assert batched[1][0]["spans"][0]["delta"] == 4.0


def test_pipeline_batch_equals_single_inputs(tiny):
    pipe = al.pipeline("pay-attention", model=tiny, delta_mid=3.0, batch_size=4)
    items = ["<!->Paris<-!> is the capital of", "A much longer <!!!->input text here<-!!!> that pads the other rows", "x"]
    together = [o[0]["generated_text"] for o in pipe(items, max_new_tokens=4)]
    alone = [pipe(item, max_new_tokens=4)[0]["generated_text"] for item in items]
    assert together == alone


@pytest.mark.parametrize(
    "kwargs, match",
    [({"max_new_tokens": 0}, "max_new_tokens"), ({"temperature": 0}, "temperature"),
     ({"top_p": 1.5}, "top_p"), ({"beams": 2}, "unknown generation")],
)
def test_pipeline_bad_generation_kwargs(tiny, kwargs, match):
    pipe = al.pipeline("pay-attention", model=tiny)
    with pytest.raises(AttnlensError, match=match):
        pipe("hi", **kwargs)


def test_pipeline_bad_inputs(tiny):
    with pytest.raises(AttnlensError, match="unknown task"):
        al.pipeline("text-generation", model=tiny)
    pipe = al.pipeline("pay-attention", model=tiny)
    with pytest.raises(AttnlensError, match="no inputs"):
        pipe([])
    with pytest.raises(AttnlensError, match="string or a chat"):
        pipe([42])
    with pytest.raises(al.TagError, match="in message 0"):
        pipe([{"role": "user", "content": "<!->open"}])
    with pytest.raises(AttnlensError, match="delta_mid"):
        al.pipeline("pay-attention", model=tiny, delta_mid="big")
