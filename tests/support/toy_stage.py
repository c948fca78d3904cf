"""The toy project's stages: each a fraction of a second, no torch, wired like the real ones.

    python -m tests.support.toy_stage STAGE [METHOD]

Same names, params, deps and outputs as dvc.yaml's stages (tests/support/toy.py writes
the toy dvc.yaml from the real one), and reports in the real schemas: the tiny build's
own reports (toy_snapshot/), with the values that depend on params set from them. So the
flow, the regression gate, the artifacts, DVC's run cache and the S3 remote see what they
see in a real run, while the plumbing tests pay no training. Every output is a function
of the stage's params and input files: reruns are bit-identical, and a changed param
changes the outputs DVC hashes.

What the plumbing tests need from a stage, besides outputs:
- train_baseline writes an epoch checkpoint, prints the real epoch line and sleeps
  SECONDS_PER_EPOCH per epoch (a test stops a long run); it resumes from its last
  checkpoint and removes them after success, as the real trainer does;
- prepare refuses non-finite pixels of an npz source, naming the check (pixels_finite);
- evaluate's latencies move with evaluate.repeats (the dashboard shows what changed);
- train_baseline's report follows the baseline structure, so a structure search ranks its
  candidates: params and FLOPs counted as the real cnn has them, val/test accuracy a few
  images off the snapshot's as the structure's digest picks (the snapshot's own numbers
  for its structure); a structure too deep for the input fails as the real stage does
  (`ERROR [train_baseline]: input 28x28 is too small: ...`, exit 2); and it leaves a run
  record (train seconds, threads, a latency that follows the FLOPs) in reports/ and in
  $SLIMLINE_RUN_RECORD_DIR, where the search reads it.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

import yaml

from slimline.io import atomic_dir, write_json, write_text
from slimline.report import keep_run_record, write_report
from slimline.stage import die_with_parent

SNAPSHOT = Path(__file__).resolve().parent / "toy_snapshot"
SECONDS_PER_EPOCH = 0.05


def params() -> dict:
    return yaml.safe_load(Path("params.yaml").read_text()) or {}


def digest(*parts) -> str:
    """A stable hash of params sections and input files: what an output's bytes follow."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            files = sorted(p for p in part.rglob("*") if p.is_file()) if part.is_dir() else [part]
            for f in files:
                h.update(f.read_bytes())
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()


def snapshot(rel: str) -> dict:
    return json.loads((SNAPSHOT / rel).read_text())


def report(stem: str, results: dict, run: dict | None = None) -> None:
    """reports/<stem>.json, .run.json, and the snapshot's markdown stamped with the JSON's
    hash, by the real stages' writer."""
    write_report(stem, results, (SNAPSHOT / "reports" / f"{stem}.md").read_text(),
                 {"toy_stage": True, **(run or {})})


def model_folder(out: Path, rel: str, key: str) -> None:
    """A model folder: weights whose bytes follow `key`, and the snapshot's structure.json."""
    with atomic_dir(out) as tmp:
        (tmp / "model.safetensors").write_bytes(hashlib.sha256(key.encode()).digest() * 64)
        shutil.copy(SNAPSHOT / rel / "structure.json", tmp / "structure.json")


def curves(stage: str, epochs: int, key: str) -> None:
    """dvclive's per-epoch curves (the DVC plots of the training stages)."""
    base = Path("dvclive") / stage / "plots" / "metrics"
    shutil.rmtree(base, ignore_errors=True)
    for split in ("train", "val"):
        for metric in ("acc", "loss"):
            value = int(key[:4], 16) / 65536
            rows = "".join(f"{e}\t{value + e / 1000:.6f}\n" for e in range(epochs))
            write_text(base / split / f"{metric}.tsv", f"step\t{metric}\n{rows}")


def prepare(p: dict) -> None:
    data = p.get("data") or {}
    if data.get("source") == "npz" and data.get("path"):
        import numpy as np

        with np.load(data["path"]) as arrays:
            if not np.isfinite(arrays["x"]).all():
                raise ToyError("data validation failed: pixels_finite: the images hold NaN or inf pixels")
    key = digest(data)
    with atomic_dir(Path("data/prepared")) as tmp:
        for split in ("train", "val", "test"):
            (tmp / f"{split}.safetensors").write_bytes(f"{split}:{key}".encode())
        shutil.copy(SNAPSHOT / "data/prepared/meta.json", tmp / "meta.json")
    report("prepare", snapshot("reports/prepare.json"))


