"""ContextCite: the Lasso surrogate over random ablations, on the tiny random models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import attnlens as al
from attnlens import attribution
from attnlens.attribution import contextcite, tokens
from attnlens.attribution.contextcite import ContextCiteMethod, lasso
from attnlens.core.errors import AttnlensError

PROMPT = "Paris is the capital of France. The"


@pytest.fixture(scope="module")
def target(tiny):
    return tokens.make_target(tiny, PROMPT, " Paris")


def test_registered():
    assert "contextcite" in attribution.methods()
    assert attribution.aliases()["context_cite"] == "contextcite"
    assert "contextcite" not in attribution.span_methods()  # it scores tokens only


def test_one_score_per_token_and_deterministic(tiny, target):
    a = tokens.scores_for(tiny, "contextcite", target)
    b = tokens.scores_for(tiny, "contextcite", target)
    assert a.shape == (target.n_prompt,) and a.dtype == torch.float64
    assert torch.isfinite(a).all()
    assert torch.equal(a, b)
    other = ContextCiteMethod(seed=1).token_scores(tiny, target)
    assert not torch.equal(a, other)  # the seed draws other masks


def test_batched_padded_rows_match_one_by_one(tiny, target):
    """The ablated rows, right-padded in shared passes, score as each row alone does."""
    m = ContextCiteMethod()
    rows = [target.prompt, target.prompt[:3], target.prompt[1:], target.prompt[::2]]
    got = m.ablation_logprobs(tiny, target, rows, batch=4)
    alone = torch.cat([tokens.target_logprob(tiny, [r], target.target) for r in rows])
    assert torch.allclose(got, alone, atol=1e-5)


def test_lasso_matches_scikit_learn():
    sklearn = pytest.importorskip("sklearn")
    from sklearn.linear_model import Lasso
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(3)
    x = (rng.random((64, 12)) < 0.5).astype(float)
    y = x @ rng.normal(size=12) + 0.3 * rng.normal(size=64)
    for alpha in (0.01, 0.1):
        scaler, model = StandardScaler(), Lasso(alpha=alpha, tol=1e-10, max_iter=100000)
        make_pipeline(scaler, model).fit(x, y)
        expected = model.coef_ / scaler.scale_
        weight, bias = lasso(x, y, alpha, tol=1e-12, max_iter=100000)
        assert np.allclose(weight, expected, atol=1e-6), (weight, expected)
        assert abs(bias - (model.intercept_ - (scaler.mean_ / scaler.scale_) @ model.coef_)) < 1e-6
    assert sklearn.__version__


class Planted(ContextCiteMethod):
    """The target is a known linear function of which prompt tokens an ablation kept (no model runs)."""

    name = "contextcite_planted"
    output = "log_prob"

    def __init__(self, weights: dict[int, float], prompt: list[int], **kwargs):
        super().__init__(**kwargs)
        self.weights, self.prompt = weights, prompt

    def ablation_logprobs(self, model, target, rows, *, batch=0):
        # each prompt token id occurs once, so a row's ids say which positions it kept
        pos = {t: i for i, t in enumerate(self.prompt)}
        out = [-5.0 + sum(self.weights.get(pos[t], 0.0) for t in row if t in pos) for row in rows]
        return torch.tensor(out, dtype=torch.float64)


def test_recovers_a_planted_linear_dependence(tiny):
    prompt = list(range(1000, 1020))  # 20 distinct tokens, no BOS
    t = tokens.Target(prompt, [7])
    planted = {3: 2.0, 11: 1.5, 17: -1.0, 6: 0.8}
    m = Planted(planted, prompt, ablations=128)
    scores = m.token_scores(tiny, t)
    assert scores.shape == (20,)
    top = [int(i) for i in torch.argsort(scores, descending=True)[:3]]
    assert top == [3, 11, 6]
    assert int(torch.argmin(scores)) == 17
    for i, w in planted.items():  # the Lasso shrinks each weight by about alpha's share
        assert abs(float(scores[i]) - w) < 0.1, (i, float(scores[i]), w)
    others = [float(scores[i]) for i in range(20) if i not in planted]
    assert max(abs(s) for s in others) < 0.05
    # with "replace" (positions kept) the same dependence is found
    replaced = Planted(planted, prompt, ablations=128, erase="replace").token_scores(tiny, t)
    assert [int(i) for i in torch.argsort(replaced, descending=True)[:3]] == [3, 11, 6]


def test_sentence_sources_share_a_score(tiny, tokenizer):
    text = "Paris is big. Rome is old. The"
    t = tokens.make_target(tiny, text, " city")
    m = ContextCiteMethod(sources="sentence")
    groups, start = m.source_positions(tiny, t, "sentence")
    assert groups == contextcite.sentence_sources(tiny, t.prompt, start)
    assert len(groups) == 3 and sum(len(g) for g in groups) == t.n_prompt - start
    scores = m.token_scores(tiny, t)
    assert all(float(scores[i]) == 0.0 for i in range(start))  # a leading BOS is never a source
    for g in groups:
        assert len({float(scores[i]) for i in g}) == 1
    assert len({float(scores[g[0]]) for g in groups}) > 1


def test_through_attribute_and_faithfulness(tiny):
    result = al.attribute(tiny, PROMPT, method="contextcite")
    assert result.method == "contextcite" and len(result.scores) == len(result.ids)
    same = al.attribute(tiny, PROMPT, method="context_cite")
    assert same.scores == result.scores
    entry = al.evaluate_prompt(tiny, PROMPT, ["contextcite"], seeds=2, points=3) if hasattr(
        al, "evaluate_prompt") else attribution.faithfulness.evaluate_prompt(tiny, PROMPT, ["contextcite"],
                                                                             seeds=2, points=3)
    assert set(entry["metrics"]) == {"contextcite", "random"}
    comparison = al.compare_faithfulness(tiny, [PROMPT, "Two plus two equals"], methods=["contextcite", "occlusion"],
                                         seeds=2, points=3, n_boot=50)
    assert {row["method"] for row in comparison.table()} >= {"contextcite", "occlusion"}


def test_bad_settings_are_named(tiny, target):
    for bad in ({"ablations": 1}, {"keep": 1.0}, {"keep": 0}, {"alpha": -1}, {"seed": 0.5},
                {"sources": "word"}, {"erase": "mask"}, {"output": "prob"}, {"batch": 0}):
        key = next(iter(bad))
        with pytest.raises(AttnlensError, match=key):
            ContextCiteMethod(**bad)
        with pytest.raises(AttnlensError, match=key):
            ContextCiteMethod().token_scores(tiny, target, **bad)
    with pytest.raises(AttnlensError, match="ablation"):
        ContextCiteMethod(ablation=8)


def test_window_is_checked_before_any_pass(tiny):
    too_long = list(range(10, 10 + int(tiny.cfg.n_ctx) + 5))
    with pytest.raises(AttnlensError):
        al.attribute(tiny, too_long, method="contextcite")
