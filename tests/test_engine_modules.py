"""The engine's modules: their imports of each other form a DAG (no cycle, not even through a
late import inside a function), and none imports another's private names."""

from __future__ import annotations

import ast
from pathlib import Path

import keyrotation.engine

ENGINE = Path(keyrotation.engine.__file__).parent
PACKAGE = "keyrotation.engine"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ENGINE.parent.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(ENGINE.rglob("*.py"))}


def _resolve(module: str, node: ast.ImportFrom) -> str:
    """The absolute name ``from <node.module>`` refers to, seen from ``module``."""
    if not node.level:
        return node.module or ""
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def imports(module: str) -> dict[str, list[str]]:
    """Engine modules ``module`` imports (anywhere in it, TYPE_CHECKING and late imports
    included) -> the names it takes from each."""
    out: dict[str, list[str]] = {}
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in MODULES:
                    out.setdefault(alias.name, [])
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, node)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in MODULES:  # ``from . import runs``: the submodule itself
                    out.setdefault(sub, [])
                elif base in MODULES:
                    out.setdefault(base, []).append(alias.name)
    out.pop(module, None)
    return out


GRAPH = {m: imports(m) for m in MODULES}


def test_the_engine_modules_are_found():
    assert {f"{PACKAGE}.runner", f"{PACKAGE}.pipeline", f"{PACKAGE}.dialects.postgresql"} <= set(MODULES)


def test_engine_imports_form_a_dag():
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        if state.get(module) == "done":
            return
        assert state.get(module) != "open", "import cycle: " + " -> ".join([*path, module])
        state[module] = "open"
        for dep in sorted(GRAPH[module]):
            visit(dep, [*path, module])
        state[module] = "done"
        order.append(module)

    for module in sorted(GRAPH):
        visit(module, [])
    assert order.index(f"{PACKAGE}.pipeline") < order.index(f"{PACKAGE}.runner")


def test_no_engine_module_takes_a_private_name_of_another():
    private = {
        (module, dep, name)
        for module, deps in GRAPH.items()
        for dep, names in deps.items()
        for name in names
        if name.startswith("_")
    }
    assert not private


def test_the_pipeline_drives_the_worker_through_public_names_only():
    tree = ast.parse(MODULES[f"{PACKAGE}.pipeline"].read_text())
    reached = {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and node.attr.startswith("_")
        and (
            (isinstance(node.value, ast.Name) and node.value.id == "worker")
            or (isinstance(node.value, ast.Attribute) and node.value.attr == "worker")
        )
    }
    assert not reached
