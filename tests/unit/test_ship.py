"""The ship bundle (slimline.evaluation.ship) and the predict CLI (slimline.predict) on a tiny
exported model, shipped on ONNX Runtime and on OpenVINO."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from slimline.params import Structure

SHAPE = (1, 8, 8)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny seeded model exported to ONNX: (torch model, onnx dir, (its manifest entries,
    calibration) as evaluate reads them, prep)."""
    from slimline.compress.export import export_onnx
    from slimline.data.dataset import Prepared
    from slimline.model import ModelSpec, build_model

    torch.manual_seed(0)
    spec = ModelSpec(structure=Structure(conv_channels=[4], hidden=[8]).model_dump(), input_shape=SHAPE,
                     num_classes=3, mean=(0.0,), std=(1.0,))
    model = build_model(spec).eval()
    onnx_dir = tmp_path_factory.mktemp("exp") / "onnx"
    export_onnx(model, SHAPE, onnx_dir / "m.onnx")
    entry = {"name": "m", "file": "m.onnx", "path": (onnx_dir / "m.onnx").as_posix(), "source": "baseline",
             "source_dir": "unused", "quantization": "fp32", "opset": 17}
    variants = ([entry], {"batches": 2, "batch_size": 4})
    rng = np.random.default_rng(0)
    splits = {k: (rng.uniform(0, 255, (n, *SHAPE)).astype(np.float32), rng.integers(0, 3, n))
              for k, n in (("train", 12), ("val", 6), ("test", 6))}
    prep = Prepared(splits=splits, meta={"input_shape": list(SHAPE), "num_classes": 3,
                                         "mean": [0.0], "std": [1.0]})
    return model, onnx_dir, variants, prep


CHOSEN = {"name": "m@onnxruntime", "variant": "m", "runtime": "onnxruntime", "precision": "as stored",
          "accuracy": 0.5, "accuracy_ci95": [0.2, 0.8], "val_accuracy": 0.6, "bytes": 1234,
          "p50_ms_b1": 0.01, "p95_ms_b1": 0.012, "p99_ms_b1": 0.02, "throughput_b256": 1e5,
          "params": 1, "quantization": "fp32"}
# the pair's runtime as reports/evaluate.json's "runtimes" has it
RUNTIME = {"version": "x.y.z", "settings": {"providers": ["CPUExecutionProvider"], "intra_op_num_threads": 1},
           "floor_p50_ms": 0.005, "floor_p50_ms_rounds": [0.005] * 5}
HW = {"cpu": "test cpu", "cores": 1, "threads": 1, "onnxruntime": "x.y.z", "torch": "t", "python": "p",
      "gpu": None}


@pytest.fixture(scope="module")
def ship(exported, tmp_path_factory):
    from slimline.evaluation.ship import write_ship

    _, _, variants, prep = exported
    out = tmp_path_factory.mktemp("ship") / "ship"
    write_ship(out, dict(CHOSEN), *variants, prep, HW, why="", card="# Model card: `m`\n",
               runtime=RUNTIME)
    return out


def _torch_top1(model, x):
    with torch.no_grad():
        return model(torch.from_numpy(np.asarray(x, np.float32).reshape(-1, *SHAPE))).argmax(1).numpy()


