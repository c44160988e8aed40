"""The package's layers: each imports only the layers listed before it, and no module imports form a cycle.

Imports are read from the source with ``ast`` (function-level imports too), so
the test needs no model and imports nothing.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "attnlens"

#: the layers, lowest first; a module may import its own layer and those before it
LAYERS = ("core", "prompts", "steering", "runtime", "attribution", "analysis", "viz", "api", "experiments", "cli")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_only(tree: ast.AST) -> set[int]:
    """The import nodes under ``if TYPE_CHECKING:`` (never run)."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            out |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return out


def _string_import(node: ast.AST, name: str, package: str) -> str | None:
    """The module an ``importlib.import_module("...")`` call names with a string constant (a relative
    name resolved against its ``__name__`` or ``__package__`` anchor); None for any other node."""
    if not isinstance(node, ast.Call):
        return None
    func = node.func
    called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    if called != "import_module" or not node.args:
        return None
    first = node.args[0]
    if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
        return None  # a name computed at run time cannot be followed
    target = first.value
    if not target.startswith("."):
        return target
    anchor = node.args[1] if len(node.args) > 1 else next((k.value for k in node.keywords if k.arg == "package"), None)
    base = name if isinstance(anchor, ast.Name) and anchor.id == "__name__" else package
    level = len(target) - len(target.lstrip("."))
    parts = base.split(".")[: len(base.split(".")) - (level - 1)]
    return ".".join(parts + ([target.lstrip(".")] if target.lstrip(".") else []))


def _imports(path: Path, source: str | None = None) -> list[tuple[str, int, bool]]:
    """``(absolute module, line, at top level)`` for every attnlens import in ``path`` that runs
    (at the top level or inside a function; not under ``if TYPE_CHECKING:``), ``import_module("...")``
    calls with a string constant included. ``source`` stands in for the file's text."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8") if source is None else source)
    top = {id(node) for node in tree.body}
    skipped = _type_checking_only(tree)
    out = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        targets: list[str] = []
        called = _string_import(node, name, package)
        if called is not None:
            targets = [called]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # ``from . import x`` may name a submodule
            targets = [f"{module}.{a.name}" if _is_module(f"{module}.{a.name}") else module for a in node.names]
        for target in targets:
            if target == "attnlens" or target.startswith("attnlens."):
                out.append((target, node.lineno, id(node) in top))
    return out


def _is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def test_string_imports_are_followed():
    """``importlib.import_module`` with a literal name counts as an import, relative names too."""
    core = PACKAGE / "core" / "records.py"
    source = ("import importlib\n"
              "def f():\n"
              "    importlib.import_module('attnlens.viz')\n"
              "    importlib.import_module('..api', __package__)\n"
              "    importlib.import_module('.views', __name__)\n"
              "    importlib.import_module(name)\n")
    found = [target for target, _, _ in _imports(core, source)]
    assert found == ["attnlens.viz", "attnlens.api", "attnlens.core.records.views"]
    mine = _layer(_module_name(core))
    assert [t for t in found if LAYERS.index(_layer(t)) > LAYERS.index(mine)] == ["attnlens.viz", "attnlens.api"]


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


FILES = sorted(p for p in PACKAGE.rglob("*.py"))


def test_every_subpackage_is_a_layer():
    subpackages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert subpackages == set(LAYERS)


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down_the_layers(path):
    mine = _layer(_module_name(path))
    if mine is None:  # attnlens/__init__.py and attnlens/testing.py sit above every layer
        return
    for target, line, _ in _imports(path):
        theirs = _layer(target)
        assert theirs is not None, f"{path.name}:{line} imports {target}, outside every layer"
        assert LAYERS.index(theirs) <= LAYERS.index(mine), (
            f"{_module_name(path)} (layer {mine}) imports {target} (layer {theirs}) at line {line}"
        )


def test_no_import_cycles():
    """No cycle, counting the imports made inside functions too (they run, just later)."""
    graph: dict[str, set[str]] = {}
    for path in FILES:
        graph[_module_name(path)] = {t for t, _, _ in _imports(path) if _is_module(t)}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            # a package's __init__ importing its own submodules is how packages work
            if node == nxt or nxt.startswith(node + ".") and _is_init(node):
                continue
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if state.get(nxt) is None:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if state.get(node) is None:
            visit(node)


def _is_init(name: str) -> bool:
    return (PACKAGE.parent.joinpath(*name.split(".")) / "__init__.py").is_file()


def test_views_import_only_records():
    """``viz`` is data in, HTML out: from the layers that run models it imports classes (records), never a function."""
    import importlib
    import inspect

    runs_models = {"steering", "runtime", "attribution", "analysis"}
    for path in sorted((PACKAGE / "viz").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom) or node.level == 0:
                continue
            module = "attnlens." + (node.module or "")
            if _layer(module) not in runs_models:
                continue
            imported = importlib.import_module(module)
            for alias in node.names:
                assert inspect.isclass(getattr(imported, alias.name)), (
                    f"{path.name}:{node.lineno} imports {alias.name} from {module}: views take records, not model runs"
                )
        private = [n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr.startswith("_")
                   and not n.attr.startswith("__") and n.attr != "_repr_html_"
                   and not (isinstance(n.value, ast.Name) and n.value.id in ("self", "cls"))]
        assert not private, f"{path.name} reads private fields of what it is given: {private}"
