"""fp32 ONNX export of a torch model, with the graph passes that make the file small,
and the checks that the file computes what the torch model does.

The export is the same for training (which times it) and quantize (which ships it and
converts it): identical inputs give identical bytes (DVC hashes them).
"""
from __future__ import annotations

import copy
import io
import math
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn
from torch.nn.utils.fusion import fuse_linear_bn_eval

from slimline.compress.onnx_files import INPUT, OUTPUT, drop_unused_initializers, failing_step, save
from slimline.errors import StageError
from slimline.runtime.onnxruntime import agreement, predict


def _fuse_linear_bn(net: nn.Module) -> None:
    """Fold each Linear -> BatchNorm1d pair into one Linear (eval mode). The
    exporter already folds Conv -> BatchNorm2d; this saves the head's BN op and
    keeps it away from the int8 quantizers, which have no good BN kernel."""
    for seq in [m for m in net.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(seq) - 1):
            if isinstance(seq[i], nn.Linear) and isinstance(seq[i + 1], nn.BatchNorm1d):
                seq[i], seq[i + 1] = fuse_linear_bn_eval(seq[i], seq[i + 1]), nn.Identity()


def _drop_identities(model: onnx.ModelProto) -> None:
    """The TorchScript exporter shares equal tensors through Identity nodes;
    let their readers use the initializer directly."""
    inits, outputs = {t.name for t in model.graph.initializer}, {o.name for o in model.graph.output}
    alias = {n.output[0]: n.input[0] for n in model.graph.node
             if n.op_type == "Identity" and n.input[0] in inits and n.output[0] not in outputs}
    keep = [n for n in model.graph.node if n.output[0] not in alias]
    for node in keep:
        node.input[:] = [alias.get(name, name) for name in node.input]
    del model.graph.node[:]
    model.graph.node.extend(keep)


def _fold_input_normalization(model: onnx.ModelProto) -> None:
    """Sub(x, mean) -> Div(std) -> Conv(W, b) on the graph input becomes Conv(W/std, b')
    when the conv pads nothing (a padded border would see -mean/std, not 0) and is not
    grouped: two whole-image ops fewer per call, which at batch 1 on a small model is a
    visible share of the latency. b' = b - sum(W/std * mean), summed exactly (fsum of
    float64 products of float32s), so every CPU gets the same bits."""
    inits = {t.name: t for t in model.graph.initializer}
    readers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)

    def only_reader(name: str, op: str):
        found = readers.get(name, [])
        return found[0] if len(found) == 1 and found[0].op_type == op else None

    outputs = {o.name for o in model.graph.output}
    sub = only_reader(INPUT, "Sub")
    div = sub and sub.input[0] == INPUT and sub.input[1] in inits and only_reader(sub.output[0], "Div")
    conv = (div and div.input[0] == sub.output[0] and div.input[1] in inits
            and only_reader(div.output[0], "Conv"))
    if not conv or conv.input[0] != div.output[0] or conv.input[1] not in inits \
            or (len(conv.input) > 2 and conv.input[2] not in inits) \
            or {sub.output[0], div.output[0]} & outputs:
        return
    attrs = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
    if any(attrs.get("pads", [0])) or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID") \
            or attrs.get("group", 1) != 1:
        return
    w = numpy_helper.to_array(inits[conv.input[1]])
    if w.ndim != 4:
        return
    channels = w.shape[1]
    mean, std = (numpy_helper.to_array(inits[n]).astype(np.float32) for n in (sub.input[1], div.input[1]))
    # Per channel means shape (1, C, 1, 1) or (C, 1, 1) (or one value): a (C,) would
    # broadcast along the image width instead.
    if not all(a.size == 1 or (a.size == channels and a.shape[-3:] == (channels, 1, 1)) for a in (mean, std)):
        return
    mean, std = (np.broadcast_to(a.reshape(-1), (channels,)) for a in (mean, std))
    folded = (w / std[None, :, None, None]).astype(np.float32)
    b = (numpy_helper.to_array(inits[conv.input[2]]) if len(conv.input) > 2
         else np.zeros(w.shape[0], np.float32))
    shift = [math.fsum((folded[o].astype(np.float64) * mean[:, None, None].astype(np.float64)).ravel())
             for o in range(w.shape[0])]
    bias = np.array([float(b[o]) - shift[o] for o in range(w.shape[0])], dtype=np.float32)

    # The conv's own tensors take the folded values under their names, unless another node
    # shares them: then the fold gets new ones.
    def mine(name: str) -> bool:
        return len(readers.get(name, [])) == 1

    wname = conv.input[1] if mine(conv.input[1]) else f"{conv.input[1]}_normalized"
    bname = conv.input[2] if len(conv.input) > 2 and mine(conv.input[2]) else f"{conv.input[1]}_folded_bias"
    if wname != conv.input[1] and wname in inits or bname not in conv.input and bname in inits:
        return  # a name the fold would take is in use
    kept = [t for t in model.graph.initializer if t.name not in (wname, bname)]
    del model.graph.initializer[:]
    model.graph.initializer.extend([*kept, numpy_helper.from_array(folded, wname),
                                    numpy_helper.from_array(bias, bname)])
    conv.input[:] = [INPUT, wname, bname]
    keep = [n for n in model.graph.node if n is not sub and n is not div]
    del model.graph.node[:]
    model.graph.node.extend(keep)
    drop_unused_initializers(model)


