"""The package's shape: no import cycles (imports inside functions count too), modules and
functions small enough to read in one sitting."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent / "toolkit"
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 60


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    found = {module_name(p): p for p in ROOT.rglob("*.py")}
    # Triton's python-backend models run inside Triton's stub, not as part of the package.
    return {name: p for name, p in found.items() if ".triton.backend." not in name}


def imported(tree: ast.AST, known: set[str]) -> set[str]:
    """The toolkit modules a module imports, anywhere in it (functions included)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return {n for n in names if n in known}


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules it imports, with the packages whose `__init__` those imports run
    (a module's own packages excepted: they are already initialised when it runs)."""
    known = modules()
    graph = {}
    for name, path in known.items():
        targets = imported(ast.parse(path.read_text()), set(known))
        inits = set()
        for target in targets:
            parts = target.split(".")
            inits |= {".".join(parts[:i]) for i in range(2, len(parts))}
        own = {".".join(name.split(".")[:i]) for i in range(1, len(name.split(".")) + 1)}
        graph[name] = (targets | (inits & set(known))) - own
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle_anywhere_in_the_package():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a"}}) is None


def test_function_imports_are_seen():
    tree = ast.parse("def f():\n    from toolkit.x import y\n    import toolkit.z\n")
    assert imported(tree, {"toolkit.x", "toolkit.x.y", "toolkit.z"}) == {
        "toolkit.x",
        "toolkit.x.y",
        "toolkit.z",
    }


@pytest.mark.parametrize("name", sorted(modules()))
def test_modules_and_functions_stay_small(name):
    path = modules()[name]
    text = path.read_text()
    assert len(text.splitlines()) <= MAX_MODULE_LINES, f"{path}: over {MAX_MODULE_LINES} lines"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.body[0].lineno + 1  # the body, not the signature
            assert length <= MAX_FUNCTION_LINES, f"{path}:{node.lineno} {node.name}: {length}"


def test_the_command_line_does_not_declare_choices_of_its_own():
    # Choices come from toolkit.choices; a literal click.Choice list would be a second copy.
    for path in (ROOT / "commands").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "Choice":
                literal = [a for a in node.args if isinstance(a, (ast.List, ast.Tuple))]
                values = [e.value for a in literal for e in a.elts if isinstance(e, ast.Constant)]
                assert values in ([], ["1", "3"]), f"{path}: click.Choice({values})"
