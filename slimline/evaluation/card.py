"""The model card shipped with the selected model: models/ship/MODEL_CARD.md.

Two halves: `lineage()` gathers what the card cites that evaluate did not measure
(content hashes, params, data facts, what compression was done) into evaluate.json,
and `render()` writes the card from evaluate.json alone, so every number in the card
is one the report holds (tests/unit/test_card.py checks exactly that).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from slimline.errors import StageError
from slimline.evaluation.manifests import CALIBRATED
from slimline.evaluation.report import change

# The params sections each kind of source was made with, in pipeline order.
BASE_SECTIONS = ["data", "baseline", "train"]


def file_md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def dir_md5(folder: Path) -> str:
    """A folder's content hash as DVC computes it (the `md5` dvc.lock records for an
    output folder): md5 of the sorted JSON listing of (relpath, file md5), plus `.dir`.
    A reader can match the card against dvc.lock and the DVC cache."""
    if not folder.is_dir():
        raise StageError(f"{folder} is missing: the model card cannot hash it (run `dvc repro` for the stage "
                         f"that writes it)")
    entries = [{"md5": file_md5(p), "relpath": p.relative_to(folder).as_posix()}
               for p in sorted(folder.rglob("*")) if p.is_file()]
    entries.sort(key=lambda e: e["relpath"])
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest() + ".dir"


def _features(features) -> str:
    return features if isinstance(features, str) else ", ".join(f"{t} <- {s}" for t, s in features)


def path_of(source: str, params) -> tuple[list[str], list[str], list[str]]:
    """(model folders under models/, params sections, compression steps) on the way to
    the fp32 network `source` (a name from quantize's manifest)."""
    if source == "baseline":
        return ["baseline"], list(BASE_SECTIONS), []
    if source == "student":
        d = params.distill
        return (["baseline", "student"], BASE_SECTIONS + ["student", "distill"],
                [f"knowledge distillation from the baseline (Hinton logit KD, temperature {d.temperature:g}, "
                 f"alpha {d.alpha:g}"
                 + ("" if d.features == "off" else
                    f"; FitNets feature hints, distill.features {_features(d.features)}, weight "
                    f"{d.feature_weight:g}, where the models have maps to pair: "
                    f"reports/distill.json lists them")
                 + ") into a smaller student"])
    if source == "student_scratch":
        return (["student_scratch"], ["data", "student", "train", "distill"],
                ["a smaller student trained from scratch, without KD (the distillation ablation)"])
    if source.startswith("prune_"):
        p = params.prune
        models, sections, steps = path_of(p.source, params)
        method = source.removeprefix("prune_")
        what = {"unstructured": f"{p.amount:.0%} of the weights zeroed (magnitude)",
                "structured": f"{p.amount:.0%} of the channels removed (Torch-Pruning)",
                "layer": f"{p.layers_to_remove} layer(s) removed"}.get(method, method)
        teacher = ["baseline"] if p.distill and "baseline" not in models else []
        return (teacher + models + [f"pruned/{method}"], sections + ["prune"],
                steps + [f"pruning `{method}` of the {p.source}: {what}, in {p.steps} step(s) with "
                         f"{p.finetune_epochs} fine-tuning epoch(s) each"
                         + (" under KD from the baseline" if p.distill else "")])
    raise ValueError(f"unknown source {source!r}: no lineage rule for it")


def _qat_step(entry: dict, params) -> str:
    q, d = entry["qat"], params.distill
    return (f"quantization-aware training: {q['epochs']} epoch(s) of fine-tuning with fake int8 under KD "
            f"from the baseline (temperature {d.temperature:g}, alpha {d.alpha:g}) at lr {q['lr']:g}, "
            f"epoch {q['best_epoch']} chosen on val; then int8 static quantization (ONNX Runtime, QDQ, "
            f"per-channel weights) with the trained activation ranges")


def lineage(chosen: dict, entry: dict, params, data_dir: Path, models_dir: Path,
            meta: dict, commit: str | None, calibration: dict | None) -> dict:
    """What the card cites about how the chosen variant came to be, hashed from the
    folders evaluate reads (dvc.lock is not one of its deps). entry: its manifest entry
    (manifests.read_variants')."""
    models, sections, steps = path_of(chosen["source"], params)
    quant = chosen["quantization"]
    if quant == "qat":
        teacher = [] if "baseline" in models else ["baseline"]
        models = teacher + models + [f"qat/{chosen['source']}"]
        sections = sections + ["distill", "quantize", "qat"]
        steps = steps + [_qat_step(entry, params)]
    elif quant != "fp32":
        sections = sections + ["quantize"]
        steps = steps + [{"dynamic": "int8 dynamic quantization (ONNX Runtime): int8 weights, "
                                     "activations quantized per call",
                          "static": "int8 static quantization (ONNX Runtime, QDQ, per-channel weights), "
                                    "activation ranges from calibration",
                          "fp16": "fp16 weights and activations"}.get(quant, quant)
                         # accuracy-aware static int8: the nodes it kept out of int8
                         + (f"; {len(entry['fp32_nodes'])} node(s) kept in fp32 to stay within "
                            f"quantize.max_accuracy_drop: " + ", ".join(f"`{n}`" for n in entry["fp32_nodes"])
                            if entry.get("fp32_nodes") else "")]
    dumped = params.model_dump(mode="json")
    return {
        "commit": commit,
        "command": (f"git checkout {commit.removesuffix('-dirty')} && dvc pull && dvc repro evaluate"
                    if commit else "dvc repro evaluate"),
        "data": {"path": data_dir.as_posix(), "md5": dir_md5(data_dir)},
        "models": [{"path": (models_dir / m).as_posix(), "md5": dir_md5(models_dir / m)} for m in models],
        "onnx": {"path": entry["path"], "md5": file_md5(Path(entry["path"]))},
        "params": {s: dumped[s] for s in dict.fromkeys(sections)},
        "compression": steps or ["none: the fp32 baseline itself"],
        "calibration": calibration if quant in CALIBRATED else None,
        "classes": meta.get("classes") or [str(i) for i in range(int(meta["num_classes"]))],
        "sizes": meta["sizes"],
        "checks": meta.get("checks", []),
    }


def _pct(x: float) -> str:
    return f"{x * 100:.2f}%"


def _ci(ci: list[float]) -> str:
    return f"[{_pct(ci[0])}, {_pct(ci[1])}]"


def _isa(flags: list[str]) -> str:
    has = set(flags)
    marks = {"AVX2": "avx2" in has, "AVX512": any(f.startswith("avx512") for f in has),
             "VNNI": bool(has & {"avx512_vnni", "avx_vnni", "avx512vnni"}),
             "AMX": any(f.startswith("amx") for f in has)}
    return ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in marks.items())


