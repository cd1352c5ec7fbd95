"""The import graph of ``ovseg/``: no circle, and the layers import one way.

Every ``import`` statement counts, including those inside functions (a lazy import is still
a dependency). ``from ovseg.x import y`` counts as importing ``ovseg.x.y`` when that is a
module, else ``ovseg.x``. The checker is tried on planted trees first, so a checker that
found nothing would fail here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "ovseg"

# Layers from the bottom up; a package may import its own layer and those below it.
LAYERS = [
    {"digest", "fileio", "timing", "vocabulary"},
    {"data"},
    {"modeling"},
    {"proposals", "weights"},
    {"inference"},
    {"evaluation", "serve", "train"},
    {"cli", "__main__"},
]
# the top package (``ovseg/__init__``, the public API) re-exports up to the inference layer
TOP_PACKAGE_LAYER = 4
TOP_MODULE_MAX_LINES = 250  # the top folder holds packages and a few small modules


def module_graph(root: Path) -> dict[str, set[str]]:
    """``{module: {imported ovseg modules}}`` for the package at ``root``."""
    package = root.name
    modules: dict[str, Path] = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = here.split(".")[: len(here.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    targets.append(full if full in modules else base)
            for target in targets:
                if target.split(".")[0] == package:
                    found = resolve(target)
                    if found and found != name:
                        graph[name].add(found)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a list of modules, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) == 1:
        return TOP_PACKAGE_LAYER  # the public API
    for i, layer in enumerate(LAYERS):
        if parts[1] in layer:
            return i
    raise AssertionError(f"{module}: not in any layer of {LAYERS}; add it to the test's map")


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Imports that go from a lower layer to a higher one."""
    bad = []
    for module, targets in sorted(graph.items()):
        here = layer_of(module)
        if here == len(LAYERS) - 1:
            continue  # the CLI may import anything
        for target in sorted(targets):
            if layer_of(target) > here:
                bad.append(f"{module} -> {target}")
    return bad


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "ovseg"
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_checker_finds_planted_circles_and_upward_imports(tmp_path):
    root = _tree(
        tmp_path,
        {
            "__init__.py": "",
            "modeling/__init__.py": "",
            "modeling/a.py": "def f():\n    from ovseg.weights import b\n",  # lazy, upward
            "weights/__init__.py": "",
            "weights/b.py": "from ovseg.modeling import a\n",
            "data/__init__.py": "",
            "data/c.py": "from . import d\n",
            "data/d.py": "from .c import thing\n",  # relative imports, a circle
        },
    )
    graph = module_graph(root)
    assert graph["ovseg.weights.b"] == {"ovseg.modeling.a"}
    assert graph["ovseg.data.d"] == {"ovseg.data.c"}
    cycle = find_cycle(graph)
    assert cycle is not None and cycle[0] == cycle[-1]
    assert upward_imports(graph) == ["ovseg.modeling.a -> ovseg.weights.b"]
    clean = _tree(tmp_path / "clean", {"__init__.py": "", "data/__init__.py": "", "data/c.py": ""})
    assert find_cycle(module_graph(clean)) is None


def test_ovseg_has_no_import_circle():
    cycle = find_cycle(module_graph(ROOT))
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_layers_import_one_way():
    assert upward_imports(module_graph(ROOT)) == []


@pytest.mark.parametrize("path", sorted(ROOT.glob("*.py")), ids=lambda p: p.name)
def test_top_folder_holds_only_small_modules(path):
    lines = len(path.read_text().splitlines())
    assert lines <= TOP_MODULE_MAX_LINES, f"{path.name} has {lines} lines: move it into a package"
