"""lm-eval as a door: the ``attnlens`` backend scores lm-eval tasks steered and unsteered.

The tasks are local (``tests/data/lm_eval/*.yaml`` over ``facts.jsonl``): two facts whose new
value is tagged (``<!!-> ... <-!!>``) and one untagged context. They run through lm-eval's
Python API (``simple_evaluate``) and its command line (``python -m attnlens.lm_eval``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is part of the test set (requirements.lock)")

from attnlens.api.lm_eval_backend import LmEvalArgsError, backend_class, register  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TASKS = ROOT / "tests" / "data" / "lm_eval"
FACTS = [json.loads(line) for line in (TASKS / "facts.jsonl").read_text(encoding="utf-8").splitlines()]
STEER = {"guide": {"delta_mid": 3}}


def own_logprob(model, clean_context: str, focus: str | None, continuation: str, delta: float) -> tuple[float, bool]:
    """The continuation's summed log-probability after ``clean_context`` (no tags) with GUIDE's bias ``delta`` on
    the tokens of ``focus``: spans located as substrings, the bias installed by ``al.guide``, scored by hand."""
    import attnlens as al
    from attnlens.prompts.prompt import locate_substrings

    tok = model.tokenizer
    context_ids = tok(clean_context)["input_ids"]
    ids = tok(clean_context + continuation)["input_ids"]
    assert ids[: len(context_ids)] == context_ids
    spans = [] if focus is None else [tuple(s)[:2] for s in locate_substrings(tok, clean_context, [focus]).spans]
    with ExitStack() as stack, torch.no_grad():
        if spans and delta:
            stack.enter_context(al.guide(model, spans, delta=delta))
        logits = model(torch.tensor([ids]))[0].float()
    logp = logits.log_softmax(-1)
    n = len(context_ids)
    target = torch.tensor(ids[n:])
    rows = logp[n - 1 : len(ids) - 1]
    return float(rows.gather(-1, target[:, None]).sum()), bool((rows.argmax(-1) == target).all())


# ----------------------------------------------------------------------------- registration and model_args


def test_registered_under_its_name_and_entry_point():
    from importlib.metadata import entry_points

    from lm_eval.api.registry import get_model

    cls = register()
    assert get_model("attnlens") is cls
    assert issubclass(cls, lm_eval.api.model.LM)
    points = [ep for ep in entry_points(group="lm_eval.models") if ep.name == "attnlens"]
    assert points and points[0].load() is cls  # what a release of lm-eval that reads entry points finds


@pytest.mark.parametrize("args, argument, words", [
    ({"steer": {"nosuch": {}}}, "steer.nosuch", "unknown steering method 'nosuch'"),
    ({"steer": '{"guide": {"delta_mid": 2}'}, "steer", "not a JSON steering description"),
    ({"steer": {"guide": {"delta_mid": "strong"}}}, "steer.guide", "delta_mid must be a number"),
    ({"steer": {"pasta": {"head_config": {"0": [0]}}}}, "emphasize", "give the substrings in emphasize"),
    ({"emphasize": "Rome"}, "emphasize", "needs a steering method"),
    ({"pretrained": "gpt2"}, "pretrained", "unknown argument(s) pretrained"),
    ({"batch_size": 0}, "batch_size", "positive integer"),
])
def test_bad_model_args_name_the_argument(tiny, args, argument, words):
    with pytest.raises(LmEvalArgsError) as info:
        backend_class()(model=tiny, **args)
    assert info.value.argument == argument
    assert str(info.value).startswith(f"lm-eval model_args {argument}: ")
    assert words in str(info.value)


def _cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, "-m", "attnlens.lm_eval", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=timeout)


@pytest.mark.parametrize("model_args, argument", [
    ("steer={bad json", "steer"),
    ('steer={"nosuch": {"x": 1}}', "steer.nosuch"),
])
def test_cli_bad_model_args_are_one_line(model_args, argument):
    done = _cli("--model", "attnlens", "--model_args", model_args, "--tasks", str(TASKS / "attnlens_facts.yaml"))
    assert done.returncode == 2, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"attnlens: error: lm-eval model_args {argument}: "), done.stderr[-2000:]
    assert "Traceback" not in done.stderr


# ----------------------------------------------------------------------------- rolling windows


def test_rolling_windows_are_lm_evals(tiny):
    """Long text is cut into lm-eval's windows (each token scored once, with the most context the window
    allows), and a tag steers the windows it falls in, at its positions there."""
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    lm = backend_class()(model=tiny, steer="none")
    backend = lm.backend
    backend.window = 8
    text = "one two three four five six seven eight nine ten eleven twelve <!-> thirteen <-!> fourteen"
    rows = backend.rolling(text, 0)
    ids = list(backend.prompt(text, "x").input_ids)
    prefix = backend._prefix()
    expected = [make_disjoint_window(w) for w in get_rolling_token_windows(ids, prefix, 8, 1)]
    # lm-eval scores a window as context + prediction, the last token read only (HFLM's rows)
    assert [(r.tokens[: r.first], r.tokens[r.first:]) for r in rows] == [(list(c), list(p)) for c, p in expected]
    assert all(len(r.tokens) - 1 <= 8 for r in rows)
    tagged = [r for r in rows if r.steer.guide_spans()]
    assert tagged, "the tag's window keeps its span"
    for r in tagged:
        for s in r.steer.guide_spans():
            assert backend.tokenizer.decode(r.tokens[s.start : s.end]).strip() == "thirteen"


# ----------------------------------------------------------------------------- the embedded model


@pytest.fixture(scope="module")
def runs(embedded):
    """Each task scored unsteered (steer=none) and with GUIDE at delta 3, through simple_evaluate."""
    from lm_eval.tasks import TaskManager

    cwd = os.getcwd()
    os.chdir(ROOT)  # the task files name their data relative to the repository
    try:
        manager = TaskManager(include_path=str(TASKS), include_defaults=False)
        out = {}
        for name, steer in (("none", "none"), ("guide", STEER)):
            lm = backend_class()(model=embedded, steer=steer)
            out[name] = lm_eval.simple_evaluate(model=lm, tasks=["attnlens_facts", "attnlens_gen", "attnlens_text"],
                                                task_manager=manager, log_samples=True)
    finally:
        os.chdir(cwd)
    return out


def _samples(result, task):
    return {s["doc"]["id"]: s for s in result["samples"][task]}


@pytest.mark.embedded
def test_steering_changes_the_tagged_scores_only(runs):
    for task in ("attnlens_facts", "attnlens_text"):
        plain, steered = _samples(runs["none"], task), _samples(runs["guide"], task)
        for doc in ("rome", "london"):  # a tagged context: the steered pass scores differently
            assert plain[doc]["resps"] != steered[doc]["resps"], (task, doc)
        assert plain["untagged"]["resps"] == steered["untagged"]["resps"], task  # nothing to steer: the same
    # GUIDE on the new fact makes the model prefer it: accuracy rises from 1/3 to 3/3
    assert runs["none"]["results"]["attnlens_facts"]["acc,none"] == pytest.approx(1 / 3)
    assert runs["guide"]["results"]["attnlens_facts"]["acc,none"] == pytest.approx(1.0)
    assert (runs["guide"]["results"]["attnlens_text"]["word_perplexity,none"]
            != runs["none"]["results"]["attnlens_text"]["word_perplexity,none"])


@pytest.mark.embedded
@pytest.mark.parametrize("run, delta", [("guide", 3.0), ("none", 0.0)])
def test_loglikelihood_is_attnlens_own_logprob(embedded, runs, run, delta):
    """Each scored choice equals the log-probability computed by hand under the same GUIDE bias."""
    samples = _samples(runs[run], "attnlens_facts")
    for fact in FACTS:
        clean = fact["context"].replace("<!!-> ", "").replace(" <-!!>", "") + "\nAnswer:"
        focus = fact["context"].split("<!!-> ")[1].split(" <-!!>")[0] if "<!!->" in fact["context"] else None
        for choice, resp in zip(fact["choices"], samples[fact["id"]]["resps"]):
            value, greedy = resp[0]
            own, own_greedy = own_logprob(embedded, clean, focus, choice, delta)
            assert value == pytest.approx(own, abs=1e-3), (fact["id"], choice)
            assert greedy == own_greedy


@pytest.mark.embedded
def test_generation_is_the_pipelines(embedded, runs):
    """generate_until gives what attnlens' pipeline generates for the same raw prompt and steering, cut at the
    first stop string; steering changes the answer to a tagged fact."""
    import attnlens as al

    pipe = al.pipeline("pay-attention", model=embedded)
    for run, steer in (("guide", STEER), ("none", {})):
        samples = _samples(runs[run], "attnlens_gen")
        for fact in FACTS:
            text = pipe(fact["context"] + "\nAnswer: the city of", raw=True, steer=steer, max_new_tokens=6,
                        do_sample=False)[0]["generated_text"]
            for stop in ("\n", "."):
                text = text.split(stop)[0]
            assert samples[fact["id"]]["resps"][0][0] == text, (run, fact["id"])
    assert (_samples(runs["guide"], "attnlens_gen")["rome"]["resps"]
            != _samples(runs["none"], "attnlens_gen")["rome"]["resps"])


@pytest.mark.embedded
def test_cli_runs_a_task_steered(runs, tmp_path):
    """``python -m attnlens.lm_eval --model attnlens --model_args steer=...`` scores as the Python API does."""
    done = _cli("--model", "attnlens", "--model_args", 'steer={"guide": {"delta_mid": 3}}',
                "--tasks", str(TASKS / "attnlens_facts.yaml"), "--output_path", str(tmp_path), "--log_samples")
    assert done.returncode == 0, done.stderr[-3000:]
    found = sorted(tmp_path.rglob("samples_attnlens_facts_*.jsonl"))
    assert found, list(tmp_path.rglob("*"))
    rows = {json.loads(line)["doc"]["id"]: json.loads(line) for line in found[0].read_text().splitlines()}
    api = _samples(runs["guide"], "attnlens_facts")
    for doc, row in rows.items():
        got = [r[0][0] if isinstance(r[0], list) else r[0] for r in row["resps"]]
        want = [r[0][0] for r in api[doc]["resps"]]
        assert [float(g) for g in got] == pytest.approx(want, abs=1e-4), doc
    results = json.loads(sorted(tmp_path.rglob("results_*.json"))[0].read_text())
    assert results["results"]["attnlens_facts"]["acc,none"] == pytest.approx(1.0)


def test_spa_scores_with_its_mixed_logits(tiny):
    """SPA steers decoding by mixing two passes' logits; a scored continuation is read from the same mix."""
    from attnlens.steering.spa_method import masked_rows, mix

    lm = backend_class()(model=tiny, steer={"spa": {"omega": 3.0}})
    context, continuation = "Note: <!!-> answer in French <-!!> What is the capital", " of France"
    (value, _), = lm.backend.loglikelihood([(context, continuation)])
    row = lm.backend.pair(context, continuation, 0)
    spans = [[(s.start, s.end) for s in row.steer.guide_spans()]]
    tokens = torch.tensor([row.tokens[:-1]])
    with torch.no_grad():
        plain, masked = tiny(tokens).float(), tiny(masked_rows(tokens, spans, tiny.tokenizer.pad_token_id)).float()
    logp = mix(plain, masked, 3.0).log_softmax(-1)[0, row.first - 1:]
    own = float(logp.gather(-1, torch.tensor(row.tokens[row.first:])[:, None]).sum())
    assert value == pytest.approx(own, abs=1e-4)
    (unsteered, _), = backend_class()(model=tiny, steer="none").backend.loglikelihood([(context, continuation)])
    assert abs(value - unsteered) > 1e-3
