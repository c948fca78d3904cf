"""Image folders: `path/<class>/*`, or `path/{train,val,test}/<class>/*` when those exist.

Images are decoded with Pillow, converted to `channels` and resized to `image_size`, and
kept as uint8 (N, C, H, W) arrays: 20,000 64x64 RGB images take 234 MiB. Given a scratch
folder, the arrays are memory maps of files there, filled one image at a time, so a set
larger than memory is decoded once and never held whole. Class names are the sorted
folder names; the label of class k is k.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from slimline.data.raw import DataError, RawDataset

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
SPLITS = ("train", "val", "test")


def _class_dirs(folder: Path) -> list[Path]:
    dirs = sorted((d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")),
                  key=lambda d: d.name)
    if not dirs:
        raise DataError(f"{folder}: no class folders; expected {folder}/<class>/<image> (or "
                        f"{folder}/train/<class>/<image>), one folder per class")
    return dirs


class _Files:
    """The image files of one split: `folder` and one array of "<class>/<name>" bytes, not a
    Python string per path (a million of those hold a hundred MB, and leave the heap
    fragmented once freed). Iterating or indexing gives each full path as a str."""

    def __init__(self, folder: Path, names: np.ndarray) -> None:
        self.folder, self.names = folder, names

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> str:
        return os.path.join(self.folder, os.fsdecode(self.names[i]))

    def __iter__(self):
        return (os.path.join(self.folder, os.fsdecode(n)) for n in self.names)


def _list(folder: Path, classes: list[str], split: str | None) -> tuple[_Files, np.ndarray, int]:
    """(image files, labels, files skipped for their extension) of one folder of classes."""
    files, labels, skipped = [], [], 0
    found = {d.name: d for d in _class_dirs(folder)}
    missing = [c for c in classes if c not in found]
    if missing:
        raise DataError(f"{folder}: the {split} split has no folder for class(es) {', '.join(missing)}; "
                        f"every split needs every class (add images, or drop the class everywhere)")
    extra = sorted(set(found) - set(classes))
    if extra:
        raise DataError(f"{folder}: class folder(s) {', '.join(extra)} are not in the train split; "
                        f"every split must have the same classes")
    for label, name in enumerate(classes):
        with os.scandir(found[name]) as entries:
            images = sorted(e.name for e in entries if e.is_file() and not e.name.startswith("."))
        kept = [f for f in images if os.path.splitext(f)[1].lower() in EXTENSIONS]
        skipped += len(images) - len(kept)
        if not kept:
            raise DataError(f"{found[name]}: class folder holds no images ({', '.join(EXTENSIONS)}); "
                            f"add images or remove the folder")
        files.append(np.array([os.fsencode(f"{found[name].name}/{f}") for f in kept]))
        labels.append(np.full(len(kept), label, dtype=np.int64))
    return _Files(folder, np.concatenate(files)), np.concatenate(labels), skipped


def _decode(files: _Files, channels: int, size: tuple[int, int] | None,
            scratch: Path | None = None) -> np.ndarray:
    """uint8 (N, C, H, W), filled one image at a time: in memory, or with `scratch` a memory
    map of a file there (memory: one image; the kernel writes filled pages back to disk)."""
    from PIL import Image, UnidentifiedImageError

    out = None
    first = None
    for i, path in enumerate(files):
        try:
            with Image.open(path) as img:
                img = img.convert("L" if channels == 1 else "RGB")
                if size is not None:
                    img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
                arr = np.asarray(img, dtype=np.uint8)
        except (UnidentifiedImageError, OSError, ValueError) as err:
            raise DataError(f"{path}: not a readable image ({err}); fix or delete the file") from None
        arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        if out is None:
            shape, first = (len(files), *arr.shape), path
            out = (np.empty(shape, dtype=np.uint8) if scratch is None else
                   np.memmap(_scratch_file(scratch), dtype=np.uint8, mode="w+", shape=shape))
        elif arr.shape != out.shape[1:]:
            raise DataError(f"{path} is {arr.shape[2]}x{arr.shape[1]} but {first} is "
                            f"{out.shape[3]}x{out.shape[2]}: set data.image_size: [H, W] to resize "
                            f"every image to one size")
        out[i] = arr
    if isinstance(out, np.memmap):
        out.flush()
        out = np.memmap(out.filename, dtype=np.uint8, mode="r", shape=out.shape)  # read-only from here on
    return out


def _scratch_file(scratch: Path) -> Path:
    fd, name = tempfile.mkstemp(dir=scratch, suffix=".u8")
    os.close(fd)
    return Path(name)


def _channels(files: _Files) -> int:
    """1 when the first image is grayscale, else 3."""
    from PIL import Image

    first = files[0]
    try:
        with Image.open(first) as img:
            return 1 if img.mode in ("1", "L", "I", "I;16", "F") else 3
    except OSError as err:
        raise DataError(f"{first}: not a readable image ({err}); fix or delete the file") from None


def load_imagefolder(path: str | Path, image_size: list[int] | None = None,
                     channels: int | None = None, scratch: Path | None = None) -> tuple[RawDataset, dict]:
    """The dataset, and what prepare records for predict: the class names, the channels and
    the size every image was converted to, and the files skipped for their extension.
    scratch: a folder for the decoded images (memory maps), which the caller removes."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; data.path must be the image folder")
    split_dirs = {s: root / s for s in SPLITS if (root / s).is_dir()}
    if split_dirs and "train" not in split_dirs:
        raise DataError(f"{root}: has {', '.join(split_dirs)} but no train/ folder")
    classes = [d.name for d in _class_dirs(split_dirs.get("train", root))]
    size = tuple(image_size) if image_size else None
    listed = {s: _list(d, classes, s) for s, d in (split_dirs or {"train": root}).items()}
    ch = channels or _channels(listed["train"][0])
    arrays = {s: (_decode(files, ch, size, scratch), labels)
              for s, (files, labels, _) in listed.items()}
    raw = RawDataset(*arrays["train"], *arrays.get("test", (None, None)), "imagefolder",
                     [str(root)], *arrays.get("val", (None, None)))
    h, w = arrays["train"][0].shape[2:]
    meta = {"classes": classes, "channels": ch, "image_size": [int(h), int(w)], "resized": size is not None,
            "skipped_files": sum(skipped for _, _, skipped in listed.values())}
    return raw, meta
