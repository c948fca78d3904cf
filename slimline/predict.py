"""Classify images with the ship bundle, on the runtime its manifest names (no torch).

    python -m slimline.predict PATH... [--bundle models/ship] [--json]

PATH is an image (PNG, JPEG, BMP, WebP) or an .npz holding an array `x` of (N,H,W) or
(N,C,H,W) raw pixels. Images are converted to the bundle's channel count and, when the
training images were resized (an image folder with data.image_size), resized the same
way; otherwise they must already have its height and width.

The bundle runs on the runtime it was chosen on, with the settings it was timed with
(manifest.json's "runtime"); OpenVINO is imported only for a bundle that names it. A
bundle from before runtimes were chosen runs on ONNX Runtime.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


class Bundle:
    def __init__(self, folder: str | Path):
        folder = Path(folder)
        manifest = folder / "manifest.json"
        if not manifest.exists():
            raise FileNotFoundError(f"{folder} is not a ship bundle (no manifest.json): "
                                    f"run the `evaluate` stage first")
        self.manifest = json.loads(manifest.read_text())
        if not self.manifest.get("selected"):
            raise FileNotFoundError(f"{folder} holds no model: {self.manifest.get('reason')}")
        self.labels = json.loads((folder / "labels.json").read_text())
        self.shape = tuple(self.manifest["input"]["shape"][1:])  # (C, H, W)
        self.resize = bool(self.manifest["input"].get("resize", False))
        runtime = self.manifest.get("runtime") or {}
        self.runtime, self.version = runtime.get("name", "onnxruntime"), runtime.get("version")
        settings = runtime.get("settings") or {}
        self.threads = settings.get("INFERENCE_NUM_THREADS") or settings.get("intra_op_num_threads") or 1
        self.runner = self._load(folder)

    def _load(self, folder: Path):
        """The bundle's model on its runtime, with the threads it was timed with; a clear error
        for a runtime that is not installed here or a file it cannot load."""
        from slimline.runtime import registry

        why = registry.missing(self.runtime)
        if why:
            timed = f" (it was timed with {self.version})" if self.version else ""
            raise ValueError(f"{folder} runs on {self.runtime} (its manifest.json), which cannot run here: "
                             f"{why}{timed}. Or run its model.onnx on ONNX Runtime yourself")
        files = self.manifest.get("files") or {"onnx": "model.onnx"}
        name = files.get("openvino", files["onnx"]) if self.runtime.startswith("openvino") else files["onnx"]
        path = folder / name
        try:
            return registry.load(self.runtime, path, self.shape, threads=self.threads)
        except Exception as err:  # noqa: BLE001 - each runtime raises its own types for a bad file
            raise ValueError(f"{path} cannot be loaded on {self.runtime} ({err}); rebuild the bundle "
                             f"with the `evaluate` stage") from None

    def logits(self, x: np.ndarray) -> np.ndarray:
        if x.ndim == 3:
            x = x[:, None]
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"input shape {tuple(x.shape[1:])} does not match the model's {self.shape}")
        return self.runner.predict(x.astype(np.float32))

    def predict(self, x: np.ndarray) -> list[tuple[str, float]]:
        logits = self.logits(x)
        e = np.exp(logits - logits.max(1, keepdims=True))
        probs = e / e.sum(1, keepdims=True)
        return [(self.labels[i], float(p[i])) for i, p in zip(probs.argmax(1), probs, strict=True)]


def load_inputs(path: Path, shape: tuple[int, int, int], resize: bool = False) -> np.ndarray:
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            if "x" not in z.files:
                raise ValueError(f"{path}: no array 'x' (found {z.files})")
            return z["x"]
    from PIL import Image

    img = Image.open(path).convert("L" if shape[0] == 1 else "RGB")
    if resize and img.size != (shape[2], shape[1]):  # as prepare resized the training images
        img = img.resize((shape[2], shape[1]), Image.Resampling.BILINEAR)
    if img.size != (shape[2], shape[1]):
        raise ValueError(f"{path}: image is {img.size[0]}x{img.size[1]}, the model takes "
                         f"{shape[2]}x{shape[1]}; resize it first")
    arr = np.asarray(img, dtype=np.float32)
    return arr[None, None] if shape[0] == 1 else arr.transpose(2, 0, 1)[None]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m slimline.predict", description=__doc__.split("\n")[0])
    ap.add_argument("paths", nargs="+", type=Path)
    ap.add_argument("--bundle", default="models/ship", type=Path)
    ap.add_argument("--json", action="store_true", help="one JSON line per input")
    args = ap.parse_args(argv)
    try:
        bundle = Bundle(args.bundle)
        for path in args.paths:
            for i, (label, prob) in enumerate(bundle.predict(load_inputs(path, bundle.shape, bundle.resize))):
                where = f"{path}[{i}]" if path.suffix == ".npz" else str(path)
                print(json.dumps({"input": where, "label": label, "probability": round(prob, 6)})
                      if args.json else f"{where}\t{label}\t{prob:.4f}")
    except (OSError, ValueError) as err:
        print(f"ERROR: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
