"""Plugins through every door: a steering method, an attribution method and a study defined in one plugin
module, loaded by ``--plugin`` and by an (imitated) installed entry point, run by the command line
(``experiment``, ``tune``, ``compare``, ``influence``, ``generate``), the pipeline and ``al.influence``.
The loader's errors name the plugin; the registry type's lazy entries and sources run when first read."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import sys
import textwrap

import pytest

import attnlens as al
from attnlens import attribution, steering
from attnlens.core import plugins
from attnlens.core.errors import AttnlensError, PluginError
from attnlens.core.registry import Registry

#: one plugin file: a steering method with a strength, an attribution method and a study with its own config
PLUGIN = '''
from dataclasses import dataclass

from attnlens import attribution, steering
from attnlens.experiments import register_study
from attnlens.experiments.config import ExperimentConfig
from attnlens.experiments.study import Item, Score, Segments, Study
from attnlens.steering.bias import BiasPlan


class {prefix}Bias(steering.SteeringMethod):
    name = "{name}_bias"
    help = "a plugin's key bias on the focus"
    params = (steering.Param("value", float, 1.0, "the bias"),)
    spans = "guide"
    focus_tag = ("<!->", "<-!>")
    strength = "value"
    strength_grid = (0.5, 2.0)

    def steering(self, model, prompts, settings):
        spans = [self.prompt_spans(p) for p in prompts]
        if not any(spans):
            return None
        plan = BiasPlan.for_model(model)
        for row, row_spans in enumerate(spans):
            for start, end in row_spans:
                plan.add(start, end, settings["value"], row=row if len(prompts) > 1 else None)
        return plan


class {prefix}Mass(attribution.RecursionMethod):
    name = "{name}_mass"
    help = "rollout keeping most of the residual"
    fused_conventions = ("stated", "pap")

    def mix(self, prev, att, x_share):
        return 0.9 * prev + 0.1 * att


@dataclass
class {prefix}Config(ExperimentConfig):
    max_new_tokens: int = 2
    word: str = "yes"
    repeats: int = 2


class {prefix}Study(Study):
    """Say a word back: the share of outputs that contain it."""

    name = "{name}-echo"
    config_class = {prefix}Config
    primary = "echoed"
    metrics = ("echoed", "length")

    def load_data(self, config):
        return [{{"id": f"w{{i}}", "word": config.word}} for i in range(4)]

    def items(self, data, config, tokenizer):
        items = [Item(r["id"], r) for r in data]
        return items[: config.limit] if config.limit else items

    def segments(self, item, config):
        return Segments("Please ", f"say {{item.data['word']}}", " " + "again " * config.repeats)

    def score(self, items, outputs, config):
        return [Score({{"echoed": float(i.data["word"] in o), "length": float(len(o))}}) for i, o in zip(items, outputs)]
'''


def _write(tmp_path, module, name, prefix, tail):
    (tmp_path / f"{module}.py").write_text(PLUGIN.format(name=name, prefix=prefix) + textwrap.dedent(tail),
                                           encoding="utf-8")


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """A folder on sys.path with two plugin modules: ``plug_module`` registers on import (for --plugin),
    ``plug_objects`` only defines (an entry point names its objects); the loader's memory is restored after."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    _write(folder, "plug_module", "plug", "Plug", """
        steering.register(PlugBias())
        attribution.register(PlugMass())
        register_study(PlugStudy)
    """)
    _write(folder, "plug_objects", "ep", "Ep", """
        ENTRIES = [EpBias, EpMass(), EpStudy]
    """)
    (folder / "plug_broken.py").write_text("raise RuntimeError('the plugin is broken')\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(folder))
    loaded, state = set(plugins._loaded), dict(plugins._state)
    yield folder
    plugins._loaded.clear()
    plugins._loaded.update(loaded)
    plugins._state.update(state)
    for module in ("plug_module", "plug_objects", "plug_broken"):
        sys.modules.pop(module, None)


@pytest.fixture
def installed(monkeypatch):
    """Imitate installed packages whose metadata declares ``attnlens.plugins`` entry points."""
    entries: list[importlib.metadata.EntryPoint] = []
    real = importlib.metadata.entry_points

    def entry_points(**selection):
        if selection.get("group") == plugins.GROUP:
            return [e for e in entries]
        return real(**selection)

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)

    def add(name, value):
        entries.append(importlib.metadata.EntryPoint(name=name, value=value, group=plugins.GROUP))

    return add


@pytest.fixture
def on_tiny(tiny, monkeypatch):
    """Every command loads the tiny model."""
    from attnlens.cli import _common
    from attnlens.runtime import models

    monkeypatch.setattr(_common, "load_model_for", lambda args: tiny)
    monkeypatch.setattr("attnlens.cli.tune.load_model_for", lambda args: tiny)
    monkeypatch.setattr(models, "load_model", lambda *a, **k: tiny)
    return tiny


def _main(capsys, argv):
    from attnlens import cli

    capsys.readouterr()
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # --help
        code = exc.code
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out


def _experiment(capsys, tmp_path, prefix, study, method):
    out = _main(capsys, [*prefix, "experiment", study, "--out", str(tmp_path / "exp"), "--limit", "2", "--word", "zebra",
                         "--repeats", "1", "--conditions", "none", method, "--no-plots", "--bootstrap", "10", "--json"])
    result = json.loads(out)
    assert result["study"] == study
    assert [row["condition"] for row in result["summary"]] == ["none", method]
    assert all(row["items"] == 2 for row in result["summary"])
    run = json.loads((tmp_path / "exp" / "run.json").read_text())
    # the study's own settings came from its own options
    assert '"word": "zebra"' in json.dumps(run) and '"repeats": 1' in json.dumps(run)
    return result


def _compare(capsys, tmp_path, prefix, study, method):
    out = _main(capsys, [*prefix, "compare", study, "--methods", method, "--grid", f"{method}=0.5,2",
                         "--limit", "4", "--max-repetition", "1", "--out", str(tmp_path / "cmp"), "--json"])
    result = json.loads(out)
    assert result["study"] == study
    assert [(r["method"], r["setting"]) for r in result["rows"]] == [(method, "tuned"), (method, "default")]
    assert result["rows"][0]["strength"] in (0.5, 2.0) and result["rows"][1]["strength"] == 1.0


def test_a_plugin_module_works_in_every_door_with_plugin(plugin_dir, on_tiny, tmp_path, capsys):
    prefix = ["--plugin", "plug_module"]
    # the study is a subcommand, with an option per field of its own config, and a choice of tune and compare
    listing = _main(capsys, [*prefix, "experiment", "--help"])
    assert "plug-echo" in listing and "Say a word back" in listing
    help_text = _main(capsys, [*prefix, "experiment", "plug-echo", "--help"])
    assert "--word" in help_text and "--repeats" in help_text
    assert "plug-echo" in _main(capsys, [*prefix, "compare", "--help"])
    assert "plug-echo" in _main(capsys, [*prefix, "tune", "--help"])
    _experiment(capsys, tmp_path, prefix, "plug-echo", "plug_bias")
    _compare(capsys, tmp_path, prefix, "plug-echo", "plug_bias")
    tuned = json.loads(_main(capsys, [*prefix, "tune", "plug-echo", "--method", "plug_bias", "--limit", "2",
                                      "--max-repetition", "1", "--out", str(tmp_path / "tune"), "--json"]))
    assert tuned["method"] == "plug_bias" and [t["strength"] for t in tuned["trials"]] == [0.5, 2.0]
    # the attribution method in the influence command, the steering method's parameter as an option
    traced = json.loads(_main(capsys, [*prefix, "influence", "<?-> Paris <-?> is in France", "--method",
                                       "plug_mass", "--json"]))
    assert "plug_mass" in json.dumps(traced)
    generated = json.loads(_main(capsys, [*prefix, "generate", "<!-> hello <-!> there", "--max-new-tokens", "1",
                                          "--plug-bias-value", "2", "--steer", "plug_bias", "--json"]))
    assert "plug_bias" in generated["methods"]


def test_an_installed_plugin_works_in_every_door_without_plugin(plugin_dir, installed, on_tiny, tmp_path, capsys,
                                                               monkeypatch):
    installed("attnlens-ep", "plug_objects:ENTRIES")
    # the library's doors: the first read of any registry loads the installed plugins
    monkeypatch.setitem(plugins._state, "done", False)
    assert "ep_bias" in steering.methods()
    assert "ep_mass" in attribution.methods() and "ep-echo" in al.experiments.studies()
    ids = on_tiny.tokenizer("Paris is the capital of France")["input_ids"]
    assert al.influence(on_tiny, ids, (0, 1), method="ep_mass").shape[0] == on_tiny.cfg.n_layers + 1
    method, calls = steering.get("ep_bias"), []
    real = method.steering
    monkeypatch.setattr(method, "steering", lambda *args: calls.append(args[2]) or real(*args), raising=False)
    pipe = al.pipeline(model=on_tiny)
    assert pipe("<!-> Say <-!> yes", max_new_tokens=2, steer={"ep_bias": {"value": "3"}})[0]["generated_text"]
    assert calls == [{"value": 3.0}]  # the pipeline ran the plugin's steering, with its checked settings
    # the command line's doors, with no --plugin
    _experiment(capsys, tmp_path, [], "ep-echo", "ep_bias")
    _compare(capsys, tmp_path, [], "ep-echo", "ep_bias")


def test_a_plugin_that_fails_is_named(plugin_dir, installed, capsys, caplog):
    from attnlens import cli

    assert cli.main(["--plugin", "no_such_plugin", "generate", "x"]) == 2
    err = capsys.readouterr().err
    assert "no_such_plugin" in err and "cannot import" in err
    assert cli.main(["--plugin", "plug_broken", "generate", "x"]) == 2
    assert "plug_broken" in capsys.readouterr().err
    with pytest.raises(PluginError, match="'plug_objects:NOTHING'.*no attribute"):
        plugins.load_plugin("plug_objects:NOTHING")
    with pytest.raises(PluginError, match="EpConfig.max_new_tokens'.*is not a module, a function or an entry"):
        plugins.load_plugin("plug_objects:EpConfig.max_new_tokens")
    # an installed plugin that fails is a warning naming it; the others still load
    installed("attnlens-broken", "plug_broken")
    installed("attnlens-ep", "plug_objects:ENTRIES")
    with caplog.at_level(logging.WARNING, logger="attnlens.core.plugins"):
        assert plugins.load_installed() == ["attnlens-ep"]
    assert "attnlens-broken" in caplog.text and "the plugin is broken" in caplog.text
    assert "ep_bias" in steering.methods()
    assert plugins.load_installed() == []  # each is loaded once


def test_the_registry_type_declares_and_sources_lazily(tmp_path, monkeypatch):
    class Base:
        name = ""

    (tmp_path / "lazy_widget.py").write_text(
        "from test_plugins_base import Base\n"
        "class Widget(Base):\n    name = 'lazy'\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(sys.modules, "test_plugins_base", type(sys)("test_plugins_base"))
    sys.modules["test_plugins_base"].Base = Base
    table = Registry("widget", Base)
    table.declare("lazy", "lazy_widget:Widget")
    assert "lazy_widget" not in sys.modules and table.names() == ("lazy",)  # listed, not imported
    assert table.get("lazy").name == "lazy" and "lazy_widget" in sys.modules
    table.declare("wrong", "lazy_widget:Widget")
    with pytest.raises(AttnlensError, match="named 'lazy', declared as 'wrong'"):
        table.get("wrong")
    calls = []
    table.add_source(lambda: calls.append(table.register(type("Late", (Base,), {"name": "late"})())))
    assert calls == []  # a source runs when the registry is next read, once
    assert "late" in table and len(calls) == 1
    table.names()
    assert len(calls) == 1
    # names keep the order they were declared or registered in, also once a declared entry is imported
    ordered = Registry("widget", Base)
    ordered.declare("lazy", "lazy_widget:Widget")
    ordered.register(type("Later", (Base,), {"name": "later"})())
    ordered.get("lazy")
    assert ordered.names() == ("lazy", "later") and [w.name for w in ordered.values()] == ["lazy", "later"]
    ordered.unregister("lazy")
    assert ordered.names() == ("later",)
    sys.modules.pop("lazy_widget", None)


def test_views_are_found_through_the_registry_the_package_root_fills():
    """core.records imports no view; a record's view comes from attnlens.viz, wired by the package root."""
    import subprocess

    code = ("import sys; import attnlens.core.records as r; from attnlens.core.views import view_function; "
            "assert 'attnlens.viz' not in sys.modules; print(view_function(r.Record(text='hi')).__module__)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "attnlens.viz.records"
    from attnlens.core import views

    class Mine(dict):
        pass

    with pytest.raises(AttnlensError, match="a Mine has no view"):
        views.view_of(Mine())
    views.register_view(Mine, lambda record, **options: ("drawn", dict(record), options))
    assert views.view_of(Mine(a=1), size=2) == ("drawn", {"a": 1}, {"size": 2})


def test_a_plugins_attribution_method_in_the_faithfulness_experiment(plugin_dir, on_tiny, tmp_path, capsys):
    """The faithfulness experiment is a door for attribution methods: a plugin's is scored beside a built-in
    on every prompt (an unknown method would exit 2)."""
    data = tmp_path / "prompts.txt"
    data.write_text("The cat sat on the mat because it was warm.\nParis is the capital of France and its largest city.\n")
    out = json.loads(_main(capsys, ["--plugin", "plug_module", "experiment", "faithfulness", "--out",
                                    str(tmp_path / "faith"), "--dataset", str(data), "--methods", "plug_mass,rollout",
                                    "--seeds", "2", "--points", "3", "--limit", "2", "--bootstrap", "50", "--json"]))
    rows = {r["condition"]: r for r in out["summary"]}
    assert set(rows) == {"plug_mass", "rollout", "random"}
    assert rows["plug_mass"]["items"] == 2 and rows["rollout"]["items"] == 2
