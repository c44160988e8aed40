"""Steering methods as registered objects: the registry, run-time edits end to end, and the callers reading it."""

from __future__ import annotations

import json

import pytest
import torch

import attnlens as al
from attnlens import steering
from attnlens.api import chain
from attnlens.analysis.capture import steering_patterns
from attnlens.core.errors import AttnlensError, ExperimentError
from attnlens.experiments.config import ExperimentConfig, condition_methods, resolve_conditions
from attnlens.runtime.generate import generate_batch


class BanLogits(steering.SteeringMethod):
    """Adds ``-inf``-like penalties to one token's logit at every position: a logits edit."""

    name = "ban_token"
    help = "never generate one token"
    params = (steering.Param("token", int, help="the token id to ban"),
              steering.Param("penalty", float, 1e4, "how much to subtract"))
    spans = "guide"
    edits = "logits"

    def steering(self, model, prompts, settings):
        def ban(logits, ctx):
            out = logits.clone()
            out[..., settings["token"]] -= settings["penalty"]
            return out

        spans = [self.prompt_spans(p) for p in prompts]
        return steering.RunEdit.for_prompts(model, "logits", ban, spans, name=self.name)


class ScalePattern(steering.SteeringMethod):
    """Multiplies the attention the steered keys get by ``factor`` after the softmax (rows renormalised)."""

    name = "scale_pattern"
    default_condition = True  # asks to join default experiments
    params = (steering.Param("factor", float, 3.0, "the factor on the spans' attention"),
              steering.Param("layers", lambda v: v, "all", "layers"))
    spans = "emphasis"
    edits = "pattern"

    def steering(self, model, prompts, settings):
        def scale(pattern, ctx):
            weights = torch.where(ctx.key_mask(pattern), settings["factor"], 1.0).to(pattern.dtype)
            out = pattern * weights
            return out / out.sum(-1, keepdim=True)

        spans = [self.prompt_spans(p) for p in prompts]
        return steering.RunEdit.for_prompts(model, "pattern", scale, spans, layers=settings["layers"],
                                            name=self.name)


@pytest.fixture
def registered():
    methods = [BanLogits(), ScalePattern()]
    for m in methods:
        steering.register(m)
    yield methods
    for m in methods:
        steering.unregister(m.name)


def test_registry_lists_and_checks(registered):
    assert steering.methods()[:2] == ("guide", "pasta")
    assert {"ban_token", "scale_pattern"} <= set(steering.methods())
    with pytest.raises(AttnlensError, match="already registered"):
        steering.register(BanLogits())
    with pytest.raises(AttnlensError, match="unknown steering method 'nope'"):
        steering.get("nope")
    method = steering.get("ban_token")
    assert method.settings({"token": "5"}) == {"token": 5, "penalty": 1e4}
    with pytest.raises(AttnlensError, match="needs token"):
        method.settings({})
    with pytest.raises(AttnlensError, match="no parameter.*colour"):
        method.settings({"token": 1, "colour": "red"})
    with pytest.raises(AttnlensError, match="alpha must be in"):
        steering.get("pasta").settings(head_config=[0], alpha=2.0)
    # the experiment conditions follow the registry
    assert condition_methods()[:4] == ("none", "guide", "emphatic", "pasta")
    assert "scale_pattern" in condition_methods()
    names = [c.name for c in resolve_conditions(ExperimentConfig(out="x", deltas=[1]))]
    assert names == ["none", "guide@1", "emphatic", "scale_pattern"]  # ban_token never asked to join
    with pytest.raises(ExperimentError, match="'ban_token' condition needs token"):
        resolve_conditions(ExperimentConfig(out="x", conditions=["ban_token"]))
    config = ExperimentConfig(out="x", conditions=["ban_token"], steering={"ban_token": {"token": 3}})
    assert [c.name for c in resolve_conditions(config)] == ["ban_token"]
    from attnlens.experiments.config import validate_config

    with pytest.raises(ExperimentError, match="unknown method.*'louder'"):
        validate_config(ExperimentConfig(out="x", steering={"louder": {}}))


