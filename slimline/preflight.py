"""Preflight for the models params.yaml asks for, before any stage trains.

For the baseline and the student (derived or not): build it for the data's shape, run one
forward pass, export it to ONNX (a dry run, in memory), and build Torch-Pruning's
dependency graph, each long step within prune.graph_timeout_s; with qat.enabled, for each
model in qat.models, QAT's preparation too (torch.export and torchao's fake int8, as the
qat@<model> stage prepares it). A failure names the
section, the spec, the step and what to change. A model whose graph Torch-Pruning cannot
build is no failure: only structured pruning and student.derive need the graph, so it gets
a note that they do not apply, and everything else runs. A graph past its budget is a
failure when the run needs it (prune@structured would stop there), else a note.

`slimline check` runs it. The outcome is cached under .slimline/preflight/ by a hash of
what it depends on (the specs, the input shape, the project's code), so a no-op
`make run` does not pay for importing torch again.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from pathlib import Path

CACHE = Path(".slimline/preflight")


def input_shape(raw: dict, root: Path) -> tuple[tuple[int, int, int], int] | None:
    """(C, H, W) and the class count the models will be built for: data/prepared's when it
    exists, else what the data params say; None when only prepare can know."""
    meta = root / "data" / "prepared" / "meta.json"
    if meta.exists():
        m = json.loads(meta.read_text())
        return tuple(m["input_shape"]), int(m["num_classes"])
    data = raw.get("data") or {}
    classes = data.get("num_classes") or 10
    if data.get("source", "mnist5k") == "mnist5k":
        return (1, 28, 28), 10
    if data.get("source") == "imagefolder" and data.get("image_size") and data.get("channels"):
        return (int(data["channels"]), *map(int, data["image_size"])), int(classes)
    return None


def _key(raw: dict, shape, root: Path) -> str:
    from slimline.codedeps import ROOT

    h = hashlib.sha256(json.dumps({"baseline": raw.get("baseline"), "student": raw.get("student"),
                                   "budget": (raw.get("prune") or {}).get("graph_timeout_s"),
                                   "qat": sorted(_qat_sections(raw)), "shape": shape},
                                  sort_keys=True, default=str).encode())
    # The ONNX dry run is export_onnx and the file helpers it calls: export.py and onnx_files.py
    # (it opens no session, so runtime.py and the quantizers are no part of its outcome).
    for name in ("model.py", "zoo.py", "compress/pruning.py", "compress/pruning_ratios.py",
                 "compress/student.py", "compress/export.py", "compress/onnx_files.py", "timebudget.py",
                 "compress/qat.py", "preflight.py"):
        h.update((ROOT / "slimline" / name).read_bytes())
    for section in ("baseline", "student"):
        model = str((raw.get(section) or {}).get("model", "cnn"))
        if model.startswith("python:"):
            from slimline.codedeps import python_source

            src = python_source(model, root)  # where the stages (and check) import it from
            if src:
                h.update((root / src).read_bytes())
    return h.hexdigest()[:24]


@dataclasses.dataclass
class Outcome:
    failures: list[str] = dataclasses.field(default_factory=list)  # one line each, naming what to change
    # Each model whose Torch-Pruning graph failed or ran out of time: {section, model, reason, timed_out}
    untraceable: list[dict] = dataclasses.field(default_factory=list)
    # Each QAT model with tensors static int8 quantizes that the fake quantization does not
    # simulate: {section, model, ops: ["<op> <node>", ...], of: how many it quantizes}
    unsimulated: list[dict] = dataclasses.field(default_factory=list)


def check_models(raw: dict, root: Path = Path(".")) -> list[str]:
    """Problems with the models, one line each naming what to change; [] when all pass.
    What will not apply (structured pruning of a model Torch-Pruning cannot trace) is
    printed to stderr as notes."""
    found = preflight(raw, root)
    for line in notes(raw, found):
        print(f"note: {line}", file=sys.stderr, flush=True)
    return found.failures + too_slow(raw, found)


def preflight(raw: dict, root: Path = Path(".")) -> Outcome:
    """The preflight's outcome, from the cache when nothing it depends on changed."""
    found = input_shape(raw, root)
    if found is None:
        return Outcome()  # an idx/npz source, not prepared yet: the first training stage checks it
    shape, classes = found
    if all(str((raw.get(s) or {}).get("model", "cnn")) == "cnn" and not (raw.get(s) or {}).get("derive")
           for s in ("baseline", "student")):
        return Outcome()  # the built-in cnn: the params schema already checked its shapes
    done = root / CACHE / f"{_key(raw, [shape, classes], root.resolve())}.ok"
    if done.exists():
        return Outcome(**json.loads(done.read_text()))
    outcome = _run(raw, shape, classes)
    if not outcome.failures:
        done.parent.mkdir(parents=True, exist_ok=True)
        done.write_text(json.dumps({"untraceable": outcome.untraceable, "unsimulated": outcome.unsimulated}))
    return outcome


