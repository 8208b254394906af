"""The service's shape, checked: imports point down the layers, no circles, one way to change a state.

Layers, top to bottom (a module may import its own subpackage and any layer below):
``app``/``__main__`` -> ``api`` -> ``workers`` -> ``resources`` -> ``context`` -> ``state``, ``serving``
-> ``errors``, ``gcs``. Function-level imports count too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[3] / "include" / "local_platform"
PREFIX = "include.local_platform"
RANKS = {"errors": 0, "gcs": 0, "state": 1, "serving": 1, "context": 2, "resources": 3, "workers": 4, "api": 5,
         "app": 6, "__main__": 7}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        found[".".join(part for part in parts if part != "__init__")] = path
    return found


MODULES = _modules()


def _imports(path: Path) -> set[str]:
    """Service modules ``path`` imports (``from include.local_platform.x import y`` names ``x.y`` if a module)."""
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(PREFIX):
            base = node.module[len(PREFIX):].lstrip(".")
            for alias in node.names:
                child = f"{base}.{alias.name}" if base else alias.name
                imported.add(child if child in MODULES else base)
        elif isinstance(node, ast.Import):
            imported |= {a.name[len(PREFIX):].lstrip(".") for a in node.names if a.name.startswith(PREFIX + ".")}
    return {name for name in imported if name}


def _layer(module: str) -> str:
    return module.split(".", 1)[0]


def test_every_module_has_a_layer():
    assert {_layer(module) for module in MODULES if module} <= set(RANKS)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m))
def test_imports_point_down_the_layers(module):
    upward = [target for target in _imports(MODULES[module])
              if _layer(target) != _layer(module) and RANKS[_layer(target)] >= RANKS[_layer(module)]]
    assert not upward, f"{module} imports {upward}: imports point down the layers ({__doc__.splitlines()[3]})"


def test_no_import_circles():
    graph = {module: _imports(path) & set(MODULES) for module, path in MODULES.items() if module}
    state: dict[str, str] = {}

    def visit(module: str, trail: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                pytest.fail("import circle: " + " -> ".join([*trail[trail.index(target):], target]))
            if target not in state:
                visit(target, [*trail, target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


#: Calls that write a stored document (a protobuf message's own ``state=`` keyword is not one).
STATE_WRITERS = {"revise", "update", "put", "insert", "setdefault", "dict"}


def _state_writes(tree: ast.AST) -> list[tuple[int, str]]:
    """Places that set a resource's ``state`` other than through ``Store.transition``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name in STATE_WRITERS and any(keyword.arg == "state" for keyword in node.keywords):
                found.append((node.lineno, f"{name}(state=...)"))
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] \
            if isinstance(node, ast.AugAssign | ast.AnnAssign) else []
        for target in targets:
            if isinstance(target, ast.Subscript) and isinstance(target.slice, ast.Constant) \
                    and target.slice.value == "state":
                found.append((node.lineno, '[...]["state"] = ...'))
    return found


def _has_state_key(node: ast.AST) -> bool:
    return any(isinstance(item, ast.Dict) and any(isinstance(key, ast.Constant) and key.value == "state"
                                                  for key in item.keys) for item in ast.walk(node))


def _state_literals(tree: ast.AST) -> list[tuple[int, str]]:
    """``{"state": ...}`` handed to a call, or kept for one, outside the functions that create a resource."""
    found = []
    for function in ast.walk(tree):
        if not isinstance(function, ast.FunctionDef) or function.name.startswith("create"):
            continue
        for node in ast.walk(function):
            values = [*node.args, *(keyword.value for keyword in node.keywords)] if isinstance(node, ast.Call) \
                else [node.value] if isinstance(node, ast.Assign) else []
            if any(_has_state_key(value) for value in values):
                found.append((node.lineno, f'{{"state": ...}} in {function.name}'))
    return found


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m))
def test_states_change_only_through_the_compare_and_set(module):
    tree = ast.parse(MODULES[module].read_text())
    writes = _state_writes(tree) + _state_literals(tree)
    if module == "state.store":  # the compare-and-set itself
        writes = [write for write in writes if "transition" not in write[1]]
    assert not writes, f"{module} writes a state by hand (use Store.transition): {writes}"


def test_the_checks_catch_what_they_look_for():
    tree = ast.parse('def run(ctx):\n    ctx.store.revise(n, state="X")\n    doc["state"] = "Y"\n'
                     '    ctx.store.update(n, lambda d: d.update({"state": "Z"}))\n')
    assert sorted({line for line, _ in _state_writes(tree) + _state_literals(tree)}) == [2, 3, 4]
    assert _imports(MODULES["app"]) >= {"api.ml_v1_http", "workers.supervisor", "context"}