def export_onnx(model: nn.Module, input_shape: tuple[int, int, int], path: str | Path,
                opset: int = 17) -> None:
    """fp32 export with a dynamic batch dimension.

    The TorchScript exporter (dynamo=False), on purpose: for these Sequential
    CNNs it gives the same minimal graph as the dynamo exporter, 20-80x faster,
    natively at opset 17, without onnxscript, and without the dynamo exporter's
    per-node metadata, which embeds absolute source paths and line numbers (the
    bytes would change with the checkout folder or a comment in slimline/model.py).
    """
    net = copy.deepcopy(model).cpu().eval()  # the caller's module (device, train flag) is untouched
    _fuse_linear_bn(net)
    buf = io.BytesIO()
    with failing_step(f"ONNX export to {path}"), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)  # "legacy TorchScript-based export"
        torch.onnx.export(net, (torch.zeros(1, *input_shape),), buf, dynamo=False,
                          input_names=[INPUT], output_names=[OUTPUT],
                          dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
                          opset_version=opset, do_constant_folding=True,
                          training=torch.onnx.TrainingMode.EVAL)
    proto = onnx.load_from_string(buf.getvalue())
    _drop_identities(proto)
    _fold_input_normalization(proto)
    save(proto, path)


def _torch_and_onnx_logits(model: nn.Module, path: str | Path, x) -> tuple[np.ndarray, np.ndarray]:
    net = copy.deepcopy(model).cpu().eval()
    x = x.detach().cpu().numpy() if torch.is_tensor(x) else x
    with torch.no_grad():  # a batch at a time: x may be a memory-mapped split of any size
        ref = [net(torch.from_numpy(np.array(x[i:i + 256], dtype=np.float32))).numpy()
               for i in range(0, len(x), 256)]
    got = predict(path, x)
    ref = np.concatenate(ref) if ref else got[:0]
    if ref.shape != got.shape:
        raise ValueError(f"{path} gives logits of shape {got.shape}, the torch model {ref.shape}")
    return ref, got


def fold_check(model: nn.Module, path: str | Path, x) -> float:
    """Largest |torch logits - ORT logits| over x (array or tensor of raw pixels)."""
    ref, got = _torch_and_onnx_logits(model, path, x)
    return float(np.max(np.abs(ref - got))) if ref.size else 0.0


def checked_logits(model: nn.Module, path: str | Path, x, tol: float = 1e-3) -> np.ndarray:
    """The exported model's logits on x, once they are shown to match the torch model's:
    the same top-1 everywhere and no logit further than `tol` (a mismatch is an exporter bug)."""
    ref, got = _torch_and_onnx_logits(model, path, x)
    diff = float(np.max(np.abs(ref - got))) if ref.size else 0.0
    if agreement(got, ref) < 1.0 or diff > tol:
        raise StageError(f"ONNX export {Path(path).name} does not match torch (max |diff| {diff:.2e}); "
                         f"this is an exporter bug, not a data problem: report it")
    return got
