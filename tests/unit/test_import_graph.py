"""No import circles in the project's code: slimline/, flows/, tasks/ and benchmarks/.

Every import counts, those inside functions (and under TYPE_CHECKING) too. A lazy import
only hides a circle from the interpreter: the two modules still need each other, so
neither can be read, tested or moved alone, and a stage that runs one runs the other
(slimline.codedeps reads imports the same way for dvc.yaml's deps). A circle is broken by
moving what both need into a module that both import.
"""
from __future__ import annotations

from pathlib import Path

from slimline.codedeps import ROOT, imported_files

PACKAGES = ("slimline", "flows", "tasks", "benchmarks")


def project_files() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py") if "__pycache__" not in p.parts)


def import_graph() -> dict[Path, set[Path]]:
    """Each project file -> the project files it imports."""
    return {p: imported_files(p, PACKAGES) for p in project_files()}


def circles(graph: dict[Path, set[Path]]) -> list[list[Path]]:
    """One circle per group of files that import each other, directly or not (Tarjan's
    strongly connected components): the shortest one through the group's first file."""
    index: dict[Path, int] = {}
    low: dict[Path, int] = {}
    stack: list[Path] = []
    on_stack: set[Path] = set()
    components: list[set[Path]] = []

    def visit(v: Path) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_circle_through(min(c), c, graph) for c in components]


def _circle_through(start: Path, component: set[Path], graph: dict[Path, set[Path]]) -> list[Path]:
    """The shortest path start -> ... -> start inside the component."""
    paths = {start: [start]}
    todo = [start]
    while todo:
        v = todo.pop(0)
        for w in sorted(graph[v] & component):
            if w == start:
                return [*paths[v], start]
            if w not in paths:
                paths[w] = [*paths[v], w]
                todo.append(w)
    raise AssertionError(f"{start} is in no circle")


def _show(circle: list[Path]) -> str:
    return " -> ".join(p.relative_to(ROOT).as_posix() for p in circle)


def test_the_project_has_no_import_circle():
    found = circles(import_graph())
    assert not found, "import circles (move what both modules need into one both import):\n" + "\n".join(
        _show(c) for c in found)


def test_the_graph_sees_imports_inside_functions():
    # load_source imports the image-folder reader only when asked for that source
    graph = import_graph()
    assert ROOT / "slimline/data/imagefolder.py" in graph[ROOT / "slimline/data/sources.py"]


def test_circles_are_found_and_named():
    a, b, c, d = (ROOT / f"{n}.py" for n in "abcd")
    found = circles({a: {b}, b: {c}, c: {a, d}, d: set()})
    assert [_show(x) for x in found] == ["a.py -> b.py -> c.py -> a.py"]
    assert circles({a: {a}}) == [[a, a]] and circles({a: {b}, b: set()}) == []


def test_no_library_module_imports_the_stage_runtime():
    """slimline.stage is the runtime of the stage scripts (tasks/): library code that needs
    a report writer or a file name imports slimline.report or slimline.paths."""
    stage = ROOT / "slimline/stage.py"
    users = [p for p, deps in import_graph().items()
             if stage in deps and not p.is_relative_to(ROOT / "tasks")]
    assert not users, [p.relative_to(ROOT).as_posix() for p in users]