def render(report: dict) -> str:
    """MODEL_CARD.md from evaluate.json's content (report): numbers come from it only."""
    by = {v["name"]: v for v in report["variants"]}
    sel, base, hw = report["selection"], by[report["baseline"]], report["hardware"]
    if report["selected"] is None:
        return (f"# Model card\n\nNo model shipped: {sel['why']}. "
                f"`reports/evaluate.md` lists each variant's misses.\n")
    v, lin = by[report["selected"]], report["lineage"]
    rt = report["runtimes"][v["runtime"]]
    lo, hi = sel["latency_ratio_range"]
    params_yaml = "\n".join(f"{s}: {json.dumps(p, sort_keys=True)}" for s, p in lin["params"].items())
    order = ["train", "val", "test"]  # meta.json keeps its keys sorted
    sizes = ", ".join(f"{k} {lin['sizes'][k]:,}" for k in sorted(lin["sizes"], key=lambda k: (
        order.index(k) if k in order else len(order), k)))
    c = lin["commit"] or ""
    commit = ("unknown (not a git checkout)" if not c else f"`{c.removesuffix('-dirty')}`"
              + (" plus uncommitted changes (a pipeline run writes dvc.lock only after the stage)"
                 if c.endswith("-dirty") else ""))
    checks = "\n".join(f"- `{c['name']}`: {c['message']}" for c in lin["checks"]) or \
        "- (the data predates recorded checks)"
    cal = lin.get("calibration")
    cal_line = (f" Calibration: {cal['batches']} batch(es) of {cal['batch_size']} training images, "
                f"min/max ranges.\n" if cal else "\n")
    rows = [
        ("test accuracy (CI95)", f"{_pct(v['accuracy'])} {_ci(v['accuracy_ci95'])}",
         f"{_pct(base['accuracy'])} {_ci(base['accuracy_ci95'])}"),
        ("val accuracy (CI95)", f"{_pct(v['val_accuracy'])} {_ci(v['val_ci95'])}",
         f"{_pct(base['val_accuracy'])} {_ci(base['val_ci95'])}"),
        ("file bytes", f"{v['bytes']:,}", f"{base['bytes']:,}"),
        ("FLOPs per image", f"{v['flops']:,}", f"{base['flops']:,}"),
        ("p50 / p95 / p99, b1 (ms)", f"{v['p50_ms_b1']:.4f} / {v['p95_ms_b1']:.4f} / {v['p99_ms_b1']:.4f}",
         f"{base['p50_ms_b1']:.4f} / {base['p95_ms_b1']:.4f} / {base['p99_ms_b1']:.4f}"),
        ("throughput, b256 (images/s)", f"{v['throughput_b256']:,.0f}", f"{base['throughput_b256']:,.0f}"),
        ("p50 over its runtime's floor", f"{v['floor_multiple']:.2f}x", f"{base['floor_multiple']:.2f}x"),
    ]
    table = "\n".join(f"| {a} | {b} | {c} |" for a, b, c in rows)
    # the same file on the other runtimes: what shipping it there would give
    others = sorted((o for o in report["variants"] if o["variant"] == v["variant"] and o is not v),
                    key=lambda o: o["p50_ms_b1"])
    runner_up = "\n".join(
        f"- {o['runtime']} {report['runtimes'][o['runtime']]['version']} (precision: {o['precision']}): "
        f"p50 {o['p50_ms_b1']:.4f} ms (speed-up over the baseline {o['latency_ratio']:.2f}x, against "
        f"{v['latency_ratio']:.2f}x shipped), test accuracy {_pct(o['accuracy'])}, throughput b256 "
        f"{o['throughput_b256']:,.0f} images/s"
        + ("" if o["within_budget"] else f"; not eligible: {'; '.join(o['budget_misses'])}")
        for o in others) or "- (no other runtime was measured)"
    skipped = [s_ for s_ in report.get("skipped", []) if s_["variant"] == v["variant"]]
    runner_up += "".join(f"\n- {s_['runtime']}: could not load it ({s_['reason']})" for s_ in skipped)
    ir = ", its OpenVINO IR `model.xml` + `.bin`" if v["runtime"].startswith("openvino") else ""
    return f"""# Model card: `{v['variant']}` on {v['runtime']}

The model in this folder (`model.onnx`{ir}; labels in `labels.json`; input and runtime in
`manifest.json`), chosen by the `evaluate` stage: {sel['why']}. The full comparison of every
variant on every runtime is in `reports/evaluate.md`.

## Runtime
{v['runtime']} {rt['version']} (precision: {v['precision']}), with the settings in `manifest.json`
(`slimline predict` applies them). The same file on the other runtimes, measured in the same rounds:
{runner_up}

## Lineage
- Commit: {commit}
- Reproduce: `{lin['command']}`
- Data: `{lin['data']['path']}` md5 `{lin['data']['md5']}`
{chr(10).join(f"- Model: `{m['path']}` md5 `{m['md5']}`" for m in lin['models'])}
- Shipped file: `{lin['onnx']['path']}` md5 `{lin['onnx']['md5']}`

The data and model hashes are DVC's: they match the `md5` of these outputs in `dvc.lock`
and name them in the DVC cache; the shipped file's is its own md5. The params that made it,
by section:

```yaml
{params_yaml}
```

## Data
Classes: {', '.join(f'`{c}`' for c in lin['classes'])}. Split sizes: {sizes}.
Checks passed before anything trained (Great Expectations):
{checks}

## Metrics
| metric | shipped `{v['name']}` | baseline `{base['name']}` (the reference) |
|---|---|---|
{table}

Against the baseline (above 1: smaller, faster): bytes ratio **{sel['size_ratio']:.2f}x**, p50 speed-up
**{sel['latency_ratio']:.2f}x** (per-round range [{lo:.2f}, {hi:.2f}] over the timing rounds), validation \
accuracy
{change(sel['val_accuracy_drop_pt'])} pt, test accuracy {change(sel['accuracy_drop_pt'])} pt.
Runtime floor of {v['runtime']} (a one-op graph, same settings): {rt['floor_p50_ms']:.4f} ms.

## Compression
{chr(10).join(f'- {s}' for s in lin['compression'])}
- Format: `{v['quantization']}`.{cal_line}- Which layers hurt accuracy, for int8 and for pruning: \
[`reports/sensitivity.md`](../../reports/sensitivity.md).

## Hardware
Measured on {hw['cpu']} ({hw['cores']} cores, {hw['threads']} runtime thread(s)),
{v['runtime']} {rt['version']}. ISA: {_isa(hw['isa'])} (flags: {', '.join(hw['isa']) or 'unknown'}).

## Limits
- Latency and throughput hold for this CPU model and thread count only. int8 kernels
  differ most between CPUs: the same int8 model can be faster, slower, or less accurate
  elsewhere (VNNI and AMX change the kernels; accuracy of one QDQ network has been
  reported several points apart on two CPU families). Re-run `evaluate` on the target.
- The p50 is the median of {sel['rounds']} rounds, the pairs taking turns in each; one beats another only
  when faster by more than {sel['latency_margin']:.0%} in {sel['wins_needed']} of them.
- Accuracy is measured on the held-out splits of this data only ({sizes}); the intervals
  (CI95) are Wilson score intervals, and say nothing about data from elsewhere.
- Selection used validation accuracy; test accuracy was not looked at to choose.
"""
