"""Building a model from its spec (the params-driven CNN, or a zoo/user model through
slimline.zoo), and saving/loading it without pickle.

A saved model is a folder: `model.safetensors` (weights) and `structure.json`
(everything needed to rebuild the module: the model and its structure, input shape,
classes, the input normalisation and, for a pruned zoo model, the shapes pruning
changed). Normalisation lives inside the network as its first layer, so every
exported form of the model takes raw pixels.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from slimline.errors import ShapeError, StageError  # ShapeError re-exported: callers catch it here
from slimline.io import atomic_dir, write_json
from slimline.params import Structure, feature_shape


@dataclass(frozen=True)
class ModelSpec:
    structure: dict  # a Structure, as plain data ({} for a zoo model)
    input_shape: tuple[int, int, int]  # (C, H, W)
    num_classes: int
    mean: tuple[float, ...]  # per channel, in raw pixel units
    std: tuple[float, ...]
    model: str = "cnn"  # or a slimline.zoo spec: torchvision:<name>, timm:<name>, python:<mod>:<fn>
    kwargs: dict = field(default_factory=dict)  # passed to the zoo factory
    # Zoo models only: {module path: {attribute: value}} for the modules pruning resized
    # (or {"identity": True} for a removed block). Tensor shapes come from the weights.
    reshaped: dict = field(default_factory=dict)

    @classmethod
    def from_json(cls, d: dict) -> "ModelSpec":
        return cls(structure=d["structure"], input_shape=tuple(d["input_shape"]),
                   num_classes=int(d["num_classes"]), mean=tuple(d["mean"]), std=tuple(d["std"]),
                   model=d.get("model", "cnn"), kwargs=d.get("kwargs", {}), reshaped=d.get("reshaped", {}))

    def to_json(self) -> dict:
        d = asdict(self)
        if self.model == "cnn":  # the built-in CNN's structure.json stays as it always was
            for key in ("model", "kwargs", "reshaped"):
                d.pop(key)
        return d


class Normalize(nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


def make_activation(s: Structure) -> nn.Module:
    if s.activation == "leaky_relu":
        return nn.LeakyReLU(s.negative_slope)
    if s.activation == "elu":
        return nn.ELU(s.alpha)
    return {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}[s.activation]()


def _block(s: Structure, layer: nn.Module, norm: nn.Module, last: nn.Module | None) -> list[nn.Module]:
    """layer, [norm], activation, [last]: one conv block or hidden layer. The order fixes the
    state-dict keys, so saved models of every earlier version still load."""
    return [layer, *([norm] if s.batch_norm else []), make_activation(s), *([last] if last else [])]


def build_model(spec: ModelSpec, shapes: dict | None = None) -> nn.Module:
    """The module a spec describes, freshly initialised. `shapes` ({state-dict key: shape},
    from the saved weights) resizes the tensors of modules pruning changed (spec.reshaped)."""
    if spec.model != "cnn":
        from slimline import zoo

        net = zoo.create(spec.model, spec.num_classes, spec.input_shape[0], spec.kwargs)
        model = nn.Sequential(Normalize(spec.mean, spec.std), net)
        if spec.reshaped:
            _apply_reshaped(model, spec.reshaped, shapes or {})
        return model
    s = Structure.model_validate(spec.structure)
    c, h, w = feature_shape(s, spec.input_shape)
    features: list[nn.Module] = [Normalize(spec.mean, spec.std)]
    in_ch = spec.input_shape[0]
    for ch in s.conv_channels:
        features += _block(s, nn.Conv2d(in_ch, ch, s.kernel_size, padding=s.padding), nn.BatchNorm2d(ch),
                           nn.MaxPool2d(s.pool) if s.pool > 1 else None)
        in_ch = ch
    features.append(nn.Flatten())
    head: list[nn.Module] = []
    width = c * h * w  # computed, never hard-coded (the seed's 64*6*6 was wrong for 28x28)
    for hid in s.hidden:
        head += _block(s, nn.Linear(width, hid), nn.BatchNorm1d(hid),
                       nn.Dropout(s.dropout) if s.dropout > 0 else None)
        width = hid
    head.append(nn.Linear(width, spec.num_classes))  # logits: no activation after this
    return nn.Sequential(nn.Sequential(*features), nn.Sequential(*head))


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """FLOPs of one batch-1 forward pass (2 per multiply-add), by torch's own counter."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, *input_shape))
    model.train(was_training)
    return int(counter.get_total_flops())


