"""Experiment profiles: how the experiments, ``tune`` and ``compare`` use a steering method, owned by the
experiments layer. A plugin method joins default experiments and gets a grid only through its profile (or the
class attributes plugins set before profiles); a method without one gets the safe defaults; a broken profile
is an error naming it."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
import torch

from attnlens import steering
from attnlens.core import plugins
from attnlens.core.errors import AttnlensError, ExperimentError, PluginError
from attnlens.experiments.compare import compare_methods
from attnlens.experiments.config import Condition, ExperimentConfig, condition_methods, resolve_conditions
from attnlens.experiments.profiles import Profile, compared_methods, profile, profiles, register_profile
from attnlens.experiments.study import Item, Score, Segments, Study, tag_focus


class _Digit(steering.SteeringMethod):
    """A logits edit: the model writes the digit ``level``, every token (no profile of its own)."""

    name = "digit_writer"
    spans = "guide"
    edits = "logits"
    params = (steering.Param("level", int, 3, "the digit written"),)

    def steering(self, model, prompts, settings):
        from attnlens.steering.edits import RunEdit

        token = model.tokenizer.encode(str(settings["level"]), add_special_tokens=False)[0]

        def force(logits, context):
            out = torch.full_like(logits, -1e4)
            out[..., token] = 1e4
            return out

        return RunEdit.for_prompts(model, "logits", force, [self.prompt_spans(p) for p in prompts], name=self.name)


class _DigitStudy(Study):
    """The score of an output is the digit it starts with (none: 0)."""

    name = "digit-study"
    primary = "digit"
    metrics = ("digit",)

    def load_data(self, config):
        return [{"id": f"d{i}"} for i in range(4)]

    def items(self, data, config, tokenizer):
        return [Item(r["id"], r) for r in data][: config.limit]

    def segments(self, item, config):
        return Segments(before="Write a digit. ", focus="Any digit.", after=" Go.")

    def score(self, items, outputs, config):
        return [Score({"digit": float(o.strip()[:1]) if o.strip()[:1].isdigit() else 0.0}) for o in outputs]


def _config(tmp_path, **more):
    return ExperimentConfig(out=str(tmp_path / "runs"), limit=4, max_new_tokens=1, plots=False, influence=False,
                            seed=0, **more)


def _names(config):
    return [c.name for c in resolve_conditions(config)]


@pytest.fixture
def digit():
    method = _Digit()
    steering.register(method)
    return method


def test_the_built_in_methods_keep_their_conditions_grids_and_defaults(tmp_path):
    assert profiles() == ("guide", "pasta", "instaboost", "spotlight", "spa")
    assert condition_methods() == ("none", "guide", "emphatic", "pasta", "instaboost", "spotlight", "spa")
    assert _names(ExperimentConfig(out=str(tmp_path), deltas=[0, 2])) == ["none", "guide@2", "emphatic"]
    assert profile("guide").grid() == (0.5, 1.0, 1.5, 2.0, 3.0) and profile("guide").reference_strength() == 1.0
    assert profile("pasta").grid() == (0.5, 0.2, 0.1, 0.05, 0.01, 0.001)
    assert profile("instaboost").reference_strength() == 5.0 and profile("spa").focus_tag == ("<!!->", "<-!!>")
    # the method objects keep their name, parameters and steering, and nothing of the experiments
    for name in profiles():
        for moved in ("strength_grid", "paper_strength", "default_condition", "condition_order", "focus_tag"):
            assert not hasattr(steering.get(name), moved), (name, moved)


def test_a_method_with_a_registered_profile_joins_default_experiments_and_gets_its_grid(tiny, tmp_path, digit):
    assert "digit_writer" not in _names(_config(tmp_path))
    register_profile(Profile("digit_writer", focus_tag=("<!!->", "<-!!>"), condition_order=15,
                             default_condition=True, strength="level", strength_grid=[2, 7, 5], paper_strength=2,
                             paper_source="a test's choice"))
    # it joins the default experiment, in its place between GUIDE (10) and the emphatic prompt (20)
    assert _names(_config(tmp_path, deltas=[1])) == ["none", "guide@1", "digit_writer", "emphatic"]
    assert profile("digit_writer").grid() == (2, 7, 5)
    result = compare_methods(_DigitStudy(), _config(tmp_path), ["digit_writer"], model=tiny, max_repetition=1.0,
                             out=tmp_path / "cmp")
    tuned, default = result.rows
    saved = json.loads((tmp_path / "cmp" / "tune-digit_writer.json").read_text())
    assert [t["strength"] for t in saved["result"]["trials"]] == [2, 7, 5]  # the profile's grid, in its order
    assert tuned.parameter == "level" and tuned.strength == 7 and tuned.mean == pytest.approx(7.0)
    assert default.strength == 2 and default.mean == pytest.approx(2.0)  # its paper default
    assert result.sources == {"digit_writer": "a test's choice"}


def test_a_method_without_a_profile_joins_nothing_and_compare_asks_for_its_strength_and_grid(tiny, tmp_path,
                                                                                             digit):
    # the safe defaults; the focus tag gives the spans it steers
    assert profile("digit_writer") == Profile("digit_writer", focus_tag=("<!!->", "<-!!>"))
    assert tag_focus(Condition("digit_writer"), " Any digit.") == " <!!->Any digit.<-!!>"  # a guide span it steers
    assert "digit_writer" not in _names(_config(tmp_path))
    assert "digit_writer" in _names(_config(tmp_path, conditions=["none", "digit_writer"]))
    with pytest.raises(ExperimentError, match="'digit_writer' has no strength to tune.*strength_grid"):
        compare_methods(_DigitStudy(), _config(tmp_path), ["digit_writer"], model=tiny, out=tmp_path / "c1")

    class NoDefault(_Digit):  # a strength parameter without a default: the grid must be given
        name = "digit_nodefault"
        params = (steering.Param("level", int, None, "the digit written"),)

    steering.register(NoDefault())
    register_profile(Profile("digit_nodefault", strength="level"))
    with pytest.raises(ExperimentError, match="'digit_nodefault' has no strengths to search: give its grid"):
        compare_methods(_DigitStudy(), _config(tmp_path), ["digit_nodefault"], model=tiny, out=tmp_path / "c2")
    # given, it runs
    result = compare_methods(_DigitStudy(), _config(tmp_path), ["digit_nodefault"], model=tiny,
                             grids={"digit_nodefault": [4, 6]}, max_repetition=1.0, out=tmp_path / "c3")
    assert result.rows[0].strength == 6


def test_a_strength_parameter_without_a_grid_is_searched_at_its_default(tiny, tmp_path, digit):
    register_profile(Profile("digit_writer", strength="level"))
    assert profile("digit_writer").grid() == (3,) and profile("digit_writer").reference_strength() == 3
    result = compare_methods(_DigitStudy(), _config(tmp_path), ["digit_writer"], model=tiny, max_repetition=1.0,
                             out=tmp_path / "cmp")
    assert [(r.setting, r.strength) for r in result.rows] == [("tuned", 3), ("default", 3)]
    assert result.sources == {"digit_writer": "the level parameter's default"}


def test_class_attributes_still_work_and_a_registered_profile_wins(tmp_path, digit):
    class Legacy(_Digit):  # declared the way plugins did before profiles
        name = "digit_legacy"
        default_condition = True
        condition_order = 90
        strength = "level"
        strength_grid = (1, 2)

    steering.register(Legacy())
    assert profile("digit_legacy") == Profile("digit_legacy", focus_tag=("<!!->", "<-!!>"), default_condition=True,
                                              condition_order=90, strength="level", strength_grid=(1, 2))
    assert _names(_config(tmp_path, deltas=[1]))[-1] == "digit_legacy"
    register_profile(Profile("digit_legacy", strength="level", strength_grid=(4,)))
    assert profile("digit_legacy").grid() == (4,) and "digit_legacy" not in _names(_config(tmp_path))


def test_a_broken_profile_is_an_error_naming_it(digit):
    with pytest.raises(ExperimentError, match="profile for unknown steering method 'no_such_method'"):
        register_profile(Profile("no_such_method", strength="level", strength_grid=(1, 2)))
    with pytest.raises(ExperimentError, match="'digit_writer'.*strength 'x' is not a valid level"):
        register_profile(Profile("digit_writer", strength="level", strength_grid=(1, "x")))
    with pytest.raises(ExperimentError, match="'digit_writer'.*strength_grid must be a list"):
        register_profile(Profile("digit_writer", strength="level", strength_grid="123"))
    with pytest.raises(ExperimentError, match="'digit_writer'.*strength: .*no parameter 'volume'"):
        register_profile(Profile("digit_writer", strength="volume", strength_grid=(1,)))
    with pytest.raises(ExperimentError, match="'digit_writer'.*needs strength"):
        register_profile(Profile("digit_writer", strength_grid=(1, 2)))
    with pytest.raises(ExperimentError, match="'digit_writer'.*focus_tag must be a pair"):
        register_profile(Profile("digit_writer", focus_tag=("<!->",)))
    with pytest.raises(ExperimentError, match="'digit_writer'.*default_condition must be True or False"):
        register_profile(Profile("digit_writer", default_condition="yes"))
    with pytest.raises(ExperimentError, match="'digit_writer'.*compare_order must be an integer or None"):
        register_profile(Profile("digit_writer", compare_order="first"))
    assert isinstance(ExperimentError("x"), AttnlensError)
    assert "digit_writer" not in profiles()

    class Broken(_Digit):  # the same checks for class attributes
        name = "digit_broken"
        strength = "level"
        strength_grid = ("x",)

    steering.register(Broken())
    with pytest.raises(ExperimentError, match="'digit_broken'.*not a valid level"):
        profile("digit_broken")


PLUGIN = '''
from attnlens import steering
from attnlens.experiments.profiles import Profile


class Ping(steering.SteeringMethod):
    name = "ping_{tag}"
    spans = "guide"
    params = (steering.Param("level", int, 1),)

    def steering(self, model, prompts, settings):
        return None


ENTRIES = [Ping, Profile("ping_{tag}", default_condition=True, strength="level", strength_grid={grid})]
'''


@pytest.fixture
def plugin_files(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    for tag, grid in (("good", "(1, 2)"), ("bad", "('loud',)")):
        (tmp_path / f"ping_{tag}.py").write_text(textwrap.dedent(PLUGIN.format(tag=tag, grid=grid)), encoding="utf-8")
    yield
    for tag in ("good", "bad"):
        sys.modules.pop(f"ping_{tag}", None)


def test_a_plugin_names_its_profile_beside_its_method(plugin_files, tmp_path):
    plugins.load_plugins(["ping_good:ENTRIES"])
    assert "ping_good" in steering.methods() and "ping_good" in profiles()
    assert profile("ping_good").grid() == (1, 2) and "ping_good" in _names(_config(tmp_path))
    with pytest.raises(PluginError, match="ping_bad.*'ping_bad'.*not a valid level"):
        plugins.load_plugins(["ping_bad:ENTRIES"])


def test_compare_on_the_command_line_asks_for_a_grid(plugin_files, tiny, tmp_path, monkeypatch, capsys):
    from attnlens import cli

    monkeypatch.setattr("attnlens.cli.tune.load_model_for", lambda args: tiny)
    (tmp_path / "ping_plain.py").write_text(textwrap.dedent('''
        from attnlens import steering


        class Plain(steering.SteeringMethod):
            name = "ping_plain"
            spans = "guide"
            params = (steering.Param("level", int, 1),)

            def steering(self, model, prompts, settings):
                return None


        steering.register(Plain())
    '''), encoding="utf-8")
    try:
        code = cli.main(["--plugin", "ping_plain", "compare", "summarize", "--methods", "ping_plain", "--limit", "2",
                         "--out", str(tmp_path / "cmp")])
    finally:
        sys.modules.pop("ping_plain", None)
    err = capsys.readouterr().err
    assert code == 2 and "'ping_plain' has no strength to tune" in err and "strength_grid" in err


def test_compare_runs_the_built_ins_and_the_plugins_that_ask_when_none_are_named(digit):
    from attnlens.experiments.compare import DEFAULT_METHODS

    assert compared_methods() == DEFAULT_METHODS == ("guide", "instaboost", "spotlight", "spa", "pasta")
    assert "digit_writer" not in compared_methods()  # registered, with no profile: only when named
    register_profile(Profile("digit_writer", strength="level", strength_grid=(2, 7), compare_order=25))
    assert compared_methods() == ("guide", "instaboost", "digit_writer", "spotlight", "spa", "pasta")