def test_logits_edit_changes_generation_in_a_padded_batch(tiny, registered):
    rows = [[5, 6, 7, 8, 9], [10, 11, 12]]
    plain = generate_batch(tiny, rows, max_new_tokens=4)
    banned = plain[0][0]
    prompts = [al.prepare(tiny.tokenizer, "<!-> a <-!> b"), al.prepare(tiny.tokenizer, "c d")]
    plans = chain.plans_for(tiny, prompts, steer={"ban_token": {"token": banned}})
    assert len(plans) == 1 and isinstance(plans[0], steering.RunEdit)
    steered = generate_batch(tiny, rows, plans, max_new_tokens=4)
    assert banned not in steered[0] and banned not in steered[1]
    assert steered != plain
    # no hook is left behind
    assert generate_batch(tiny, rows, max_new_tokens=4) == plain


def test_pattern_edit_runs_on_every_path(tiny, registered):
    prompt = chain.with_emphasis(tiny.tokenizer, al.prepare(tiny.tokenizer, "the cat sat on the mat"),
                                 "the cat sat on the mat", ["cat"])
    (start, end), = [(s.start, s.end) for s in prompt.emphasis_spans()]
    edit, = chain.plans_for(tiny, [prompt], steer={"scale_pattern": {"factor": 4.0, "layers": [1]}})
    seen = steering_patterns(tiny, prompt, 1, edit)
    last = seen.steered.shape[1] - 1
    before = seen.unsteered[:, last, start:end].sum(-1)
    after = seen.steered[:, last, start:end].sum(-1)
    assert torch.all(after > before)
    assert torch.allclose(seen.steered.sum(-1), torch.ones_like(seen.steered.sum(-1)), atol=1e-5)
    # generation: both runtimes take the edit, and a chunked batch splits its rows
    tokens = [list(prompt.input_ids), list(prompt.input_ids)[:-2]]
    two = chain.plans_for(tiny, [prompt, prompt], steer={"scale_pattern": {"factor": 50.0}})
    out = chain.generate(tiny, tokens, two, batch_size=1, max_new_tokens=3, progress=False)
    bridge = chain.generate(tiny, tokens, two, batch_size=1, max_new_tokens=3, progress=False, backend="bridge")
    assert out == bridge


