"""InstABoost, SpotLight: checked against independent references on a tiny random model."""

from __future__ import annotations

import math

import pytest
import torch

import attnlens as al
from attnlens import steering
from attnlens.analysis.capture import steering_patterns
from attnlens.api import chain
from attnlens.core.errors import AttnlensError
from attnlens.runtime.generate import generate_batch

TEXT = "<!-> Answer in French. <-!> The cat sat on the mat and looked at the dog for a long time"


def _prompt(tiny, text=TEXT):
    return al.prepare(tiny.tokenizer, text)


def test_instaboost_equals_guide_at_equal_strength(tiny):
    texts = ["<!!-> Answer in French. <-!!> The cat sat on the mat", "<!!-> Be brief. <-!!> Tell me about dogs"]
    prompts = [_prompt(tiny, t) for t in texts]
    boost, = chain.plans_for(tiny, prompts, steer={"instaboost": {"alpha": 40.0}})
    guide, = chain.plans_for(tiny, prompts, steer={"guide": {"delta_mid": math.log(40.0)}})
    assert isinstance(boost, steering.BiasPlan)  # a static bias: the fused path runs it
    assert [(t.start, t.end, t.layers, t.row) for t in boost.terms] == \
        [(t.start, t.end, t.layers, t.row) for t in guide.terms]
    assert all(t.value == pytest.approx(math.log(40.0)) for t in boost.terms + guide.terms)
    ids = torch.tensor([list(prompts[0].input_ids)])
    from attnlens.steering.edits import select_rows

    logits = []
    for plan in [select_rows(boost, 0, 1), select_rows(guide, 0, 1), None]:
        with (steering.install(tiny, plan) if plan is not None else torch.no_grad()), torch.no_grad():
            logits.append(tiny(ids))
    assert torch.allclose(logits[0], logits[1], atol=1e-5)
    assert not torch.allclose(logits[0], logits[2], atol=1e-3)
    # a left-padded batch, with the KV cache, on both runtimes
    rows = [list(p.input_ids) for p in prompts]
    ours = generate_batch(tiny, rows, [boost], max_new_tokens=3)
    assert ours == generate_batch(tiny, rows, [guide], max_new_tokens=3)
    assert chain.generate(tiny, rows, [boost], max_new_tokens=3, progress=False, backend="bridge") == ours
    with pytest.raises(AttnlensError, match="alpha must be"):
        steering.get("instaboost").settings(alpha=0.5)


def _share(pattern, start, end):
    """Reference: the span's share of one layer's attention, pooled over heads and queries at/after start."""
    rows = pattern[:, start:, :]  # [heads, query, key]
    return float((rows[..., start:end].sum(-1) / rows.sum(-1)).mean())


@pytest.mark.parametrize("target", [0.3, 0.95])
def test_spotlight_lifts_the_share_to_the_target_where_it_was_below(tiny, target):
    prompt = _prompt(tiny)
    (start, end), = [(s.start, s.end) for s in prompt.guide_spans()]
    edit, = chain.plans_for(tiny, [prompt], steer={"spotlight": {"target": target}})
    assert isinstance(edit, steering.RunEdit)
    lifted = unchanged = 0
    for layer in range(tiny.cfg.n_layers):
        seen = steering_patterns(tiny, prompt, layer, edit)
        before = _share(seen.unsteered, start, end)
        after = _share(seen.steered, start, end)
        if before < target:
            assert after >= target - 1e-4, (layer, before, after)
            assert after <= target + 0.02  # the smallest lift that reaches it, not more
            lifted += 1
        else:
            assert torch.allclose(seen.steered, seen.unsteered, atol=1e-6)
            unchanged += 1
    assert lifted + unchanged == tiny.cfg.n_layers
    if target == 0.95:
        assert lifted == tiny.cfg.n_layers


def test_spotlight_leaves_a_layer_above_the_target_alone(tiny):
    prompt = _prompt(tiny)
    edit, = chain.plans_for(tiny, [prompt], steer={"spotlight": {"target": 0.01}})
    seen = steering_patterns(tiny, prompt, 0, edit)
    assert torch.allclose(seen.steered, seen.unsteered, atol=1e-6)


