"""The package's modules import each other without cycles, and none is too long to read.

Every ``import`` and ``from`` statement counts, those inside functions too: a lazy import hides
a cycle from the interpreter, not from the reader. ``from .pkg import name`` points at the
submodule ``pkg.name`` where there is one, else at ``pkg/__init__.py``.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

PACKAGE = "tvm_sparse"


def _modules(package: str) -> dict[str, Path]:
    """Every module of ``package`` from its source tree (without importing it): name -> file."""
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.submodule_search_locations, f"{package} is not a package"
    root = Path(next(iter(spec.submodule_search_locations)))
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of the package that ``name`` (at ``path``) imports."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            # the name is a submodule where one exists, else an attribute of ``source``
            targets = [
                f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # ``import a.b.c`` of a name in ``a.b``
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def _describe(component: list[str], graph: dict[str, set[str]]) -> str:
    edges = [f"  {a} -> {b}" for a in component for b in sorted(graph[a]) if b in component]
    return "\n".join([f"cycle among {len(component)} modules:", *edges])


def test_the_walk_sees_function_level_and_relative_imports():
    modules = _modules(PACKAGE)
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert "tvm_sparse.compile" in graph["tvm_sparse"]  # from .compile import compile
    assert "tvm_sparse.pipeline" in graph["tvm_sparse.layer_timing"]  # inside a method
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    modules = _modules(PACKAGE)
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    cycles = _cycles(graph)
    assert not cycles, "\n".join(_describe(c, graph) for c in cycles)


#: A module longer than this does more than one thing: split it by concept.
MAX_LINES = 500


def test_no_module_is_too_long():
    long = {
        name: lines
        for name, path in _modules(PACKAGE).items()
        if (lines := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"
