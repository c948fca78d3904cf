"""Which layers hurt: accuracy-aware static int8.

A static int8 variant that loses more validation accuracy than
`quantize.max_accuracy_drop` against its own fp32 source first keeps some nodes in
fp32. Each node that computes in int8 is tried alone in fp32 (the drop that remains
then is its sensitivity: the lower, the more that node was costing); the most
sensitive are then kept in fp32 one at a time, until the variant fits the budget or
`quantize.max_excluded` nodes are out of int8.

A variant that still misses the budget is written all the same, as the best attempt:
the one with the lowest val drop among those tried (plain int8, then 1, 2, ...
nodes kept), the fewest fp32 nodes on a tie, since a node that buys nothing back
only costs size and speed. The shortfall is reported; whether the variant may ship
is evaluate's decision (its quantize gate), so that a measurement never decides
which files quantize writes.

The ranking sees one node at a time: when two layers each break int8 on their own,
keeping either one in fp32 recovers nothing, they rank no higher than the rest, and
the variant stays over budget. The scan costs one quantization per int8 node; it
runs for a variant that misses its budget, and for every variant when
quantize.sensitivity_scan asks (the per-node tables of reports/sensitivity.md).

The scan measures with ONNX Runtime's int8 kernels, which differ between CPUs (VNNI
or not): which nodes stay in fp32, when any do, can differ between machines
(docs/numerics.md).
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from slimline.compress.quantization import node_ops, quantize_static_int8, static_int8_nodes
from slimline.runtime.onnxruntime import predict


@dataclass
class StaticInt8:
    fp32_nodes: list[str]  # nodes kept in fp32, in the order they were taken out of int8
    val_drop: float  # fp32 source's val accuracy minus the variant's, as a fraction, as written
    ok: bool  # within the budget
    shortfall: str = ""  # by how much it misses the budget, when it does (it is written all the same)
    # [{"node", "op", "val_drop" (what remains with it alone in fp32), "recovered" (what that
    # gives back)}], most sensitive first
    sensitivity: list[dict] = field(default_factory=list)


def accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(predict(path, x).argmax(1) == y)) if len(y) else 1.0


def static_int8_within_budget(fp32: Path, dst: Path, calib: np.ndarray, batch_size: int, x_val: np.ndarray,
                              y_val: np.ndarray, max_drop: float, max_excluded: int,
                              ref: float | None = None, scan: bool = False) -> StaticInt8:
    """Write the static int8 form of `fp32` to `dst`, keeping the fewest nodes in fp32
    that bring its val accuracy within `max_drop` of fp32's, or else the best attempt
    (see the module doc): `dst` is always written.
    ref: fp32's val accuracy, when the caller has it already. scan: rank the nodes even
    when the variant fits (for reports/sensitivity.md)."""
    ref = accuracy(fp32, x_val, y_val) if ref is None else ref
    quantize_static_int8(fp32, dst, calib, batch_size)
    drop = ref - accuracy(dst, x_val, y_val)
    over = drop > max_drop + 1e-12
    if not scan and (not over or max_excluded == 0):  # the scan could not change the outcome
        return StaticInt8([], drop, not over, _miss(drop, [], max_drop, max_excluded) if over else "")
    ops = dict(node_ops(dst))
    ranking = []
    with tempfile.TemporaryDirectory(prefix="sensitivity.") as tmp:
        probe = Path(tmp) / "probe.onnx"
        for i, node in enumerate(static_int8_nodes(dst)):
            quantize_static_int8(fp32, probe, calib, batch_size, fp32_nodes=[node])
            ranking.append((ref - accuracy(probe, x_val, y_val), i, node))
    ranking.sort()  # the lowest remaining drop first; ties in graph order
    sensitivity = [{"node": n, "op": ops.get(n, "?"), "val_drop": d, "recovered": drop - d}
                   for d, _, n in ranking]
    if not over:
        return StaticInt8([], drop, True, sensitivity=sensitivity)
    kept: list[str] = []
    attempts = [(drop, [])]  # (val drop, nodes kept in fp32), in the order tried
    for _, _, node in ranking[:max_excluded]:
        kept = kept + [node]
        quantize_static_int8(fp32, dst, calib, batch_size, fp32_nodes=kept)
        drop = ref - accuracy(dst, x_val, y_val)
        if drop <= max_drop + 1e-12:
            return StaticInt8(kept, drop, True, sensitivity=sensitivity)
        attempts.append((drop, kept))
    best_drop, best = min(attempts, key=lambda a: (a[0], len(a[1])))
    if best != kept:  # dst holds the last attempt: rewrite the best (quantization is deterministic)
        quantize_static_int8(fp32, dst, calib, batch_size, fp32_nodes=best)
    return StaticInt8(best, best_drop, False, _miss(best_drop, best, max_drop, max_excluded), sensitivity)


def _miss(drop: float, kept: list[str], max_drop: float, max_excluded: int) -> str:
    return (f"int8 static is {drop * 100:.2f} pt below its fp32 source on val with {len(kept)} node(s) "
            f"kept in fp32{' (' + ', '.join(kept) + ')' if kept else ''}, its best attempt: over "
            f"quantize.max_accuracy_drop {max_drop * 100:.2f} pt within quantize.max_excluded {max_excluded}")