# Attributes that say a module's size and that its forward may read; pruning changes them
# along with the tensors. Recorded per resized module, so a pruned zoo model rebuilds
# from JSON and safetensors alone (Torch-Pruning's own state_dict would need pickle).
SHAPE_ATTRS = ("in_channels", "out_channels", "groups", "in_features", "out_features", "num_features",
               "normalized_shape", "num_channels", "num_groups", "embed_dim", "num_heads")


def record_reshaped(model: nn.Module, spec: ModelSpec) -> dict:
    """{module path: changed shape attributes} of a zoo model against a fresh build of its spec."""
    fresh = dict(build_model(replace(spec, reshaped={})).named_modules())
    out = {}
    for name, m in model.named_modules():
        ref = fresh.get(name)
        if ref is None or not name:
            continue
        if isinstance(m, nn.Identity) and not isinstance(ref, nn.Identity):
            out[name] = {"identity": True}
            continue
        resized = any(t.shape != getattr(ref, k).shape for k, t in
                      [*m.named_parameters(recurse=False), *m.named_buffers(recurse=False)]
                      if isinstance(getattr(ref, k, None), torch.Tensor))
        attrs = {a: _plain(getattr(m, a)) for a in SHAPE_ATTRS
                 if hasattr(m, a) and getattr(m, a) != getattr(ref, a, None)}
        if resized or attrs:
            out[name] = attrs
    return out


def _plain(v):
    return list(v) if isinstance(v, tuple) else v


def _apply_reshaped(model: nn.Module, reshaped: dict, shapes: dict) -> None:
    for name, attrs in reshaped.items():
        if attrs.get("identity"):
            model.set_submodule(name, nn.Identity())
            continue
        m = model.get_submodule(name)
        for a, v in attrs.items():
            setattr(m, a, tuple(v) if isinstance(v, list) else v)
        for k, t in [*m.named_parameters(recurse=False), *m.named_buffers(recurse=False)]:
            shape = shapes.get(f"{name}.{k}")
            if shape is not None and tuple(t.shape) != tuple(shape):
                t.data = torch.zeros(shape, dtype=t.dtype)


def save_model(model: nn.Module, spec: ModelSpec, out_dir: str | Path, extra: dict[str, dict] | None = None
               ) -> None:
    """Write weights + structure, and any `extra` JSON files (name -> content), into out_dir
    atomically (all or nothing)."""
    if spec.model != "cnn":
        spec = replace(spec, reshaped=record_reshaped(model, spec))
    with atomic_dir(out_dir) as tmp:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"))
        write_json(tmp / "structure.json", spec.to_json())
        for name, content in (extra or {}).items():
            write_json(tmp / name, content)


def load_spec(model_dir: str | Path) -> ModelSpec:
    """A saved model's spec alone (structure.json), without building it."""
    path = Path(model_dir) / "structure.json"
    if not path.exists():
        raise FileNotFoundError(f"{model_dir} holds no saved model (structure.json missing)")
    return ModelSpec.from_json(json.loads(path.read_text()))


def load_model(model_dir: str | Path) -> tuple[nn.Module, ModelSpec]:
    model_dir = Path(model_dir)
    if not (model_dir / "structure.json").exists():
        raise FileNotFoundError(f"{model_dir} holds no saved model (structure.json missing)")
    try:
        spec = ModelSpec.from_json(json.loads((model_dir / "structure.json").read_text()))
        state = load_file(str(model_dir / "model.safetensors"))  # no pickle
        model = build_model(spec, {k: tuple(v.shape) for k, v in state.items()})
        model.load_state_dict(state)
    except ShapeError:
        raise
    except Exception as err:  # noqa: BLE001 - truncated file, foreign weights, hand-edited JSON
        raise StageError(f"{model_dir} holds a damaged model ({type(err).__name__}: {err}); "
                         f"rerun the stage that writes it, or `dvc checkout {model_dir}`") from None
    model.eval()
    return model, spec