def cnn_flops(s, input_shape: tuple[int, int, int], num_classes: int = 10) -> int:
    """FLOPs of one batch-1 forward pass of the built-in cnn, as torch's counter counts them
    (slimline.model.count_flops): 2 per multiply-add of each conv and linear layer."""
    c, h, w = input_shape
    macs = 0
    for ch in s.conv_channels:
        h, w = h + 2 * s.padding - s.kernel_size + 1, w + 2 * s.padding - s.kernel_size + 1
        macs += h * w * ch * c * s.kernel_size ** 2
        if s.pool > 1:
            h, w = h // s.pool, w // s.pool
        c = ch
    width = c * h * w
    for out in (*s.hidden, num_classes):
        macs += width * out
        width = out
    return 2 * macs


def baseline_results(net: dict, epochs: int) -> dict:
    """train_baseline's report for the `baseline` section: the snapshot's for the snapshot's
    structure (and for a model other than the cnn). Another structure gets its own params and
    FLOPs, counted as the real model has them, and val/test accuracy a step of one val (two
    test) image(s) away from the snapshot's, -4..+4 as its digest picks: the structure search
    ranks them. A structure that does not fit the input fails as the real stage does."""
    from slimline.errors import ShapeError
    from slimline.params import Structure, param_count

    results = {**snapshot("reports/train_baseline.json"), "epochs": epochs}
    if (net.get("model") or "cnn") != "cnn":
        return results
    s = Structure.model_validate({k: v for k, v in net.items() if k in Structure.model_fields})
    structure = s.model_dump(mode="json")
    meta = json.loads((Path("data/prepared") / "meta.json").read_text())
    shape = tuple(meta["input_shape"])
    try:
        params_ = param_count(s, shape, meta["num_classes"])
    except ShapeError as err:  # the message the real stage prints (slimline.params.feature_shape)
        raise ToyError(str(err)) from None
    if structure == results["structure"]:
        return results
    step = int(digest(structure)[:8], 16) % 9 - 4
    val_n, test_n = meta["sizes"]["val"], meta["sizes"]["test"]
    return {**results, "structure": structure, "params": params_,
            "flops": cnn_flops(s, shape, meta["num_classes"]),
            "val_accuracy": (round(results["val_accuracy"] * val_n) + step) / val_n,
            "test_accuracy": (round(results["test_accuracy"] * test_n) + 2 * step) / test_n}


def train_baseline(p: dict) -> None:
    train = p.get("train") or {}
    epochs = int(train.get("epochs", 15))
    results = baseline_results(p.get("baseline") or {}, epochs)  # before any work, as the real stage
    started = time.perf_counter()
    key = digest(p.get("baseline"), train, Path("data/prepared"))
    resume = Path(".slimline/resume") / f"train_baseline-{key[:16]}"
    done = sorted(resume.glob("epoch-*.pt"))
    start = int(done[-1].stem.split("-")[1]) if done else 0
    if start:
        print(f"resuming from checkpoint after epoch {start}", flush=True)
    resume.mkdir(parents=True, exist_ok=True)
    for epoch in range(start + 1, epochs + 1):
        time.sleep(SECONDS_PER_EPOCH)
        tmp = resume / f".epoch-{epoch:04d}.tmp"
        tmp.write_bytes(key.encode())
        tmp.replace(resume / f"epoch-{epoch:04d}.pt")  # atomic, as the real checkpoints
        print(f"baseline epoch {epoch}/{epochs}: loss 1.0 acc 0.5", flush=True)
    model_folder(Path("models/baseline"), "models/baseline", key)
    curves("train_baseline", epochs, key)
    # A latency that follows the FLOPs: a stand-in for the real stage's ONNX Runtime timing.
    p50 = round(0.01 + results["flops"] / 2e8, 6)
    report("train_baseline", results, {"device": "cpu", "train_seconds": time.perf_counter() - started,
                                       "num_threads": int(train.get("num_threads", 2)),
                                       "ort_p50_ms_b1": p50, "ort_p95_ms_b1": round(1.2 * p50, 6)})
    keep_run_record("train_baseline")  # the structure search reads it there
    shutil.rmtree(resume)


