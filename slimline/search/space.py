"""Structure search candidates: from params.yaml's `search` section to named sets
of `dvc exp run -S` overrides, each checked by the params schema.

No torch, DVC or Prefect here, so the rules are tested on fixed inputs.
"""
from __future__ import annotations

import copy
import difflib
import hashlib
import io
import itertools
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from slimline.overrides import as_set_args
from slimline.params import ParamsError, SearchParams, Structure, parse_params
from slimline.repo import slug

# The training stage that builds each target, and the report holding its metrics.
STAGE = {"baseline": "train_baseline", "student": "distill"}
# The params sections read by that stage and the stages it depends on (dvc.yaml):
# together with the code, they decide a candidate's result.
SECTIONS = {"baseline": ("data", "baseline", "train"),
            "student": ("data", "baseline", "train", "student", "distill")}
# Not part of a candidate's identity: the search sets it from the number of workers.
THREADS_KEY = "train.num_threads"


@dataclass(frozen=True)
class Candidate:
    name: str  # the DVC experiment's name: readable, plus a hash of what decides the result
    target: str  # baseline | student
    choice: dict  # the searched keys' values
    structure: dict  # the target's whole structure with the choice applied
    overrides: dict  # every -S override but threads: the choice and search.overrides
    error: str | None = None  # the schema rejected it: recorded as failed, never run

    @property
    def stage(self) -> str:
        return STAGE[self.target]

    def set_args(self, threads: int | None = None) -> list[str]:
        """`-S key=value` arguments, written as the pipeline flow writes its own."""
        items = dict(self.overrides)
        if threads is not None:
            items[THREADS_KEY] = threads
        return [arg for pair in as_set_args(items) for arg in ("-S", pair)]

    def asdict(self) -> dict:
        return asdict(self)


def _set(raw: dict, dotted: str, value) -> None:
    section, _, key = dotted.partition(".")
    raw.setdefault(section, {})[key] = value


def _label(structure: dict) -> str:
    """A short readable part of the name: letters, digits, dots and dashes only (git refs)."""
    def widths(ws):
        return "x".join(map(str, ws)) or "none"

    return (f"{structure['activation'].replace('_', '')}-c{widths(structure['conv_channels'])}"
            f"-h{widths(structure['hidden'])}-d{structure['dropout']:g}")


def combinations(cfg: SearchParams) -> list[dict]:
    """The searched choices: the whole grid, or `n` of its combinations drawn with `seed`
    (kept in grid order, so the same config always lists the same candidates)."""
    keys = list(cfg.space.choices())
    grid = [dict(zip(keys, values, strict=True))
            for values in itertools.product(*cfg.space.choices().values())]
    if cfg.strategy == "random":
        picked = sorted(random.Random(cfg.seed).sample(range(len(grid)), cfg.n))
        grid = [grid[i] for i in picked]
    return grid


def build_candidates(raw: dict, code_state: str = "") -> list[Candidate]:
    """Candidates for the `search` section of the raw params (params.yaml as loaded).

    The name hashes every params section the target's stages read, after the
    overrides (threads aside), plus `code_state` (uncommitted code changes), so a
    rerun finds a candidate it already ran exactly when nothing that shapes the
    result has changed. The experiment's commit, HEAD, covers the committed code.
    """
    full = parse_params(raw)
    cfg, target = full.search, full.search.target
    net = getattr(full, target)
    if net.model != "cnn" or getattr(net, "derive", None) is not None:
        raise ParamsError(f"search: the structure search varies the built-in cnn's structure keys, "
                          f"but {target} is {'derived' if net.model == 'cnn' else repr(net.model)}; "
                          f"set search.target to a cnn section")
    out = []
    for choice in combinations(cfg):
        overrides = {**{f"{target}.{k}": v for k, v in choice.items()}, **cfg.overrides}
        changed = copy.deepcopy(raw)
        for key, value in overrides.items():
            _set(changed, key, value)
        error = None
        try:
            params = parse_params(changed)
            effective = params.model_dump(mode="json")
        except ParamsError as err:
            lines = [line.strip(" -").removeprefix("(top level): ") for line in str(err).splitlines()[1:]]
            error = "; ".join(lines) or str(err)
            effective = changed
        section = {k: v for k, v in (effective.get(target) or {}).items() if k in Structure.model_fields}
        structure = {**Structure().model_dump(), **section, **choice}
        ident = {s: copy.deepcopy(effective.get(s)) for s in SECTIONS[target]}
        ident["train"] = {k: v for k, v in (ident.get("train") or {}).items() if k != "num_threads"}
        digest = hashlib.sha256(json.dumps({"target": target, "params": ident, "code": code_state},
                                           sort_keys=True, default=str).encode()).hexdigest()[:8]
        out.append(Candidate(name=f"{target}-{_label(structure)}-{digest}", target=target, choice=choice,
                             structure=structure, overrides=overrides, error=error))
    return out


def describe(structure: dict) -> str:
    """`conv 32-64 · hidden 128-64 · elu · dropout 0.3` for tables."""
    def widths(ws):
        return "-".join(map(str, ws)) or "none"

    return (f"conv {widths(structure.get('conv_channels', []))} · hidden "
            f"{widths(structure.get('hidden', []))} · {structure.get('activation')} · "
            f"dropout {structure.get('dropout', 0):g}")


def apply_structure(params_path: Path, target: str, choice: dict) -> str:
    """Write the searched keys' values into params.yaml, keeping its comments and
    layout (ruamel round trip, as DVC's own `-S` does); returns the unified diff.

    Only the `choice` keys are written, not everything an experiment changed
    (`dvc exp apply` would also bring its thread count and recipe overrides).
    """
    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedSeq

    yaml = YAML()  # round trip
    yaml.width = 4096
    # Keep quotes as written: ruamel writes YAML 1.2, where a bare `off` is a string, but
    # YAML 1.1 readers (PyYAML, so slimline's own loader) read it as false.
    yaml.preserve_quotes = True
    # Keep `null` spelled out, as the file writes it (ruamel's default is an empty value).
    yaml.representer.add_representer(
        type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    before = params_path.read_text()
    data = yaml.load(before)
    section = data[target]
    for key, value in choice.items():
        if isinstance(value, list):
            value = CommentedSeq(value)
            value.fa.set_flow_style()  # `[128, 64]` like the rest of the file
        section[key] = value
    buf = io.StringIO()
    yaml.dump(data, buf)
    after = buf.getvalue()
    parse_params(YAML(typ="safe").load(after), str(params_path))  # never write an invalid file
    params_path.write_text(after)
    return "".join(difflib.unified_diff(before.splitlines(True), after.splitlines(True),
                                        f"a/{params_path.name}", f"b/{params_path.name}"))


def artifact_key(name: str) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes."""
    return slug(f"candidate-{name}")
