"""Stage scripts stay thin: a tasks/<stage>.py reads its inputs, calls the library, writes
its report. What it computes and how a report reads belong in slimline/, where they can be
tested and reused; a stage body that grows past a screen is the sign that they have not."""
from __future__ import annotations

import ast

from slimline.codedeps import ROOT

MAX_LINES = 50


def long_functions(source: str, limit: int = MAX_LINES) -> list[tuple[str, int]]:
    """(name, lines) of each top-level function longer than `limit` lines."""
    out = []
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines = node.end_lineno - node.lineno + 1
            if lines > limit:
                out.append((node.name, lines))
    return out


def test_every_stage_function_is_at_most_50_lines():
    scripts = sorted((ROOT / "tasks").glob("*.py"))
    assert len(scripts) > 1
    found = [f"tasks/{p.name}: {name}() is {n} lines" for p in scripts
             for name, n in long_functions(p.read_text())]
    assert not found, f"stage functions over {MAX_LINES} lines (move the work into slimline/):\n" + \
        "\n".join(found)


def test_long_functions_counts_a_function_from_def_to_its_last_line():
    body = "".join(f"    x{i} = {i}\n" for i in range(50))
    assert long_functions(f"def f():\n{body}") == [("f", 51)]
    assert long_functions(f"def f():\n{body}", limit=51) == []
    method = body.replace("    ", "        ")
    assert long_functions(f"class C:\n    def f(self):\n{method}") == []  # top-level functions only