def distill(p: dict) -> None:
    key = digest(p.get("student"), p.get("distill"), p.get("train"), Path("data/prepared"),
                 Path("models/baseline"))
    epochs = int((p.get("train") or {}).get("epochs", 15))
    for name in ("scratch", "student"):
        for epoch in range(1, epochs + 1):
            print(f"{name} epoch {epoch}/{epochs}: loss 1.0 acc 0.5", flush=True)
    model_folder(Path("models/student"), "models/student", key)
    model_folder(Path("models/student_scratch"), "models/student_scratch", key + "scratch")
    curves("distill", epochs, key)
    curves("distill_scratch", epochs, key + "scratch")
    results = snapshot("reports/distill.json")
    results["temperature"] = (p.get("distill") or {}).get("temperature", results.get("temperature"))
    report("distill", results)


def prune(p: dict, method: str) -> None:
    cfg, source = p.get("prune") or {}, (p.get("prune") or {}).get("source", "baseline")
    key = digest(cfg, method, Path("data/prepared"), Path(f"models/{source}"), Path("models/baseline"))
    model_folder(Path(f"models/pruned/{method}"), f"models/pruned/{method}", key)
    report(f"prune_{method}", snapshot(f"reports/prune_{method}.json"))


def quantize(p: dict) -> None:
    manifest = snapshot("models/onnx/manifest.json")
    key = digest(p.get("quantize"), Path("data/prepared"), Path("models"))
    with atomic_dir(Path("models/onnx")) as tmp:
        for entry in manifest["variants"]:
            (tmp / entry["file"]).write_bytes(f"{entry['name']}:{key}".encode())
        write_json(tmp / "manifest.json", manifest)
    report("quantize", snapshot("reports/quantize.json"))
    for name in ("sensitivity.md", "sensitivity.png"):
        shutil.copy(SNAPSHOT / "reports" / name, Path("reports") / name)


def qat(p: dict, model: str) -> None:
    """As the real stage with qat.enabled false (the toy's params): an empty manifest."""
    if (p.get("qat") or {}).get("enabled"):
        raise ToyError("the toy has no QAT; the tiny build runs it")
    with atomic_dir(Path(f"models/qat/{model}")) as tmp:
        write_json(tmp / "manifest.json", {"variants": [], "disabled": "qat.enabled is false"})
    write_report(f"qat_{model}", {"model": model, "enabled": False, "disabled": "qat.enabled is false"},
                 f"## qat_{model}\n\nNo QAT variant: qat.enabled is false.\n", {"toy_stage": True})


def evaluate(p: dict) -> None:
    cfg = p.get("evaluate") or {}
    results = snapshot("reports/evaluate.json")
    summary = snapshot("reports/evaluate_summary.json")
    # The latencies are measurements: they follow evaluate's params here, as timing moves:
    # every variant's, and the selected one's in the headline metrics (dvc metrics diff and
    # the dashboard's "Changes against the last commit" show those, not the variant rows).
    scale = 1 + (int(digest(cfg)[:4], 16) % 100) / 1000
    for row in (*results["variants"], results["selection"], summary):
        for k in [k for k in row if k.startswith("p") and k.endswith("_ms_b1")]:
            row[k] = row[k] * scale
    with atomic_dir(Path("models/ship")) as tmp:
        for name in ("MODEL_CARD.md", "manifest.json", "labels.json"):
            shutil.copy(SNAPSHOT / "models/ship" / name, tmp / name)
        (tmp / "model.onnx").write_bytes(digest(Path("models/onnx")).encode())
    for name in ("pareto_latency.png", "pareto_bytes.png"):
        shutil.copy(SNAPSHOT / "reports" / name, Path("reports") / name)
    write_json(Path("reports/evaluate_summary.json"), summary)
    report("evaluate", results)


class ToyError(Exception):
    pass


STAGES = {"prepare": prepare, "train_baseline": train_baseline, "distill": distill, "prune": prune,
          "quantize": quantize, "qat": qat, "qat_prune": lambda p, method: qat(p, f"prune_{method}"),
          "evaluate": evaluate}


def main(argv: list[str]) -> int:
    die_with_parent()  # as every real stage: never outlive the dvc that runs it
    stage, *rest = argv
    try:
        STAGES[stage](params(), *rest)
    except ToyError as err:
        print(f"ERROR [{stage}]: {err}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