def test_the_pipeline_and_the_cli_read_the_registry(tiny, registered, capsys, monkeypatch):
    pipe = al.PayAttentionPipeline(tiny)
    text = "<!-> hello <-!> world"
    prompt = pipe.prepare(text)
    first = chain.generate(tiny, [prompt], chain.plans_for(tiny, [prompt]), max_new_tokens=1, progress=False)[0][0]
    plain = pipe(text, max_new_tokens=3)[0]["generated_text"]
    banned = pipe(text, max_new_tokens=3, steer={"guide": {}, "ban_token": {"token": first}})[0]
    assert banned["generated_text"] != plain
    with pytest.raises(AttnlensError, match="unknown steering method"):
        pipe(text, max_new_tokens=3, steer={"louder": {}})

    from attnlens import cli
    from attnlens.cli import generate as gen

    monkeypatch.setattr(gen, "load_model_for", lambda args: tiny)
    assert cli.main(["generate", "hello world", "--max-new-tokens", "3", "--ban-token-token", str(first),
                     "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["methods"] == ["ban_token"]  # no GUIDE tag: GUIDE has nothing to steer
    assert cli.main(["generate", "<!-> hello <-!> world", "--max-new-tokens", "3", "--ban-token-token",
                     str(first), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["methods"] == ["guide", "ban_token"]
    assert cli.main(["generate", "hello", "--emphasize", "hello"]) == 2
    assert "--pasta-heads HEAD_CONFIG or --steer scale_pattern" in capsys.readouterr().err


# ----------------------------------------------------------------------------- attribution methods


class SameAsInfluence(al.attribution.RecursionMethod):
    name = "same_as_influence"

    def mix(self, prev, att, x_share):
        return x_share * prev + (1 - x_share) * att


class Indicator(al.attribution.AttributionMethod):
    """Its own driver: the spans' indicator at every layer (no model call)."""

    name = "indicator"

    def run(self, model, row, spans, *, mask, use_values, per_head, convention):
        out = torch.zeros(len(spans), model.cfg.n_layers + 1, row.shape[1])
        for i, (s, e) in enumerate(spans):
            out[i, :, s:e] = 1.0
        return out


class WrongShape(al.attribution.AttributionMethod):
    name = "wrong_shape"

    def run(self, model, row, spans, **kwargs):
        return torch.zeros(3)


@pytest.fixture
def attributions():
    from attnlens import attribution

    made = [SameAsInfluence(), Indicator(), WrongShape()]
    for m in made:
        attribution.register(m)
    yield made
    for m in made:
        attribution.unregister(m.name)


def test_attribution_registry_drives_both_paths(tiny, attributions):
    from attnlens import attribution
    from attnlens.api.pipeline import metric_method
    from attnlens.runtime import fused

    assert attribution.methods()[:3] == ("influence", "rollout", "influence_heads")
    assert attribution.INFLUENCE_METHODS[-3:] == ("same_as_influence", "indicator", "wrong_shape")
    assert metric_method("attention_rollout") == "rollout" and metric_method("indicator") == "indicator"
    with pytest.raises(AttnlensError, match="already registered"):
        attribution.register(Indicator())
    with pytest.raises(AttnlensError, match="needs a run"):
        attribution.register(type("NoDriver", (attribution.AttributionMethod,), {"name": "no_driver"})())
    tokens = list(range(5, 25))
    spans = [(2, 5), (10, 12)]
    methods = ("influence", "same_as_influence", "indicator")
    for enabled in (True, False):  # the fused driver and the hook driver feed the same recursion state
        with fused.fused_attention(enabled):
            trace = al.trace_influence(tiny, tokens, spans, methods=methods)
        assert trace.methods == methods
        assert torch.equal(trace["same_as_influence"], trace["influence"])
        assert trace["indicator"][1, -1, 10:12].tolist() == [1.0, 1.0] and float(trace["indicator"][1, -1, 0]) == 0
    alone = al.influence(tiny, tokens, (2, 5), method="indicator")
    assert alone.shape == (tiny.cfg.n_layers + 1, len(tokens))
    with pytest.raises(AttnlensError, match="'wrong_shape' returned shape"):
        al.influence(tiny, tokens, (2, 5), method="wrong_shape")
    with pytest.raises(AttnlensError, match="unknown influence method 'nope'"):
        al.influence(tiny, tokens, (2, 5), method="nope")


def test_the_influence_command_takes_registered_methods(tiny, attributions, capsys, monkeypatch):
    from attnlens import cli
    from attnlens.cli import influence as command

    monkeypatch.setattr(command, "load_model_for", lambda args: tiny)
    assert cli.main(["influence", "<?-> hello <-?> world", "--method", "indicator", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["methods"] == ["indicator"] and result["spans"][0]["indicator"][0][result["spans"][0]["start"]] == 1
    with pytest.raises(SystemExit):
        cli.main(["influence", "<?-> hello <-?> world", "--method", "louder"])
    assert "invalid choice: 'louder'" in capsys.readouterr().err


def test_the_shared_registry_table():
    """core.registry.Registry: class decorator, aliases, clashes, unknown names, snapshot and restore."""
    from attnlens.core.registry import Registry

    class Base:
        name = ""
        aliases: tuple[str, ...] = ()

    checked = []
    table = Registry("widget", Base, check=checked.append)

    @table.register
    class One(Base):
        name = "one"
        aliases = ("first",)

    assert table.names() == ("one",) and isinstance(table.get("first"), One) and len(checked) == 1
    saved = table.snapshot()

    class Clash(Base):
        name = "two"
        aliases = ("first",)

    with pytest.raises(AttnlensError, match="widget named 'first' is already registered"):
        table.register(Clash())
    assert table.names() == ("one",)
    with pytest.raises(AttnlensError, match="widget's name must be an identifier"):
        table.register(type("Bad", (Base,), {"name": "not ok"})())
    with pytest.raises(AttnlensError, match="register takes a Base, got int"):
        table.register(3)
    table.register(type("Two", (Base,), {"name": "two"})())
    with pytest.raises(AttnlensError, match="unknown widget 'three'; registered: one, two"):
        table.get("three")
    table.restore(saved)
    assert table.names() == ("one",) and "two" not in table
    with pytest.raises(AttnlensError, match="no widget named 'two'"):
        table.unregister("two")
