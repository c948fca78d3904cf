"""The code a stage runs, for dvc.yaml deps and resume keys: its import closure, plus the
files the params bring (a python: model's source, imported weights).

    python -m slimline.codedeps [STAGE_MODULE ...]   # e.g. tasks.distill; default: every stage
    python -m slimline.codedeps --write              # rewrite dvc.yaml's generated deps

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


def _file(module: str, root: Path = ROOT) -> Path | None:
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _runs_code(path: Path) -> bool:
    """An empty __init__.py runs nothing; one that gains code becomes a dep (and the test says so)."""
    return path.name != "__init__.py" or bool(path.read_text().strip())


@lru_cache(maxsize=None)
def _imports(path: Path, packages: tuple[str, ...] = PACKAGES) -> frozenset[str]:
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
            if name.split(".")[0] in packages and _file(name):
                found.add(name)
    return frozenset(found)


def imported_files(path: Path, packages: tuple[str, ...] = PACKAGES) -> set[Path]:
    """The files of `packages` that `path` imports, imports inside functions included: its
    edges in the project's import graph."""
    return {_file(name) for name in _imports(path, packages)}


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


# The params networks each stage builds (a python: model's source is a dep of all of
# them) and those whose weights it imports.
BUILDS = {"train_baseline": ("baseline",), "distill": ("baseline", "student"),
          "prune": ("baseline", "student"), "quantize": ("baseline", "student"),
          "qat": ("baseline", "student"), "qat_prune": ("baseline", "student"),
          "evaluate": ("baseline", "student")}
IMPORTS_WEIGHTS = {"train_baseline": ("baseline",), "distill": ("student",)}
MARK = "# generated (code, user files): python -m slimline.codedeps --write"


def python_source(spec: str, root: Path = ROOT) -> str | None:
    """The project file behind a `python:<module>:<callable>` model spec, relative to root."""
    if not spec.startswith("python:"):
        return None
    path = _file(spec.split(":")[1], root)
    return path.relative_to(root).as_posix() if path else None


def user_files(stage: str, raw_params: dict, root: Path = ROOT) -> list[str]:
    """The files params.yaml brings into `stage`: the data prepare reads, python: sources of
    the networks it builds (found under the project root, where the stage imports them
    from), and the weights it imports."""
    out = set()
    data = raw_params.get("data") or {}
    if stage == "prepare" and data.get("path"):  # the images an idx, npz or imagefolder source reads
        out.add(str(data["path"]).rstrip("/"))
    for net in BUILDS.get(stage, ()):
        section = raw_params.get(net) or {}
        src = python_source(str(section.get("model", "cnn")), root)
        if src:
            out.add(src)
        if net in IMPORTS_WEIGHTS.get(stage, ()) and section.get("weights"):
            out.add(str(section["weights"]))
    return sorted(out)


def stage_deps(stage: str, module: str, raw_params: dict, root: Path = ROOT) -> list[str]:
    """Everything generated into a stage's dvc.yaml deps: its code, then its user files."""
    code = dvc_deps(module)
    return code + [f for f in user_files(stage, raw_params, root)
                   if not any(f == c or f.startswith(c.rstrip("/") + "/") for c in code)]


def read_params(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text()) or {}


def write(dvc_yaml: Path = ROOT / "dvc.yaml", params: Path = ROOT / "params.yaml",
          raw: dict | None = None) -> bool:
    """Rewrite each stage's generated deps (after MARK) in place; True when dvc.yaml changed.
    Deps above the mark (data, models) are the author's and stay as written. `raw`: the
    params to read instead of the file (with a run's overrides applied)."""
    import re

    raw = read_params(params) if raw is None else raw
    modules = stage_modules(dvc_yaml)
    lines = dvc_yaml.read_text().splitlines(True)
    out, stage, i = [], None, 0
    code = re.compile(r"^(\s*)- (tasks|slimline|flows)/")
    while i < len(lines):
        line = lines[i]
        m = re.match(r"^  ([\w@]+):\s*$", line)
        if m:
            stage = m.group(1)
        marked = line.strip() == MARK
        cm = code.match(line)
        if stage in modules and (marked or cm):
            indent = line[:len(line) - len(line.lstrip())]
            i += 1
            # The old generated block: after the mark, the rest of the deps list; before
            # there was a mark, the code deps that follow.
            while i < len(lines) and lines[i].startswith(indent + "- ") and (marked or code.match(lines[i])):
                i += 1
            out.append(f"{indent}{MARK}\n")
            out += [f"{indent}- {d}\n"
                    for d in stage_deps(stage, modules[stage], raw, dvc_yaml.resolve().parent)]
            continue
        out.append(line)
        i += 1
    text = "".join(out)
    changed = text != dvc_yaml.read_text()
    if changed:
        dvc_yaml.write_text(text)
    return changed


def stage_user_files(stage: str, params_path: str | Path) -> list[str]:
    """user_files() for a stage run with this params file (resume keys include them)."""
    return user_files(stage, read_params(Path(params_path)), Path(params_path).resolve().parent)


@lru_cache(maxsize=4)
def _stages(path: str, mtime_ns: int) -> dict:
    import yaml

    return yaml.safe_load(Path(path).read_text())["stages"]


def undeclared(stage: str, raw_params: dict, dvc_yaml: Path = ROOT / "dvc.yaml") -> list[str]:
    """User files the stage needs that dvc.yaml does not list (so editing them would not
    rerun it). dvc.yaml is parsed once per version, however many stages are asked about."""
    entry = _stages(str(dvc_yaml), dvc_yaml.stat().st_mtime_ns).get(stage) or {}
    deps = set((entry.get("do") or entry).get("deps", []))
    return [f for f in user_files(stage, raw_params, dvc_yaml.resolve().parent) if f not in deps
            and not any(f.startswith(d.rstrip("/") + "/") for d in deps)]


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        print("dvc.yaml: " + ("updated" if write() else "already up to date"))
        sys.exit(0)
    modules = sys.argv[1:] or sorted(set(stage_modules().values()))
    for module in modules:
        print(f"{module}:")
        for dep in dvc_deps(module):
            print(f"  - {dep}")