def _qat_sections(raw: dict) -> set[str]:
    """The sections whose models get a QAT stage in this run (qat.models, when enabled)."""
    qat = raw.get("qat") or {}
    return set(qat.get("models", ["student"])) if qat.get("enabled") else set()


def _structured_needs(raw: dict, section: str) -> bool:
    """Whether this run prunes `section`'s model with structured pruning."""
    from slimline.params import parse_params

    prune = parse_params(raw).prune
    return section == prune.source and "structured" in prune.methods


def too_slow(raw: dict, outcome: Outcome) -> list[str]:
    """Failures for graphs past their budget that this run needs: prune@structured would stop
    there (a time limit never marks a versioned output not applicable)."""
    return [f"{u['section']} ({u['model']}): {u['reason']}, and prune@structured needs it: raise "
            f"prune.graph_timeout_s, or take structured out of prune.methods"
            for u in outcome.untraceable if u["timed_out"] and _structured_needs(raw, u["section"])]


def notes(raw: dict, outcome: Outcome) -> list[str]:
    """What the outcome means for this run: which graph-based steps will not apply, and what
    QAT will not simulate."""
    lines = []
    for u in outcome.unsimulated:
        nodes = list(dict.fromkeys(u["ops"]))  # a node with several outputs, named once
        ops = ", ".join(nodes[:5]) + (f" and {len(nodes) - 5} more" if len(nodes) > 5 else "")
        done = u["of"] - len(u["ops"])
        lines.append(f"{u['section']} ({u['model']}): qat@{u['section']} simulates {done} of "
                     f"the {u['of']} tensors static int8 quantizes; not those of {ops}. Their int8 ranges "
                     f"come from calibration alone and training cannot adapt to their rounding, so expect "
                     f"less of QAT on this model (docs/compression.md, QAT)")
    for u in outcome.untraceable:
        marked = _structured_needs(raw, u["section"])
        if u["timed_out"] and marked:
            continue  # a failure (too_slow), not a note
        if u["timed_out"]:
            effect = f"prune@structured would stop there if it ran with prune.source: {u['section']}"
        else:
            effect = "prune@structured will write its not_applicable marker" + (
                "" if marked else f" if it runs with prune.source: {u['section']}")
        more = "; raise prune.graph_timeout_s to give it longer" if u["timed_out"] else ""
        steps = ("structured pruning and student.derive are" if u["section"] == "baseline"
                 else "structured pruning is")
        lines.append(f"{u['section']} ({u['model']}): {u['reason']}, so {steps} not applicable to it: "
                     f"{effect}{more}. Everything else runs")
    return lines


@dataclasses.dataclass
class _Plan:
    section: str
    what: str  # how messages name the model
    spec: object  # a ModelSpec
    init: object  # derive's init hook, or None
    kwargs_in: str  # the section whose kwargs build it
    qat: bool = False  # qat@<section> runs: check its preparation too


def _say(plan: _Plan, step: str) -> None:
    """Progress on stderr: one model's graph can take minutes."""
    print(f"preflight: {plan.section} ({plan.what}): {step} ...", file=sys.stderr, flush=True)


