"""Faithfulness metrics: definitions on a hand-built additive scorer, rankings on the tiny model."""

from __future__ import annotations

import json

import pytest
import torch

import attnlens as al
from attnlens.attribution import faithfulness as fm
from attnlens.core.errors import AttnlensError

WEIGHTS = {10: 4.0, 11: 3.0, 12: 2.0, 13: 1.0}


def additive(rows):
    """f(prompt) = the sum of the weights of the tokens still there (the neutral token 0 weighs nothing)."""
    return torch.tensor([sum(WEIGHTS.get(t, 0.0) for t in row) for row in rows], dtype=torch.float64)


@pytest.mark.parametrize("erase", ["replace", "drop"])
def test_metrics_on_a_hand_built_curve(erase):
    prompt = [10, 11, 12, 13]
    orders = {"right": [0, 1, 2, 3], "reversed": [3, 2, 1, 0]}
    scored = []

    def scorer(rows):
        scored.extend(map(tuple, rows))
        return additive(rows)

    full, out = fm.evaluate_orders(scorer, prompt, orders, erase=erase, neutral=0, points=5,
                                   fractions=(0.25, 0.5))
    # each distinct edited prompt is scored once: of the 29 (the prompt, 2 orders x (5 + 5 + 2 + 2) points)
    # 8 differ, since the two orders' prefixes and suffixes coincide
    assert len(scored) == len(set(scored)) == 8
    assert full == 10.0
    right, rev = out["right"], out["reversed"]
    assert right["deletion_curve"] == [10.0, 6.0, 3.0, 1.0, 0.0]
    assert right["insertion_curve"] == [0.0, 4.0, 7.0, 9.0, 10.0]
    assert right["deletion_area"] == pytest.approx(3.75)  # 0.25 * (8 + 4.5 + 2 + 0.5)
    assert right["insertion_area"] == pytest.approx(6.25)
    assert right["comprehensiveness"] == {"0.25": 4.0, "0.5": 7.0}
    assert right["comprehensiveness_aopc"] == pytest.approx(5.5)
    assert right["sufficiency"] == {"0.25": 6.0, "0.5": 3.0}
    assert right["sufficiency_aopc"] == pytest.approx(4.5)
    assert rev["deletion_area"] == pytest.approx(6.25) and rev["insertion_area"] == pytest.approx(3.75)
    # reversed: erasing 13, then 13 and 12, costs 1 and 3; keeping only them leaves 1 and 3 of 10
    assert rev["comprehensiveness_aopc"] == pytest.approx(2.0) and rev["sufficiency_aopc"] == pytest.approx(8.0)


