"""One steering description, ``{method: settings}``, read the same way by the pipeline, the command line and the
server: its forms, its errors (naming the part that is wrong), and the commands that take ``--steering``."""

from __future__ import annotations

import json

import pytest

import attnlens as al
import attnlens.cli as cli
from attnlens.steering import description


def test_the_forms_of_a_description_agree():
    want = {"guide": {"delta_mid": 2}, "instaboost": {}}
    forms = [want, [{"guide": {"delta_mid": 2}}, "instaboost"], [["guide", {"delta_mid": 2}], ["instaboost", None]],
             json.dumps(want), json.dumps([{"guide": {"delta_mid": 2}}, "instaboost"])]
    for form in forms:
        assert description.parse(form) == want, form
    assert description.parse({"none": {}}) == {}
    assert description.parse("spa") == {"spa": {}}


def test_a_description_file(tmp_path):
    path = tmp_path / "steer.json"
    path.write_text('{"instaboost": {"alpha": 8}}')
    assert description.parse(f"@{path}") == {"instaboost": {"alpha": 8}}
    with pytest.raises(description.DescriptionError, match="cannot read"):
        description.parse(f"@{tmp_path / 'missing.json'}")


@pytest.mark.parametrize("value, where, message", [
    ({"nosuch": {}}, "steer.nosuch", "unknown steering method"),
    ({"guide": {"delta_mid": "strong"}}, "steer.guide", "delta_mid"),
    ({"guide": {"nosuch": 1}}, "steer.guide", "no parameter"),
    ({"guide": 3}, "steer.guide", "must be an object"),
    (["guide", "guide"], "steer.guide", "twice"),
    ([7], "steer[0]", "method name"),
    (7, "steer", "must be an object"),
    ("{not json", "steer", "not a JSON"),
    ("[" * 100_000, "steer", "not a JSON"),
])
def test_a_bad_description_names_its_part(value, where, message):
    with pytest.raises(description.DescriptionError, match=message) as caught:
        description.parse(value)
    assert caught.value.where == where


def test_generate_takes_steering_as_the_pipeline_does(lively, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_load", lambda args: lively)
    prompt = "<!-> Answer in French. <-!> What is the capital of Italy?"
    steer = {"instaboost": {"alpha": 30}}
    assert cli.main(["generate", prompt, "--raw", "--max-new-tokens", "8", "--steering", json.dumps(steer)]) == 0
    printed = capsys.readouterr().out
    pipe = al.pipeline("pay-attention", model=lively, raw=True)
    steered = pipe(prompt, max_new_tokens=8, steer=steer)[0]["generated_text"]
    plain = pipe(prompt, max_new_tokens=8, delta_mid=0.0)[0]["generated_text"]
    assert steered != plain
    assert steered.strip() in printed and plain.strip() not in printed


def test_a_bad_steering_option_is_refused_before_the_model_loads(monkeypatch, capsys):
    monkeypatch.setattr(cli, "_load", lambda args: pytest.fail("the model must not load"))
    assert cli.main(["generate", "<!-> hi <-!>", "--steering", '{"guide": {"delta_mid": "x"}}']) == 2
    assert "delta_mid" in capsys.readouterr().err


def test_an_experiment_runs_the_described_methods(lively, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(cli, "_load", lambda args: lively)
    from attnlens.cli.experiment import _experiment_config

    args = cli.build_parser().parse_args(["experiment", "json", "--out", str(tmp_path), "--steering",
                              '{"instaboost": {"alpha": 8}}', "--set", "instaboost.layers=last"])
    config = _experiment_config(args)
    assert list(config.conditions) == ["none", "instaboost"]
    assert config.steering == {"instaboost": {"alpha": 8, "layers": "last"}}


def test_tune_and_compare_read_steering_as_their_methods_settings(tmp_path):
    from attnlens.cli.tune import _config

    parser = cli.build_parser()
    args = parser.parse_args(["tune", "json", "--method", "pasta", "--out", str(tmp_path), "--steering",
                              '{"pasta": {"head_config": {"0": [1]}, "scale_position": "include"}}',
                              "--set", "pasta.scale_position=exclude"])
    assert _config(args).steering == {"pasta": {"head_config": {"0": [1]}, "scale_position": "exclude"}}
    args = parser.parse_args(["compare", "json", "--out", str(tmp_path), "--steering", '["guide", "spa"]'])
    assert args.methods is None and _config(args).steering == {"guide": {}, "spa": {}}
    bad = parser.parse_args(["compare", "json", "--out", str(tmp_path), "--steering", '{"guide": {"nosuch": 1}}'])
    with pytest.raises(al.AttnlensError, match="nosuch"):
        _config(bad)