def _run(raw: dict, shape, classes) -> Outcome:
    import torch

    from slimline.compress.student import cannot_derive, student_plan
    from slimline.params import parse_params
    from slimline.training.trainer import network_spec

    params = parse_params(raw)
    budget = params.prune.graph_timeout_s
    base, student = params.baseline, params.student
    spec = network_spec(base, shape, classes, (0.0,) * shape[0], (1.0,) * shape[0])
    plans = [_Plan("baseline", base.model, spec, None, "baseline")]
    if student.derive is not None or student.model != "cnn":
        # As distill builds it; imported student weights are the stage's to load.
        s, init = student_plan(student, spec, budget)
        what = (f"derive from {base.model} at width {student.derive.width:g}" if student.derive
                else student.model)
        plans.append(_Plan("student", what, s, init if student.derive else None,
                           "baseline" if student.derive else "student"))
    for plan in plans:
        plan.qat = plan.section in _qat_sections(raw)
    outcome, graphs = Outcome(), {}
    example = torch.zeros(2, *shape)
    for plan in plans:
        if plan.init is not None and "baseline" in graphs:  # derive would only fail (or time out) again
            outcome.failures.append(
                f"{plan.section} ({plan.what}): {cannot_derive(base.model, graphs['baseline'])}")
            continue
        failure, no_graph, blind = _check(plan, example, classes, budget)
        if failure:
            outcome.failures.append(failure)
        if blind:
            outcome.unsimulated.append({"section": plan.section, "model": plan.what, **blind})
        if no_graph is not None:
            graphs[plan.section] = no_graph
            outcome.untraceable.append({"section": plan.section, "model": plan.what, "reason": str(no_graph),
                                        "timed_out": no_graph.timed_out})
    return outcome


def _check(plan: _Plan, example, classes: int, budget: float):
    """(failure line or None, GraphUnavailable or None, QAT's simulation gaps or None) of one
    model: build, derive, forward, ONNX export, QAT's preparation, then Torch-Pruning's graph,
    whose failure is no failure of the model."""
    import tempfile
    import warnings

    import torch

    from slimline.compress.export import export_onnx
    from slimline.errors import StageError
    from slimline.model import build_model
    from slimline.timebudget import OutOfTime, time_budget

    step = "build"
    try:
        _say(plan, step)
        model = build_model(plan.spec).eval()
        if plan.init is not None:
            step = "derive"
            _say(plan, step)
            model = plan.init(model).eval()  # within the budget; a StageError that names the fix
        step = f"forward on a {tuple(example.shape)} batch"
        _say(plan, step)
        try:
            with torch.no_grad():
                out = model(example)
        except Exception as err:  # noqa: BLE001 - named below, with a hint when the size is the cause
            return _failed(plan, step, err) + _size_hint(plan, model, example), None, None
        if tuple(out.shape) != (2, classes):
            raise StageError(f"it returns shape {tuple(out.shape)}, not (batch, {classes}) logits")
        step = "ONNX export"
        _say(plan, step)
        blind = None
        # QAT's check compares the fake-quantized model with static int8 of this export, by value:
        # both come from the copy whose BatchNorm scales torchao can divide by
        exported = _live_batchnorm(model) if plan.qat else model
        with warnings.catch_warnings(), tempfile.TemporaryDirectory() as tmp:
            warnings.simplefilter("ignore")
            with time_budget(budget, step):
                export_onnx(exported, tuple(example.shape[1:]), Path(tmp) / "model.onnx")
            if plan.qat:
                step = "QAT preparation (torch.export, fake int8)"
                _say(plan, step)
                from slimline.compress.qat import prepare

                x = torch.rand(example.shape, generator=torch.Generator().manual_seed(0)) * 255
                try:
                    with time_budget(budget, step):
                        fake = prepare(exported, x, Path(tmp) / "model.onnx")
                except OutOfTime:
                    raise
                except Exception as err:  # noqa: BLE001 - named below, with the way out
                    fix = (f"{_user_code(err)}Take {plan.section} out of qat.models (or set qat.enabled: "
                           f"false), or change the model")
                    return _failed(plan, step, err, fix=fix), None, None
                step = "QAT's simulation against static int8"
                _say(plan, step)
                with time_budget(budget, step):
                    blind = _simulation_gaps(fake, Path(tmp) / "model.onnx", x.numpy())
    except StageError as err:
        if step == "derive":
            return f"{plan.section} ({plan.what}): {err}", None, None
        return _failed(plan, step, err), None, None
    except OutOfTime as err:
        return (f"{plan.section} ({plan.what}): {err} (prune.graph_timeout_s): raise it if the model is only "
                f"slow to export, or change the model (see docs/own-model.md)"), None, None
    except Exception as err:  # noqa: BLE001 - every failure becomes one line for the user
        return _failed(plan, step, err), None, None
    return None, _graph(plan, model, example, budget), blind


