"""attnlens' gradient attributions beside captum's on the same prompt and the same function.

Both explain the same function of the prompt's input embeddings (the target's summed
log-probability, read from the model with the embeddings put in at ``hook_embed``).
captum's ``InputXGradient`` summed over the embedding dimension is ``grad_x_input``;
its ``IntegratedGradients`` with ``method="riemann_middle"``, 32 steps and the
neutral-token embeddings as the baseline is ``integrated_gradients`` (attnlens'
stated convention: midpoint rule, neutral-token baseline).
"""

from __future__ import annotations

import pytest
import torch
from captum import attr as captum_attr  # in the test extra and the lock: a missing captum is a failure

import attnlens as al
from attnlens.attribution.token_methods import neutral_token
from attnlens.attribution.tokens import make_target


PROMPT = "The capital of France is Paris, and the capital of Italy is"


def _embeddings(model, ids):
    seen = {}

    def keep(emb, hook):
        seen["emb"] = emb.detach().clone()

    with torch.no_grad():
        model.run_with_hooks(torch.tensor([ids]), fwd_hooks=[("hook_embed", keep)], return_type=None)
    return seen["emb"][0]


def _forward(model, target):
    """The target's summed log-probability as a function of the prompt's embeddings ``[batch, n, d]``."""
    row = target.row
    n, k = target.n_prompt, len(target.target)
    rest = _embeddings(model, row[0].tolist())[n:]

    def f(prompt_emb):
        batch = prompt_emb.shape[0]
        full = torch.cat([prompt_emb, rest.expand(batch, -1, -1)], dim=1)
        logits = model.run_with_hooks(row.expand(batch, -1), fwd_hooks=[("hook_embed", lambda e, hook: full)],
                                      return_type="logits")
        logp = torch.log_softmax(logits[:, n - 1:n - 1 + k].double(), dim=-1)
        return logp[:, torch.arange(k), torch.tensor(target.target)].sum(-1)

    return f


@pytest.fixture(params=[None, " Rome and Paris"], ids=["next-token", "continuation"])
def case(request, tiny):
    target = make_target(tiny, PROMPT, request.param)
    return tiny, target, _forward(tiny, target), _embeddings(tiny, target.prompt)


def test_grad_x_input_is_captums_input_x_gradient(case):
    model, target, f, x = case
    ours = al.attribution.get("grad_x_input").token_scores(model, target)
    theirs = captum_attr.InputXGradient(f).attribute(x[None].clone()).sum(-1)[0]
    assert ours.shape == theirs.shape == (target.n_prompt,)
    torch.testing.assert_close(ours.double(), theirs.double(), rtol=1e-4, atol=1e-6)


def test_integrated_gradients_is_captums_midpoint_rule(case):
    model, target, f, x = case
    baseline = _embeddings(model, [neutral_token(model)] * target.n_prompt)
    ours = al.attribution.get("integrated_gradients").token_scores(model, target)
    ig = captum_attr.IntegratedGradients(f)
    theirs, delta = ig.attribute(x[None].clone(), baselines=baseline[None], n_steps=32, method="riemann_middle",
                                 internal_batch_size=16, return_convergence_delta=True)
    theirs = theirs.sum(-1)[0].double()
    torch.testing.assert_close(ours.double(), theirs, rtol=1e-4, atol=1e-6)
    # both sum to f(x) - f(baseline) up to the same quadrature error
    with torch.no_grad():
        gap = float(f(x[None]) - f(baseline[None]))
    assert abs(float(ours.sum()) - gap) == pytest.approx(abs(float(delta)), rel=1e-3, abs=1e-6)
    # the check tells the conventions apart: the left Riemann rule is not what attnlens computes
    left = ig.attribute(x[None].clone(), baselines=baseline[None], n_steps=32, method="riemann_left",
                        internal_batch_size=16).sum(-1)[0].double()
    assert not torch.allclose(ours.double(), left, rtol=1e-4, atol=1e-6)


@pytest.mark.embedded
def test_both_on_the_embedded_model(embedded):
    target = make_target(embedded, "The capital of France is")
    f, x = _forward(embedded, target), _embeddings(embedded, target.prompt)
    baseline = _embeddings(embedded, [neutral_token(embedded)] * target.n_prompt)
    ours = al.attribution.get("grad_x_input").token_scores(embedded, target)
    theirs = captum_attr.InputXGradient(f).attribute(x[None].clone()).sum(-1)[0]
    torch.testing.assert_close(ours.double(), theirs.double(), rtol=1e-3, atol=1e-5)
    ours = al.attribution.get("integrated_gradients").token_scores(embedded, target)
    theirs = captum_attr.IntegratedGradients(f).attribute(x[None].clone(), baselines=baseline[None], n_steps=32,
                                                          method="riemann_middle", internal_batch_size=16)
    torch.testing.assert_close(ours.double(), theirs.sum(-1)[0].double(), rtol=1e-3, atol=1e-5)
