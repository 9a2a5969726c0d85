"""The scheduling package's shape: no import cycle (of any kind), no module past 400 lines, the
public names in place, and the scheduler child speaking to the broker through typed methods."""

from __future__ import annotations

import ast
from pathlib import Path

from supervisor import scheduling

PACKAGE = Path(scheduling.__file__).parent
PREFIX = "supervisor.scheduling."


def _imports(path: Path) -> set[str]:
    """Every scheduling module ``path`` imports: top level, in functions, under TYPE_CHECKING."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "supervisor.scheduling":
                found.update(PREFIX + a.name for a in node.names)
            elif node.module.startswith(PREFIX):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith(PREFIX))
    modules = {PREFIX + p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    return found & modules


def test_no_import_cycle_in_scheduling() -> None:
    graph = {
        PREFIX + p.stem: _imports(p) for p in sorted(PACKAGE.glob("*.py")) if p.stem != "__init__"
    }
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        if module in path:
            cycle = " -> ".join((*path[path.index(module) :], module))
            raise AssertionError(f"import cycle: {cycle}")
        if module in done:
            return
        for dep in sorted(graph.get(module, ())):
            visit(dep, (*path, module))
        done.add(module)

    for module in graph:
        visit(module, ())
    assert PREFIX + "spec" not in graph[PREFIX + "spec"]
    assert PREFIX + "policy" not in graph[PREFIX + "spec"]  # the cycle issue 9 named
    assert PREFIX + "validation" in graph[PREFIX + "config"]


def test_no_scheduling_module_passes_400_lines() -> None:
    sizes = {p.name: len(p.read_text().splitlines()) for p in PACKAGE.glob("*.py")}
    assert {name: n for name, n in sizes.items() if n > 400} == {}


def test_public_names_still_import() -> None:
    for name in scheduling.__all__:
        assert getattr(scheduling, name) is not None
    from supervisor.scheduling.policy import first_fire, interval_anchor
    from supervisor.scheduling.store import ScheduleStore

    assert ScheduleStore is scheduling.ScheduleStore
    assert first_fire is scheduling.first_fire and interval_anchor is scheduling.interval_anchor


def test_the_scheduler_names_no_broker_method_in_a_string() -> None:
    """The child uses the typed proxy (``client.push(...)``), never ``call("push", ...)``."""
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                assert node.func.attr not in {"call", "_call"}, f"{path.name}:{node.lineno}"
    source = (PACKAGE / "process.py").read_text()
    assert "from supervisor.client.proxy import BrokerClient" in source