def test_spotlight_padded_batch_equals_rows_alone(tiny):
    prompts = [_prompt(tiny), _prompt(tiny, "<!-> Be brief. <-!> dogs")]
    rows = [list(p.input_ids) for p in prompts]
    both = chain.plans_for(tiny, prompts, steer={"spotlight": {"target": 0.9}})
    together = generate_batch(tiny, rows, both, max_new_tokens=4)
    alone = [generate_batch(tiny, [r], chain.plans_for(tiny, [p], steer={"spotlight": {"target": 0.9}}),
                            max_new_tokens=4)[0] for r, p in zip(rows, prompts)]
    assert together == alone
    ids = torch.tensor([rows[0]])
    with steering.install(tiny, both[0].select_rows(0, 1)), torch.no_grad():
        steered = tiny(ids)
    with torch.no_grad():
        plain = tiny(ids)
    assert not torch.allclose(steered, plain)
    with pytest.raises(AttnlensError, match="target must be"):
        steering.get("spotlight").settings(target=1.5)


def test_spa_at_weight_one_is_plain_generation(tiny):
    prompts = [_prompt(tiny), _prompt(tiny, "<!-> Be brief. <-!> dogs")]
    rows = [list(p.input_ids) for p in prompts]
    spa = chain.plans_for(tiny, prompts, steer={"spa": {"omega": 1.0}})
    assert len(spa) == 1 and callable(spa[0].bind)
    assert generate_batch(tiny, rows, spa, max_new_tokens=5) == generate_batch(tiny, rows, max_new_tokens=5)


def test_spa_mixes_the_logits_of_two_separate_passes(tiny):
    from attnlens.runtime import backends
    from attnlens.steering.spa_method import SpaSteering

    prompt = _prompt(tiny)
    (start, end), = [(s.start, s.end) for s in prompt.guide_spans()]
    omega, mask_token, steps = 3.0, 7, 4
    ids = list(prompt.input_ids)
    # reference: two separate full forward passes per step, mixed by hand
    ref_tokens, ref_logits = [], []
    seq = list(ids)
    for _ in range(steps):
        masked = list(seq)
        masked[start:end] = [mask_token] * (end - start)
        with torch.no_grad():
            orig = tiny(torch.tensor([seq]))[0, -1].float()
            anch = tiny(torch.tensor([masked]))[0, -1].float()
        mixed = omega * orig + (1 - omega) * anch
        ref_logits.append(mixed)
        ref_tokens.append(int(mixed.argmax()))
        seq.append(ref_tokens[-1])
    spa = SpaSteering(((( start, end),),), omega, mask_token)
    from contextlib import ExitStack

    for backend in ("direct", "bridge"):
        with ExitStack() as stack, torch.no_grad():
            run = spa.bind(backends.open_run(stack, tiny, backend))
            out = run.generate(torch.tensor([ids]), None, eos=None, stop_at_eos=False, pad=0, max_new_tokens=steps,
                               do_sample=False, temperature=1.0, top_p=None, top_k=None, repetition_penalty=1.0)
        assert out[0, len(ids):].tolist() == ref_tokens, backend
        for got, want in zip(run.mixed, ref_logits):
            assert torch.allclose(got[0], want, atol=1e-3), backend
    # through the registry: the tagged span is anchored, the padding token masks it
    made, = chain.plans_for(tiny, [prompt], steer={"spa": {"omega": omega, "mask_token": mask_token}})
    assert made.spans == (((start, end),),)
    assert generate_batch(tiny, [ids], [made], max_new_tokens=steps, stop_at_eos=False)[0] == ref_tokens
    # with another method: one prompt at a time (GUIDE's bias then applies to both rows)
    both = [_prompt(tiny), _prompt(tiny, "<!-> Be brief. <-!> dogs")]
    plans = chain.plans_for(tiny, both, steer={"guide": {"delta_mid": 1.0}, "spa": {"omega": 2.0}})
    with pytest.raises(AttnlensError, match="one prompt at a time"):
        generate_batch(tiny, [list(p.input_ids) for p in both], plans, max_new_tokens=2)
    assert len(chain.generate(tiny, both, plans, batch_size=1, max_new_tokens=2, progress=False)) == 2
    with pytest.raises(AttnlensError, match="repetition_penalty"):
        generate_batch(tiny, [ids], [made], max_new_tokens=2, repetition_penalty=1.2)


