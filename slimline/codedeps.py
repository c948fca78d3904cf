"""The project code a stage runs: its import closure, for dvc.yaml deps and resume keys.

    python -m slimline.codedeps [STAGE_MODULE ...]   # e.g. tasks.distill; default: every stage

A stage must rerun when, and only when, code it runs changes. So its dvc.yaml code
deps are exactly the project files it imports, directly or not, imports inside
functions included (found by reading the source, not by running it). A folder
stands for its .py files when the stage imports all of them.
"""
from __future__ import annotations

import ast
import sys
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("tasks", "slimline", "flows")  # project code; everything else is a dependency


def _file(module: str) -> Path | None:
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _runs_code(path: Path) -> bool:
    """An empty __init__.py runs nothing; one that gains code becomes a dep (and the test says so)."""
    return path.name != "__init__.py" or bool(path.read_text().strip())


@lru_cache(maxsize=None)
def _imports(path: Path) -> frozenset[str]:
    """Project modules `path` imports, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pkg import name`: name may be a submodule or an attribute
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] in PACKAGES and _file(name):
                found.add(name)
    return frozenset(found)


def closure(module: str) -> list[Path]:
    """Every project file that `python -m module` executes: the module, what it imports,
    and the __init__.py of every package on the way."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__, a/b/__init__ too
            path = _file(".".join(parts[:i]))
            if path and path not in seen:
                seen.add(path)
                todo.extend(_imports(path))
    return sorted(p for p in seen if _runs_code(p))


def code_files(module: str) -> list[str]:
    """closure() as paths relative to the project root (resume keys must not depend on
    where the checkout lives)."""
    return [p.relative_to(ROOT).as_posix() for p in closure(module)]


def dvc_deps(module: str) -> list[str]:
    """closure() as dvc.yaml deps: paths relative to the root, a folder for a package
    whose .py files are all in the closure."""
    files = set(closure(module))
    folders = sorted({p.parent for p in files if p.parent != ROOT}, key=lambda d: len(d.parts))
    deps, covered = [], set()
    for folder in folders:
        if any(folder.is_relative_to(c) for c in covered):
            continue
        every = {p for p in folder.rglob("*.py") if "__pycache__" not in p.parts and _runs_code(p)}
        if every and every <= files:
            covered.add(folder)
            deps.append(folder.relative_to(ROOT).as_posix())
    deps += [p.relative_to(ROOT).as_posix() for p in sorted(files)
             if not any(p.is_relative_to(c) for c in covered)]
    return sorted(deps)


def stage_modules(dvc_yaml: Path = ROOT / "dvc.yaml") -> dict[str, str]:
    """stage name -> the module its cmd runs (`python -m tasks.X ...`)."""
    import yaml

    stages = yaml.safe_load(dvc_yaml.read_text())["stages"]
    out = {}
    for name, stage in stages.items():
        cmd = (stage.get("do") or stage)["cmd"]
        out[name] = cmd.split("-m", 1)[1].split()[0]
    return out


if __name__ == "__main__":
    modules = sys.argv[1:] or sorted(set(stage_modules().values()))
    for module in modules:
        print(f"{module}:")
        for dep in dvc_deps(module):
            print(f"  - {dep}")
