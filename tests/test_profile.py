"""Head profiling: every shortcut gives the scores of steering each head alone, results, examples, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from attnlens import AttnlensError
from attnlens.api.pasta import PASTA
from attnlens.steering.pasta import load_head_config
from attnlens.api.profile import (
    HeadScore,
    ProfileExample,
    json_format_examples,
    load_examples,
    mean_logprob,
    profile_heads,
)
from conftest import make_tiny_bridge

EXAMPLES = [
    {"prompt": "Tom is a pilot. He studied at MIT. Answer his job as json.", "emphasize": "Answer his job as json",
     "target": '{"job": "pilot"}'},
    # the emphasised span is not the last part of the prompt, and there are two sections
    {"prompt": "Reply in French. Mary is a doctor in Paris. Keep it short.",
     "emphasize": ["Reply in French", "Keep it short"], "target": "Marie est médecin."},
]


@pytest.fixture(scope="module")
def tiny4(tokenizer):
    """A tiny bridge whose heads differ enough that steering each one changes the scores."""
    return make_tiny_bridge(tokenizer, n_layers=3, n_heads=4, n_kv_heads=2, d_model=32, seed=7)


def _direct_scores(model, examples, head, *, alpha, scale_position, chat=False, scorer=mean_logprob):
    """The score of each example with one head steered (or none), by a plain forward of the whole sequence."""
    out = []
    for ex in examples:
        ex = ProfileExample.from_dict(ex) if isinstance(ex, dict) else ex
        config = {head[0]: [head[1]]} if head else [0]
        steerer = PASTA(model, config, alpha=alpha if head else 1.0, scale_position=scale_position)
        located = steerer.locate(ex.prompt, list(ex.emphasize), chat=chat)
        target = model.tokenizer(ex.target, add_special_tokens=False)["input_ids"]
        tokens = torch.tensor([located.input_ids + target])
        with torch.no_grad(), steerer.steer(list(located.spans), seq_len=len(located)):
            logits = model(tokens)[:, len(located) - 1 : -1]
        out.append(float(scorer(logits, torch.tensor(target))[0]))
    return np.array(out)


@pytest.mark.parametrize("scale_position, alpha", [("exclude", 0.01), ("include", 0.2)])
def test_scores_equal_steering_each_head_alone(tiny4, scale_position, alpha):
    result = profile_heads(tiny4, EXAMPLES, alpha=alpha, scale_position=scale_position, progress=False)
    assert len(result) == 12 and result.n_examples == 2
    baseline = _direct_scores(tiny4, EXAMPLES, None, alpha=alpha, scale_position=scale_position)
    assert np.allclose(result.baseline_per_example, baseline, atol=1e-4)
    for layer in range(3):
        for head in range(4):
            direct = _direct_scores(tiny4, EXAMPLES, (layer, head), alpha=alpha, scale_position=scale_position)
            assert np.allclose(result.per_example[layer, head], direct, atol=1e-4), (layer, head)
    # the heads matter: steering changes the scores, differently per head
    assert np.abs(result.gains).max() > 1e-3
    assert np.unique(np.round(result.scores, 5)).size > 6


def test_shortcuts_do_not_change_the_scores(tiny4):
    results = [
        profile_heads(tiny4, EXAMPLES, share_prefix=p, skip_layers=s, batch_size=b, progress=False)
        for p, s, b in [(True, True, None), (False, False, 1), (True, False, 5), (False, True, 3)]
    ]
    for other in results[1:]:
        assert np.allclose(results[0].per_example, other.per_example, atol=1e-4)
        assert np.allclose(results[0].baseline_per_example, other.baseline_per_example, atol=1e-4)


def test_chat_examples_and_custom_scorer(tiny4):
    chat = [{"prompt": [{"role": "system", "content": "Be brief."},
                        {"role": "user", "content": "Name a color. Answer in one word."}],
             "emphasize": "Answer in one word", "target": "Blue"}]
    calls = []

    def last_logit(logits, target):
        calls.append(tuple(logits.shape))
        return logits[:, -1, target[-1]]

    result = profile_heads(tiny4, chat, scorer=last_logit, heads={2: [1, 3]}, progress=False)
    assert result.scorer == "last_logit"
    assert len(result) == 2 and np.isnan(result.scores[0]).all()
    n_target = len(tiny4.tokenizer("Blue", add_special_tokens=False)["input_ids"])
    assert all(shape[1:] == (n_target, len(tiny4.tokenizer)) for shape in calls)
    direct = _direct_scores(tiny4, chat, (2, 3), alpha=0.01, scale_position="exclude",
                            scorer=lambda lg, t: lg[:, -1, t[-1]])
    assert np.allclose(result.scores[2, 3], direct, atol=1e-4)
    # string prompts through the chat template
    as_chat = profile_heads(tiny4, [{"prompt": "Name a color. Answer in one word.", "emphasize": "one word",
                                     "target": "Blue"}], chat=True, heads=[0], progress=False,
                            scorer="token_accuracy")
    assert as_chat.scorer == "token_accuracy" and 0 <= np.nanmax(as_chat.scores) <= 1


def test_ranking_top_and_json(tmp_path, tiny4):
    result = profile_heads(tiny4, EXAMPLES, progress=False)
    ranking = result.ranking()
    assert [s.score for s in ranking] == sorted((s.score for s in ranking), reverse=True)
    assert sorted(ranking, reverse=True) == ranking and isinstance(ranking[0], HeadScore)
    best = ranking[0]
    assert best.score == pytest.approx(np.nanmax(result.scores))
    assert best.gain == pytest.approx(best.score - result.baseline)
    top3 = result.top(3)
    assert sum(len(h) for h in top3.values()) == 3
    assert best.head in top3[best.layer]
    assert {(l, h) for l, hs in top3.items() for h in hs} == {(s.layer, s.head) for s in ranking[:3]}
    helpful = result.top(12, only_helpful=True)
    assert sum(len(h) for h in helpful.values()) == int((result.gains > 0).sum())
    path = result.save(tmp_path / "heads.json", 3)
    assert load_head_config(path) == {str(l): hs for l, hs in top3.items()}
    PASTA(tiny4, path)  # a valid head config for the model
    assert result.as_dict()["ranking"][0] == {"layer": best.layer, "head": best.head, "score": best.score,
                                              "gain": best.gain}
    with pytest.raises(AttnlensError, match="positive integer"):
        result.top(0)


def test_examples_file_and_errors(tmp_path, tiny4):
    path = tmp_path / "examples.jsonl"
    path.write_text("\n".join(json.dumps(e) for e in EXAMPLES) + "\n\n")
    examples = load_examples(path)
    assert examples[1].emphasize == ("Reply in French", "Keep it short")
    from_file = profile_heads(tiny4, str(path), heads={1: [0]}, progress=False)
    from_dicts = profile_heads(tiny4, EXAMPLES, heads={1: [0]}, progress=False)
    assert np.allclose(from_file.per_example, from_dicts.per_example, equal_nan=True)

    (tmp_path / "bad.jsonl").write_text(json.dumps(EXAMPLES[0]) + '\n{"prompt": "x", "target": "y"}\n')
    with pytest.raises(AttnlensError, match="bad.jsonl, line 2: missing field.*emphasize"):
        load_examples(tmp_path / "bad.jsonl")
    (tmp_path / "broken.jsonl").write_text("{not json\n")
    with pytest.raises(AttnlensError, match="line 1: not valid JSON"):
        load_examples(tmp_path / "broken.jsonl")
    with pytest.raises(AttnlensError, match="example 0: substring 'absent' does not occur"):
        profile_heads(tiny4, [{**EXAMPLES[0], "emphasize": "absent"}], progress=False)
    with pytest.raises(AttnlensError, match="unknown scorer"):
        profile_heads(tiny4, EXAMPLES, scorer="bleu", progress=False)
    with pytest.raises(AttnlensError, match=r"returned shape \(\); expected"):
        profile_heads(tiny4, EXAMPLES, scorer=lambda lg, t: lg.sum(), progress=False)
    with pytest.raises(AttnlensError, match="alpha"):
        profile_heads(tiny4, EXAMPLES, alpha=2.0, progress=False)
    with pytest.raises(AttnlensError, match="out of range"):
        profile_heads(tiny4, EXAMPLES, heads={5: [0]}, progress=False)
    with pytest.raises(AttnlensError, match="'target' must be a non-empty string"):
        profile_heads(tiny4, [{**EXAMPLES[0], "target": ""}], progress=False)


def test_builtin_examples():
    examples = json_format_examples(16)
    assert len(examples) == 16 and len({e.prompt for e in examples}) == 16
    for ex in examples:
        assert ex.emphasize[0] in ex.prompt
        assert json.loads(ex.target)["occupation"] in ex.prompt


@pytest.mark.embedded
def test_cli_profile_on_the_embedded_model(tmp_path, embedded, capsys, monkeypatch):
    from attnlens import cli

    data = tmp_path / "examples.jsonl"
    data.write_text("\n".join(json.dumps(e.as_dict()) for e in json_format_examples(2)) + "\n")
    monkeypatch.setattr(cli, "_load", lambda args: embedded)
    out, scores = tmp_path / "heads.json", tmp_path / "scores.json"
    code = cli.main(["pasta", "profile", "--data", str(data), "--top-k", "4", "--out", str(out),
                     "--layers", "0,29", "--scores", str(scores)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "profiled 18 heads on 2 example(s)" in printed and "unsteered baseline" in printed
    config = load_head_config(out)
    assert sum(len(h) for h in config.values()) == 4 and set(config) <= {"0", "29"}
    ranking = json.loads(scores.read_text())["ranking"]
    assert len(ranking) == 18
    assert {(str(r["layer"]), r["head"]) for r in ranking[:4]} == {(l, h) for l, hs in config.items() for h in hs}
    # the written heads steer generation through the generate command
    code = cli.main(["generate", "Tom is a pilot. Answer his job as json.", "--pasta-heads", str(out),
                     "--emphasize", "Answer his job as json", "--max-new-tokens", "4", "--json"])
    assert code == 0 and json.loads(capsys.readouterr().out)["pasta_heads"] == {
        k: sorted(v) for k, v in sorted(config.items(), key=lambda kv: int(kv[0]))}
    assert cli.main(["pasta", "profile", "--data", str(tmp_path / "none.jsonl"), "--out", str(out)]) == 2
    assert "cannot read examples" in capsys.readouterr().err