def test_each_new_method_through_the_pipeline_and_as_an_experiment_condition(tiny, tmp_path):
    from attnlens.experiments import SummarizeConfig, run_experiment

    pipe = al.PayAttentionPipeline(tiny, raw=True, tag_whitespace="keep")  # the tokens this test was written on
    settings = {"instaboost": {"alpha": 50.0}, "spotlight": {"target": 0.9}, "spa": {"omega": 5.0}}
    prompt = pipe.prepare(TEXT)
    texts = set()
    for name, values in settings.items():
        out = pipe(TEXT, max_new_tokens=3, steer={name: values})[0]["generated_text"]
        plans = chain.plans_for(tiny, [prompt], steer={name: values})
        assert plans, name
        tokens = generate_batch(tiny, [list(prompt.input_ids)], plans, max_new_tokens=3)[0]
        assert out.endswith(tiny.tokenizer.decode(tokens, skip_special_tokens=True)), name
        texts.add(out)
    assert len(texts | {pipe(TEXT, max_new_tokens=3, steer={})[0]["generated_text"]}) > 1  # something steered
    config = SummarizeConfig(out=tmp_path / "m", conditions=["none", "instaboost", "spotlight", "spa"], limit=1,
                             max_new_tokens=2, steering=settings, plots=False, influence=False)
    result = run_experiment("summarize", config, model=tiny)
    table = {row["condition"]: row for row in result.table()}
    assert set(table) == {"none", "instaboost", "spotlight", "spa"}
    assert all(row["items"] == 1 for row in table.values())


def test_the_cli_applies_a_new_method_instead_of_guide_on_the_tags(tiny, capsys, monkeypatch):
    import json

    from attnlens import cli
    from attnlens.cli import generate as gen

    monkeypatch.setattr(gen, "load_model_for", lambda args: tiny)
    for argv, methods in ((["--steer", "spotlight"], ["spotlight"]), (["--instaboost-alpha", "3"], ["instaboost"]),
                          (["--spa-omega", "2"], ["spa"]), ([], ["guide"])):
        assert cli.main(["generate", TEXT, "--max-new-tokens", "2", "--json", *argv]) == 0
        assert json.loads(capsys.readouterr().out)["methods"] == methods


def test_spa_drops_a_row_that_has_ended_and_the_others_go_on_unchanged(tiny, monkeypatch):
    """A row that reaches its end token leaves SPA's decoding loop (its cache too); every row's tokens are
    those it makes alone."""
    from attnlens.steering.spa_method import _SpaRun

    texts = ["<!-> Be brief. <-!> Tell me about dogs", "<!-> Answer in French. <-!> The cat sat on the mat today",
             "<!-> Rules <-!> one two three"]
    prompts = [_prompt(tiny, t) for t in texts]
    steer = {"spa": {"omega": 2.0}}
    plans = chain.plans_for(tiny, prompts, steer=steer)
    first = chain.generate(tiny, prompts, plans, max_new_tokens=8, progress=False)
    eos_token = tiny.tokenizer.eos_token
    tiny.tokenizer.eos_token = tiny.tokenizer.convert_ids_to_tokens(first[0][1])  # row 0 ends at its 2nd token
    widths = []
    real = _SpaRun.step_logits

    def step_logits(self, x, mask, past):
        widths.append(x.shape[0])
        return real(self, x, mask, past)

    monkeypatch.setattr(_SpaRun, "step_logits", step_logits)
    try:
        together = chain.generate(tiny, prompts, plans, max_new_tokens=8, progress=False)
        alone = [chain.generate(tiny, [p], chain.plans_for(tiny, [p], steer=steer), max_new_tokens=8,
                                progress=False)[0] for p in prompts]
    finally:
        tiny.tokenizer.eos_token = eos_token
    assert len(together[0]) < 8 and together == alone
    assert widths[0] == 6 and min(widths[: len(together[1])]) < 6  # 3 rows x (original, masked), then fewer