def test_random_mean_and_intervals():
    positions = [0, 1, 2, 3]
    rand = fm.random_orders(positions, 4, seed=1)
    assert all(sorted(o) == positions for o in rand.values()) and len({tuple(o) for o in rand.values()}) > 1
    _, out = fm.evaluate_orders(additive, [10, 11, 12, 13], rand, points=5, fractions=(0.25,))
    mean = fm.mean_metrics(list(out.values()))
    assert mean["deletion_area"] == pytest.approx(sum(r["deletion_area"] for r in out.values()) / 4)
    assert 3.75 <= mean["deletion_area"] <= 6.25
    assert fm.bootstrap_interval([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)
    m, lo, hi = fm.bootstrap_interval([0.0, 1.0, 2.0, 3.0, 10.0])
    assert m == 3.2 and lo < m < hi and lo >= 0.0 and hi <= 10.0
    assert fm.curve_counts(3, 11) == [0, 1, 2, 3]


def test_occlusion_ranking_beats_random_and_reversed(tiny):
    prompt = tiny.tokenizer("Paris is the capital of France. The")["input_ids"]
    t = al.attribution.tokens.make_target(tiny, prompt, " Paris")
    occ = al.attribution.tokens.scores_for(tiny, "occlusion", t)
    positions = fm.erasable_positions(tiny, t.prompt)
    assert positions[0] == 1  # the leading BOS is never erased
    right = fm.ranked(occ.tolist(), positions)
    orders = {"right": right, "reversed": right[::-1], **fm.random_orders(positions, 4)}
    score = lambda rows: al.attribution.tokens.target_logprob(tiny, rows, t.target)  # noqa: E731
    from attnlens.attribution.token_methods import neutral_token

    _, out = fm.evaluate_orders(score, t.prompt, orders, neutral=neutral_token(tiny), points=4, fractions=(0.01,))
    rand = fm.mean_metrics([out[k] for k in out if k.startswith("random")])
    # erasing the token whose occlusion costs most costs most: the right ranking is best at one token
    assert out["right"]["comprehensiveness_aopc"] >= rand["comprehensiveness_aopc"]
    assert rand["comprehensiveness_aopc"] >= out["reversed"]["comprehensiveness_aopc"]
    assert out["right"]["comprehensiveness_aopc"] > out["reversed"]["comprehensiveness_aopc"]
    assert out["right"]["comprehensiveness_aopc"] == pytest.approx(float(occ[positions].max()), abs=1e-5)


def test_faithfulness_record_and_comparison(tiny):
    record = al.faithfulness(tiny, "The cat sat on the mat because it", method="attention", seeds=2, points=3)
    data = json.loads(record.to_json())
    assert data["method"] == "attention" and set(fm.METRICS) <= set(data["metrics"]) and data["seeds"] == 2
    assert record.metrics["deletion_curve"][0] == pytest.approx(record.full_logprob)
    assert record.random["insertion_curve"][-1] == pytest.approx(record.full_logprob)
    comp = al.compare_faithfulness(tiny, ["The cat sat on the mat", "One two three four"],
                                   methods=["attention", "occlusion"], seeds=2, points=3, n_boot=200)
    table = comp.table()
    assert [r["method"] for r in table] == ["attention", "occlusion", "random"]
    for row in table:
        for metric in fm.METRICS:
            mean, lo, hi = row[metric]
            assert lo <= mean <= hi
    diff = table[1]["comprehensiveness_aopc_vs_random"][0]
    per = [p["metrics"]["occlusion"]["comprehensiveness_aopc"] - p["metrics"]["random"]["comprehensiveness_aopc"]
           for p in comp.per_prompt]
    assert diff == pytest.approx(sum(per) / 2)
    assert "random" in comp.text() and json.loads(comp.to_json())["methods"][2]["method"] == "random"


def test_bad_inputs(tiny):
    with pytest.raises(AttnlensError, match="erase"):
        al.faithfulness(tiny, "One two three", method="attention", erase="blank")
    with pytest.raises(AttnlensError, match="seeds"):
        al.faithfulness(tiny, "One two three", method="attention", seeds=0)
    with pytest.raises(AttnlensError, match="scores has"):
        al.faithfulness(tiny, "One two three", method="mine", scores=[1.0])
    with pytest.raises(AttnlensError, match="prompts"):
        al.compare_faithfulness(tiny, "One two three")
    with pytest.raises(AttnlensError, match="unknown"):
        al.compare_faithfulness(tiny, ["One two"], methods=["nope"])


def test_cli_attribute_and_faithfulness(tiny, tmp_path, monkeypatch, capsys):
    from attnlens import cli

    monkeypatch.setattr(cli, "_load", lambda args: tiny)
    page = tmp_path / "view.html"
    assert cli.main(["attribute", "The cat sat on the mat", "--method", "grad_x_input", "--json",
                     "--html", str(page)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["method"] == "grad_x_input" and len(data["scores"]) == len(data["tokens"])
    assert "attnlens-attribution" in page.read_text()
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("The cat sat on the mat\n\nOne two three four\n")
    assert cli.main(["faithfulness", "--input", str(prompts), "--methods", "attention,occlusion", "--seeds", "2",
                     "--points", "3", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["prompts"] == 2 and [m["method"] for m in data["methods"]] == ["attention", "occlusion", "random"]
    assert len(data["methods"][0]["deletion_area"]) == 3
    assert cli.main(["faithfulness", "One two", "--methods", "nope"]) == 2
    assert "unknown nope" in capsys.readouterr().err
    assert cli.main(["faithfulness"]) == 2
    assert "give one prompt or --input" in capsys.readouterr().err
