"""Every access to a private attribute of torch, transformers, accelerate, TransformerLens or circuitsvis
lives in attnlens/core/_internals.py: the package is scanned (with ``ast``) for such access anywhere else.

An access counts when it reads an attribute (``x._name``, or ``getattr(x, "_name")``) whose private name
attnlens never defines itself, or one of the upstream internals below that have public-looking names.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "attnlens"
INTERNALS = PACKAGE / "core" / "_internals.py"

#: upstream internals without a leading underscore: function closures and code objects, and
#: TransformerLens' hook wrappers' conversion and alias fields, the bridge's compatibility flag
UPSTREAM_NAMES = {"__closure__", "__code__", "__globals__", "hook_conversion", "alias_names", "compatibility_mode"}

#: accesses still outside _internals, file by file (path relative to the package -> names): none; an
#: entry here must name why, and the test below fails once it is no longer used
ALLOWED: dict[str, set[str]] = {}


def _files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _own_names(files: list[Path]) -> set[str]:
    """Every name attnlens defines: functions, classes, variables, attributes it assigns, arguments, imports."""
    names: set[str] = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
            elif isinstance(node, ast.alias):
                names.add((node.asname or node.name).split(".")[-1])
    return names


def _accessed(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Attribute):
            out.append((node.lineno, node.attr))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ("getattr", "setattr", "hasattr", "delattr") and len(node.args) > 1
              and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)):
            out.append((node.lineno, node.args[1].value))
    return out


def upstream_accesses() -> dict[str, list[tuple[int, str]]]:
    files = _files()
    own = _own_names([f for f in files if f != INTERNALS])
    found: dict[str, list[tuple[int, str]]] = {}
    for path in files:
        if path == INTERNALS:
            continue
        for line, name in _accessed(path):
            private = name.startswith("_") and not (name.startswith("__") and name.endswith("__"))
            if (private and name not in own) or name in UPSTREAM_NAMES:
                found.setdefault(str(path.relative_to(PACKAGE)), []).append((line, name))
    return found


def test_upstream_internals_are_touched_only_in_core_internals():
    found = upstream_accesses()
    unexpected = {path: [f"line {line}: {name}" for line, name in hits if name not in ALLOWED.get(path, set())]
                  for path, hits in found.items()}
    unexpected = {path: hits for path, hits in unexpected.items() if hits}
    assert not unexpected, f"move these to attnlens/core/_internals.py: {unexpected}"


def test_the_allow_list_holds_only_what_is_still_there():
    found = upstream_accesses()
    stale = {path: sorted(names - {name for _, name in found.get(path, [])}) for path, names in ALLOWED.items()}
    stale = {path: names for path, names in stale.items() if names}
    assert not stale, f"no longer accessed; remove from ALLOWED: {stale}"


def test_the_scan_sees_an_access(tmp_path):
    """The scan flags a private upstream attribute and a closure read (it could fail)."""
    sample = tmp_path / "sample.py"
    sample.write_text("def f(model, hook):\n    model._setup_start_at_layer()\n    return hook.__closure__\n")
    names = {name for _, name in _accessed(sample)}
    assert {"_setup_start_at_layer", "__closure__"} <= names
    own = _own_names([p for p in _files() if p != INTERNALS])
    assert "_setup_start_at_layer" not in own
