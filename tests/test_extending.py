"""docs/extending.md: each section's example defines methods in a module of its own, registers and runs them."""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"
SECTIONS = ("## Adding a steering method", "## Adding an attribution method", "## Adding a study")


def blocks(section: str) -> list[tuple[str, str]]:
    """``(language, code)`` of every code block in ``section``, in order."""
    text = DOC.read_text(encoding="utf-8")
    start = text.index(section)
    end = text.find("\n## ", start + len(section))
    return re.findall(r"```(python|bash)\n(.*?)```", text[start : end if end > 0 else None], re.DOTALL)


def run_section(section: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> tuple[dict, list[str]]:
    """Write the section's ``# file:`` blocks as modules, exec its other Python blocks in one namespace,
    and run its ``attnlens`` command lines; returns the namespace and each command's output."""
    from attnlens import cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    namespace: dict = {}
    outputs = []
    for i, (language, code) in enumerate(blocks(section)):
        first = code.splitlines()[0]
        if language == "python" and first.startswith("# file: "):
            (tmp_path / first[len("# file: "):].strip()).write_text(code, encoding="utf-8")
        elif language == "python":
            exec(compile(code, f"{DOC.name}: {section}, block {i + 1}", "exec"), namespace)
        else:
            argv = shlex.split(code.strip())
            assert argv[0] == "attnlens"
            capsys.readouterr()
            assert cli.main(argv[1:]) == 0, capsys.readouterr().err
            outputs.append(capsys.readouterr().out)
    return namespace, outputs


@pytest.fixture
def cleanup():
    from attnlens import attribution, experiments, steering

    before = (steering.methods(), attribution.methods(), experiments.studies())
    yield
    for name in set(steering.methods()) - set(before[0]):
        steering.unregister(name)
    for name in set(attribution.methods()) - set(before[1]):
        attribution.unregister(name)
    for name in set(experiments.studies()) - set(before[2]):
        experiments.unregister_study(name)
    for module in ("my_steering", "my_attribution", "my_study"):
        sys.modules.pop(module, None)


def test_each_section_defines_registers_and_runs_a_method():
    for section in SECTIONS:
        kinds = [(lang, code.splitlines()[0].startswith("# file: ")) for lang, code in blocks(section)]
        assert ("python", True) in kinds and ("python", False) in kinds and ("bash", False) in kinds, section


@pytest.mark.embedded
def test_the_steering_example_runs(embedded, tmp_path, monkeypatch, capsys, cleanup):
    namespace, outputs = run_section(SECTIONS[0], tmp_path, monkeypatch, capsys)
    assert "scale_attention" in namespace["al"].steering.methods()
    assert namespace["scaled"]["generated_text"] != namespace["plain"]
    rows = {row["condition"]: row for row in namespace["result"].table()}
    assert set(rows) == {"none", "scale_attention"}
    assert rows["scale_attention"]["influence"] != pytest.approx(rows["none"]["influence"])
    assert outputs[0].strip()


@pytest.mark.embedded
def test_the_attribution_example_runs(embedded, tmp_path, monkeypatch, capsys, cleanup):
    import torch

    namespace, outputs = run_section(SECTIONS[1], tmp_path, monkeypatch, capsys)
    mass, mixed = namespace["mass"], namespace["mixed"]
    n_layers = namespace["model"].cfg.n_layers
    assert mass.shape == mixed.shape == (n_layers + 1, len(namespace["ids"]))
    # attention shares are in [0, 1]; the 3:1 mix is not rollout's half and half
    assert bool(((mass >= 0) & (mass <= 1 + 1e-5)).all())
    rollout = namespace["al"].influence(namespace["model"], namespace["ids"], (0, 1), method="rollout")
    assert not torch.allclose(mixed, rollout)
    result = json.loads(outputs[0])
    values = torch.tensor(result["spans"][0]["attention_mass"])
    assert values.shape[0] == n_layers + 1 and float(values[0].sum()) >= 1


@pytest.mark.embedded
def test_the_study_example_runs(embedded, tmp_path, monkeypatch, capsys, cleanup):
    from attnlens.runtime import models

    monkeypatch.setattr(models, "load_model", lambda *args, **kwargs: embedded)  # the command's model
    namespace, outputs = run_section(SECTIONS[2], tmp_path, monkeypatch, capsys)
    assert namespace["studies"]()[-1] == "capitals"
    rows = {row["condition"]: row for row in namespace["result"].table()}
    assert set(rows) == {"none", "guide@2"} and all(row["items"] == 2 for row in rows.values())
    result = json.loads(outputs[0])
    assert result["study"] == "capitals" and [row["condition"] for row in result["summary"]] == ["none", "guide@2"]
    run = json.loads((tmp_path / "runs" / "capitals-cli" / "run.json").read_text())
    assert '"language": "French"' in json.dumps(run)