def test_ship_bundle_files_and_manifest(ship, exported):
    _, onnx_dir, _, _ = exported
    assert sorted(p.name for p in ship.iterdir()) == \
        ["MODEL_CARD.md", "labels.json", "manifest.json", "model.onnx"]
    assert (ship / "MODEL_CARD.md").read_text() == "# Model card: `m`\n"  # inside the atomic bundle
    assert (ship / "model.onnx").read_bytes() == (onnx_dir / "m.onnx").read_bytes()
    assert json.loads((ship / "labels.json").read_text()) == ["0", "1", "2"]
    m = json.loads((ship / "manifest.json").read_text())
    assert m["selected"] == "m@onnxruntime" and m["variant"] == "m"
    assert m["source"] == "baseline" and m["opset"] == 17 and m["files"] == {"onnx": "model.onnx"}
    assert m["runtime"] == {"name": "onnxruntime", "version": "x.y.z", "precision": "as stored",
                            "settings": RUNTIME["settings"]}
    assert m["quantization"] == {"kind": "fp32"}  # calibration settings belong to static int8 only
    assert m["input"]["shape"] == ["batch", 1, 8, 8] and m["input"]["dtype"] == "float32"
    assert m["metrics"] == {k: CHOSEN[k] for k in ("accuracy", "accuracy_ci95", "val_accuracy", "bytes",
                                                   "p50_ms_b1", "p95_ms_b1", "p99_ms_b1", "throughput_b256")}
    assert m["hardware"] == HW and "onnxruntime" not in m  # the runtime is under "runtime" now
    assert "git_commit" in m
    assert m["git_commit"] is None or isinstance(m["git_commit"], str)


def test_bundle_predict_matches_torch(ship, exported):
    from slimline.predict import Bundle

    model = exported[0]
    b = Bundle(ship)
    assert b.shape == SHAPE and (b.runtime, b.threads) == ("onnxruntime", 1)
    x = np.random.default_rng(1).uniform(0, 255, (50, *SHAPE)).astype(np.float32)
    preds = b.predict(x)
    assert len(preds) == 50
    assert [int(label) for label, _ in preds] == _torch_top1(model, x).tolist()
    assert all(1 / 3 - 1e-6 <= p <= 1.0 for _, p in preds)
    # (N, H, W) is accepted for one-channel models
    assert b.predict(x[:, 0]) == preds
    with pytest.raises(ValueError, match=r"\(1, 8, 8\)"):
        b.predict(np.zeros((2, 1, 9, 9), np.float32))


