"""One split of the prepared data on disk: a safetensors file written in chunks and read
memory-mapped, so neither `prepare` nor a training process ever holds a whole split.

The bytes are exactly those of `safetensors.numpy.save_file({"x": x, "y": y})` (tests pin
this against the installed safetensors), so `data/prepared` keeps its DVC hash whatever the
chunk size. save_file's layout, from safetensors' serializer:

    [u64 LE n][n bytes of compact JSON header, right-padded with spaces to a multiple of 8][data]

Tensors are ordered by their dtype's place in safetensors' Dtype enum, descending, then by
name; each header entry is {"dtype", "shape", "data_offsets": [begin, end]} relative to the
data. For our two tensors that puts y (I64) before x (U8 or F32): the file is n | header |
y | x. No metadata: safetensors keeps it in a hash map whose order changes per process.

Every tensor's offset is known from the shapes, so the writer preallocates the file and
writes each chunk at its final offset: the row count must be known before writing starts.
"""
from __future__ import annotations

import contextlib
import json
import os
import struct
from pathlib import Path

import numpy as np

from slimline.data.raw import DataError

# safetensors' Dtype enum order (its serializer sorts tensors by it, descending): the numeric
# dtypes numpy and safetensors share, which a source's pixels may come in.
_ENUM_ORDER = ("U8", "I8", "I16", "U16", "F16", "I32", "U32", "F32", "F64", "I64", "U64")
_NAMES = ("uint8", "int8", "int16", "uint16", "float16", "int32", "uint32", "float32", "float64", "int64",
          "uint64")
_DTYPES = {np.dtype(t): k for t, k in zip(_NAMES, _ENUM_ORDER, strict=True)}
_NUMPY = {v: k for k, v in _DTYPES.items()}
_MAX_HEADER = 100_000_000  # safetensors' own limit


def _header(tensors: dict[str, tuple[np.dtype, tuple[int, ...]]]) -> tuple[bytes, dict[str, int]]:
    """(8-byte length + padded JSON, {name: begin offset in the data section})."""
    order = sorted(tensors, key=lambda k: (-_ENUM_ORDER.index(_DTYPES[tensors[k][0]]), k))
    header, begins, offset = {}, {}, 0
    for name in order:
        dtype, shape = tensors[name]
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        header[name] = {"dtype": _DTYPES[dtype], "shape": list(shape),
                        "data_offsets": [offset, offset + nbytes]}
        begins[name], offset = offset, offset + nbytes
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()  # = serde_json's
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text, begins


class SplitWriter:
    """Write one split, x (n, *image) and y (n,) int64, in chunks of rows in order.

        with SplitWriter(path, n, (1, 28, 28), np.uint8) as w:
            for xb, yb in chunks:
                w.write(xb, yb)

    On an exception, or when fewer than n rows arrived, the file is deleted: a split is
    whole or absent.
    """

    def __init__(self, path: str | Path, n: int, image: tuple[int, ...], dtype) -> None:
        self.path, self.n, self.rows = Path(path), int(n), 0
        self.shapes = {"x": (np.dtype(dtype), (self.n, *map(int, image))),
                       "y": (np.dtype(np.int64), (self.n,))}
        if self.shapes["x"][0] not in _DTYPES:
            raise TypeError(f"a prepared split cannot hold {np.dtype(dtype)} pixels")
        header, begins = _header(self.shapes)
        self.start = {k: len(header) + b for k, b in begins.items()}
        self.row_bytes = {k: int(np.prod(s[1:], dtype=np.int64)) * d.itemsize
                          for k, (d, s) in self.shapes.items()}
        total = len(header) + sum(self.row_bytes[k] * self.n for k in self.shapes)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.ftruncate(self.fd, total)  # the final size up front, as save_file does
            self._pwrite(header, 0)
        except BaseException:
            self.abort()
            raise

    def _pwrite(self, data, offset: int) -> None:
        view = memoryview(data).cast("B")
        while len(view):
            done = os.pwrite(self.fd, view, offset)
            view, offset = view[done:], offset + done

    def write(self, x: np.ndarray, y: np.ndarray) -> None:
        for name, rows in (("x", x), ("y", y)):
            dtype, shape = self.shapes[name]
            if rows.shape[1:] != shape[1:] or len(rows) != len(x):
                raise ValueError(f"{self.path.name}: a chunk of {name} has shape {rows.shape}, "
                                 f"expected (k, {', '.join(map(str, shape[1:]))}) with k = {len(x)}")
            if self.rows + len(rows) > self.n:
                raise ValueError(f"{self.path.name}: {self.rows + len(rows)} rows written, {self.n} declared")
            chunk = np.ascontiguousarray(rows, dtype=dtype.newbyteorder("<"))
            self._pwrite(chunk, self.start[name] + self.rows * self.row_bytes[name])
        self.rows += len(x)

    def close(self) -> None:
        if self.rows != self.n:
            self.abort()
            raise ValueError(f"{self.path.name}: {self.rows} of {self.n} rows written")
        os.fsync(self.fd)
        os.close(self.fd)
        self.fd = None

    def abort(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> "SplitWriter":
        return self

    def __exit__(self, kind, err, tb) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()


def _damaged(path: Path, what: str) -> DataError:
    return DataError(f"{path}: {what}; the prepared data is damaged: restore it with "
                     f"`dvc checkout data/prepared` or rebuild it with `dvc repro prepare`")


def open_split(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of a split file as read-only memory maps: indexing reads only those rows.

    The size is checked against the header first, as safetensors' own reader does, so a
    truncated file is refused here and not found later as a crash in mid-epoch."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else None
        if n is None or n > _MAX_HEADER:
            raise _damaged(path, f"not a safetensors file ({len(head)} bytes of header length)")
        text = f.read(n)
    try:
        header = json.loads(text)
        tensors = {k: (_NUMPY[header[k]["dtype"]], tuple(header[k]["shape"]), header[k]["data_offsets"])
                   for k in ("x", "y")}
    except (ValueError, KeyError, TypeError) as err:
        raise _damaged(path, f"its header is unreadable or lacks x/y ({type(err).__name__}: {err})") from None
    need, size = 8 + n + max(end for *_, (_, end) in tensors.values()), path.stat().st_size
    if size != need:
        raise _damaged(path, f"{'truncated' if size < need else 'trailing bytes'}: {size} bytes on disk, "
                             f"its header needs {need}")
    arrays = []
    for dtype, shape, (begin, end) in (tensors["x"], tensors["y"]):
        arrays.append(np.zeros(shape, dtype) if end == begin  # np.memmap refuses an empty map
                      else np.memmap(path, dtype=dtype.newbyteorder("<"), mode="r", offset=8 + n + begin,
                                     shape=shape))
    x, y = arrays
    if len(x) != len(y):
        raise _damaged(path, f"x has {len(x)} rows but y {len(y)}")
    return x, y
