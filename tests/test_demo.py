"""`attnlens demo` (`make demo`) shows steering at work: on the embedded model, greedy, the unsteered answer keeps
what the model knows and the GUIDE-steered answer follows the emphasised new fact."""

from __future__ import annotations

import pytest

from attnlens import cli
from attnlens.cli.generate import DEMO_CASE, DEMO_DELTA_MID, DEMO_PROMPT, demo_outputs
from attnlens.experiments.metrics import contains_answer


def test_the_demo_case_is_a_counterfact_item_with_its_new_fact_tagged():
    from attnlens.prompts.tags import parse_tags

    parsed = parse_tags(DEMO_PROMPT)
    span, = parsed.spans
    assert parsed.text[span.start:span.end].strip() == DEMO_CASE["new_fact"]
    assert DEMO_CASE["new"] in DEMO_CASE["new_fact"] and DEMO_CASE["old"] in DEMO_CASE["old_fact"]
    assert DEMO_CASE["new"] not in DEMO_CASE["old_fact"]


@pytest.mark.embedded
def test_the_demo_case_still_changes_the_answer(embedded, monkeypatch, capsys):
    out = demo_outputs(embedded, max_new_tokens=16)
    unsteered, steered = out["unsteered"], out["steered"]
    assert unsteered.strip() != steered.strip()
    # the steered model follows the emphasised fact; the unsteered one does not name it
    assert contains_answer(steered, [DEMO_CASE["new"]]) and not contains_answer(steered, [DEMO_CASE["old"]])
    assert not contains_answer(unsteered, [DEMO_CASE["new"]]) and contains_answer(unsteered, [DEMO_CASE["old"]])
    assert out["prompt_format"] == "chat" and [m for m in out["methods"]] == ["guide"]

    # the command prints both answers, the strength, and which object each names
    monkeypatch.setattr(cli, "_load", lambda args: embedded)
    assert cli.main(["demo", "--max-new-tokens", "16"]) == 0
    printed = capsys.readouterr().out
    assert f"delta_mid={DEMO_DELTA_MID}" in printed
    assert unsteered.strip() in printed and steered.strip() in printed
    assert (f"the unsteered answer names {DEMO_CASE['old']}, the steered answer (delta_mid={DEMO_DELTA_MID}) "
            f"names {DEMO_CASE['new']}") in printed


def test_a_bad_demo_prompt_is_refused_before_the_model_loads(monkeypatch, capsys):
    def no_load(args):
        raise AssertionError("the model must not load")

    monkeypatch.setattr(cli, "_load", no_load)
    assert cli.main(["demo", "--prompt", "<!-> unclosed"]) == 2
    assert "--prompt" in capsys.readouterr().err