def _live_batchnorm(model):
    """A copy of the model whose BatchNorm scales are never exactly 0 (timm's ResNets start
    their last BatchNorm of each block at 0): torchao's QAT divides by them, and the untrained
    model's outputs would be NaN where a trained one's are not. Only the structure matters here."""
    import copy

    from torch import nn

    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None:
            m.weight.data[m.weight.data == 0] = 1.0
    return model


def _simulation_gaps(fake, onnx_path: Path, x) -> dict | None:
    """{ops, of} when static int8 quantizes tensors the fake quantization does not simulate."""
    import logging

    from slimline.compress.qat import simulation_gaps

    # ORT's quantizer warns on the root logger for each weight it quantizes per tensor (a
    # LayerNorm's, say): the quantize stage's log has that, the check's summary has no use for it
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        ops, of = simulation_gaps(fake, onnx_path, x)
    finally:
        root.setLevel(level)
    return {"ops": ops, "of": of} if ops else None


def _graph(plan: _Plan, model, example, budget: float):
    """Why Torch-Pruning's graph of the model is unavailable (a GraphUnavailable), or None:
    the same call structured pruning starts with, within the same budget."""
    import warnings

    from slimline.compress import pruning, pruning_ratios

    _say(plan, pruning_ratios.GRAPH)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its advice on unwrapped parameters: noise in a check
            pruning_ratios.groups(model, example, [pruning.classifier(model)], budget)
    except Exception as err:  # noqa: BLE001 - the model runs: whatever fails here is Torch-Pruning's
        return pruning.GraphUnavailable(err)
    return None


def _user_code(err: Exception) -> str:
    """Where in the model's own code torch.export stopped ("At file:line in fn: `code`. "), from
    the traced frames its message lists; "" when it lists none outside torch."""
    import re

    # torch.export names the user's frame in its message, as a traceback line or a graph comment
    frames = [m for pattern in (r'File "([^"]+)", line (\d+), in (\w+)\n\s*(.*)',
                                r"# File: (\S+):(\d+) in (\w+), code: (.*)")
              for m in re.finditer(pattern, str(err)) if "site-packages" not in m.group(1)]
    if not frames:
        return ""
    path, line, fn, code = frames[-1].groups()
    return f"At {Path(path).name}:{line} in {fn}: `{code.strip()}`. "


def _failed(plan: _Plan, step: str, err: Exception,
            fix: str = "Change the model (see docs/own-model.md) or its kwargs") -> str:
    from slimline.compress.pruning import error_text

    return f"{plan.section} ({plan.what}): {step} failed: {error_text(err)}. {fix}"


def _size_hint(plan: _Plan, model, example) -> str:
    """For a timm model built for one input size (a vision transformer's patch grid), the
    kwarg that builds it for the data's."""
    from slimline.zoo import fixed_input_size

    fixed = fixed_input_size(model)
    if fixed is None or "img_size" in plan.spec.kwargs:
        return ""
    h, w = example.shape[-2:]
    return (f": it takes {fixed[0]}x{fixed[1]} images only; build it for the data's with "
            f"{plan.kwargs_in}.kwargs: {{img_size: [{h}, {w}]}}")