def test_predict_cli_npz_json(ship, exported, tmp_path, capsys):
    from slimline.predict import main

    model = exported[0]
    x = np.random.default_rng(2).uniform(0, 255, (7, 8, 8)).astype(np.float32)
    path = tmp_path / "batch.npz"
    np.savez(path, x=x)
    assert main([str(path), "--bundle", str(ship), "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 7
    rows = [json.loads(line) for line in lines]
    assert [r["input"] for r in rows] == [f"{path}[{i}]" for i in range(7)]
    assert [int(r["label"]) for r in rows] == _torch_top1(model, x).tolist()
    assert all(0 < r["probability"] <= 1 for r in rows)


def test_predict_cli_png(ship, exported, tmp_path, capsys):
    from PIL import Image

    from slimline.predict import main

    model = exported[0]
    pixels = np.random.default_rng(3).integers(0, 256, (8, 8), dtype=np.uint8)
    png = tmp_path / "digit.png"
    img = Image.fromarray(pixels)
    assert img.mode == "L"
    img.save(png)
    assert main([str(png), "--bundle", str(ship), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert len(rows) == 1 and rows[0]["input"] == str(png)
    assert int(rows[0]["label"]) == _torch_top1(model, pixels)[0]
    # plain (non-JSON) output: tab-separated
    assert main([str(png), "--bundle", str(ship)]) == 0
    out = capsys.readouterr().out.strip().split("\t")
    assert out[0] == str(png) and out[1] == rows[0]["label"]


def test_predict_cli_wrong_png_size_exits_2(ship, tmp_path, capsys):
    from PIL import Image

    from slimline.predict import main

    png = tmp_path / "big.png"
    Image.fromarray(np.zeros((6, 10), np.uint8)).save(png)  # 10 wide, 6 high
    assert main([str(png), "--bundle", str(ship)]) == 2
    err = capsys.readouterr().err
    assert "8x8" in err and "10x6" in err and str(png) in err


def test_predict_cli_npz_without_x_exits_2(ship, tmp_path, capsys):
    from slimline.predict import main

    path = tmp_path / "bad.npz"
    np.savez(path, images=np.zeros((2, 8, 8)))
    assert main([str(path), "--bundle", str(ship)]) == 2
    assert "'x'" in capsys.readouterr().err


def test_a_qat_bundle_records_its_calibration_and_recipe(exported, tmp_path):
    from slimline.evaluation.ship import write_ship

    _, _, (entries, calibration), prep = exported
    qat = {**entries[0], "name": "m.int8_qat", "quantization": "qat",
           "qat": {"epochs": 2, "lr": 0.005, "best_epoch": 1}}
    write_ship(tmp_path / "ship", CHOSEN | {"variant": "m.int8_qat"}, [*entries, qat], calibration, prep, HW,
               why="")
    m = json.loads((tmp_path / "ship" / "manifest.json").read_text())
    assert m["variant"] == "m.int8_qat" and m["quantization"] == {
        "kind": "qat", "batches": 2, "batch_size": 4, "qat": {"epochs": 2, "lr": 0.005, "best_epoch": 1}}


def test_write_ship_without_choice(exported, tmp_path):
    from slimline.evaluation.ship import write_ship

    _, _, variants, prep = exported
    out = tmp_path / "ship"
    write_ship(out, None, *variants, prep, HW, why="no variant meets every budget: m: too big",
               card="# Model card\n\nNo model shipped: no variant meets every budget.\n")
    assert sorted(p.name for p in out.iterdir()) == ["MODEL_CARD.md", "manifest.json"]
    assert "No model shipped" in (out / "MODEL_CARD.md").read_text()
    assert json.loads((out / "manifest.json").read_text()) == {
        "selected": None, "reason": "no variant meets every budget: m: too big"}


def test_write_ship_without_choice_replaces_previous_bundle(exported, tmp_path):
    from slimline.evaluation.ship import write_ship

    _, _, variants, prep = exported
    out = tmp_path / "ship"
    write_ship(out, dict(CHOSEN), *variants, prep, HW, why="")
    assert (out / "model.onnx").exists()
    write_ship(out, None, *variants, prep, HW, why="nothing fits")
    assert [p.name for p in out.iterdir()] == ["manifest.json"]  # no stale model left behind
    assert [p.name for p in tmp_path.iterdir()] == ["ship"]  # no temp folders left behind


def test_predict_cli_unselected_bundle_exits_2_with_reason(exported, tmp_path, capsys):
    from slimline.evaluation.ship import write_ship
    from slimline.predict import Bundle, main

    _, _, variants, prep = exported
    out = tmp_path / "ship"
    write_ship(out, None, *variants, prep, HW, why="no variant meets every budget: m: slow")
    img = tmp_path / "x.npz"
    np.savez(img, x=np.zeros((1, 8, 8), np.float32))
    assert main([str(img), "--bundle", str(out)]) == 2
    err = capsys.readouterr().err
    assert "no variant meets every budget: m: slow" in err
    with pytest.raises(FileNotFoundError, match="holds no model"):
        Bundle(out)


def test_predict_cli_missing_bundle_exits_2(tmp_path, capsys):
    from slimline.predict import main

    img = tmp_path / "x.npz"
    np.savez(img, x=np.zeros((1, 8, 8), np.float32))
    assert main([str(img), "--bundle", str(tmp_path / "nope")]) == 2
    assert "manifest.json" in capsys.readouterr().err


# --- a bundle that ships on OpenVINO ---------------------------------------------------------

@pytest.fixture(scope="module")
def ov_runtime():
    from slimline.runtime import registry

    return {"version": registry.version("openvino"), "settings": registry.settings("openvino", 2),
            "floor_p50_ms": 0.004, "floor_p50_ms_rounds": [0.004] * 5}


@pytest.fixture(scope="module")
def ov_ship(exported, ov_runtime, tmp_path_factory):
    """The same file, chosen on OpenVINO and timed with 2 threads."""
    from slimline.evaluation.ship import write_ship

    _, _, variants, prep = exported
    out = tmp_path_factory.mktemp("ship_ov") / "ship"
    chosen = CHOSEN | {"name": "m@openvino", "runtime": "openvino", "precision": "f32"}
    write_ship(out, chosen, *variants, prep, HW, why="", card="# Model card: `m` on openvino\n",
               runtime=ov_runtime)
    return out


def test_an_openvino_bundle_holds_the_ir_and_its_runtime_round_trips(ov_ship, ov_runtime, exported):
    _, onnx_dir, _, _ = exported
    assert sorted(p.name for p in ov_ship.iterdir()) == \
        ["MODEL_CARD.md", "labels.json", "manifest.json", "model.bin", "model.onnx", "model.xml"]
    assert (ov_ship / "model.onnx").read_bytes() == (onnx_dir / "m.onnx").read_bytes()  # any runtime runs it
    m = json.loads((ov_ship / "manifest.json").read_text())
    assert (m["selected"], m["variant"]) == ("m@openvino", "m")
    assert m["files"] == {"onnx": "model.onnx", "openvino": "model.xml"}
    assert m["runtime"] == {"name": "openvino", "version": ov_runtime["version"], "precision": "f32",
                            "settings": ov_runtime["settings"]}
    assert m["runtime"]["settings"]["INFERENCE_NUM_THREADS"] == 2
    assert m["runtime"]["settings"]["INFERENCE_PRECISION_HINT"] == "f32"


def test_an_openvino_bundle_predicts_what_onnxruntime_does_on_the_onnx_file(ov_ship, exported):
    from slimline.predict import Bundle
    from slimline.runtime.onnxruntime import predict

    model, onnx_dir, _, _ = exported
    b = Bundle(ov_ship)
    assert (b.runtime, b.threads) == ("openvino", 2)  # the runtime and threads it was timed with
    assert b.runner.settings["INFERENCE_NUM_THREADS"] == 2 and b.runner.precision == "f32"
    x = np.random.default_rng(1).uniform(0, 255, (50, *SHAPE)).astype(np.float32)
    ort_logits = predict(onnx_dir / "m.onnx", x)
    np.testing.assert_allclose(b.logits(x), ort_logits, rtol=1e-4, atol=1e-4)
    labels = [int(label) for label, _ in b.predict(x)]
    assert labels == ort_logits.argmax(1).tolist() == _torch_top1(model, x).tolist()


def test_a_bundle_whose_runtime_is_missing_here_names_the_fix(ov_ship, monkeypatch, tmp_path, capsys):
    from slimline.predict import Bundle, main
    from slimline.runtime import registry

    fix = "runtime openvino needs OpenVINO, which is not installed: pip install -c constraints.txt openvino"
    monkeypatch.setattr(registry, "missing", lambda name: fix if name.startswith("openvino") else None)
    with pytest.raises(ValueError, match="runs on openvino") as err:
        Bundle(ov_ship)
    assert fix in str(err.value)
    x = tmp_path / "x.npz"
    np.savez(x, x=np.zeros((1, 8, 8), np.float32))
    assert main([str(x), "--bundle", str(ov_ship)]) == 2
    assert "pip install -c constraints.txt openvino" in capsys.readouterr().err


def test_a_bundle_from_before_runtimes_runs_on_onnxruntime(ship, tmp_path):
    import shutil

    from slimline.predict import Bundle

    old = tmp_path / "old"
    shutil.copytree(ship, old)
    m = json.loads((old / "manifest.json").read_text())
    m = {k: v for k, v in m.items() if k not in ("runtime", "files", "variant")} | {"onnxruntime": "1.20.0"}
    (old / "manifest.json").write_text(json.dumps(m))
    x = np.random.default_rng(4).uniform(0, 255, (5, *SHAPE)).astype(np.float32)
    b = Bundle(old)
    assert (b.runtime, b.threads) == ("onnxruntime", 1)
    assert b.predict(x) == Bundle(ship).predict(x)
