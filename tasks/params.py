"""The one typed schema for params.yaml.

Every stage calls `load_params()` before doing any work, so an unknown key or a
bad value anywhere in the file stops the run at once with a message naming the
key, the value and what is allowed.  `python -m tasks.params` checks the file.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class Section(BaseModel):
    # extra="forbid" is what turns a typo ("lr_rate") into an error instead of
    # a silently ignored setting.
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataParams(Section):
    """`data`: where the images come from and how they are split (stage `prepare`)."""

    source: Literal["mnist5k", "idx", "npz"] = "mnist5k"
    path: Optional[str] = None  # folder (idx) or file (npz); unused for mnist5k
    val_fraction: float = Field(0.1, gt=0, lt=1)
    test_fraction: float = Field(0.2, gt=0, lt=1)  # only when the source has no test split
    seed: int = Field(0, ge=0)
    min_per_class: int = Field(10, ge=1)
    limit: Optional[int] = Field(None, ge=20)  # stratified cap on samples, for tiny configs
    pixel_max: float = Field(255.0, gt=0)  # pixels must lie in [0, pixel_max]
    num_classes: Optional[int] = Field(None, ge=2)  # None: inferred as max label + 1

    @model_validator(mode="after")
    def _check(self) -> "DataParams":
        if self.source in ("idx", "npz") and not self.path:
            raise ValueError(f"data.path is required when data.source is '{self.source}' "
                             f"(a folder for idx, a .npz file for npz)")
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError("data.val_fraction + data.test_fraction must be below 0.9 "
                             "so that training keeps most of the data")
        return self


class Structure(BaseModel):
    """A network's structure choices; reused by the baseline and (later) the student."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    conv_channels: list[int] = Field(default_factory=lambda: [32, 64])  # one conv block each
    kernel_size: int = Field(3, ge=1, le=11)
    padding: int = Field(0, ge=0)
    pool: int = Field(2, ge=1, le=4)  # max-pool size after each conv block; 1 = no pooling
    hidden: list[int] = Field(default_factory=lambda: [128])  # one fully-connected layer each
    activation: Literal["relu", "leaky_relu", "elu", "gelu", "silu"] = "relu"
    negative_slope: float = Field(0.01, gt=0, lt=1)  # leaky_relu only
    alpha: float = Field(1.0, gt=0)  # elu only
    dropout: float = Field(0.0, ge=0, lt=1)
    batch_norm: bool = False

    @model_validator(mode="after")
    def _check(self) -> "Structure":
        for key in ("conv_channels", "hidden"):
            bad = [w for w in getattr(self, key) if w < 1]
            if bad:
                raise ValueError(f"{key} widths must be positive integers, got {bad}")
        if not self.conv_channels and not self.hidden:
            raise ValueError("conv_channels and hidden are both empty: the network would be a "
                             "single linear layer; add at least one block or layer")
        return self


class TrainParams(Section):
    """`train`: the recipe every trained model gets (stage `train_baseline`)."""

    epochs: int = Field(15, ge=1)
    batch_size: int = Field(64, ge=1)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.05, gt=0, le=10)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    schedule: Literal["onecycle", "cosine", "none"] = "onecycle"
    augment_shift: int = Field(2, ge=0, le=8)  # random +/- pixel shifts; 0 turns it off
    grad_clip: Optional[float] = Field(None, gt=0)
    seed: int = Field(0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_threads: int = Field(2, ge=1)


class Params(Section):
    data: DataParams = DataParams()
    baseline: Structure = Structure()
    train: TrainParams = TrainParams()


class ParamsError(Exception):
    """params.yaml is unreadable or invalid; str() is the readable explanation."""


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    # Walk the schema along the error location to list the keys allowed there.
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return sorted(model.model_fields)


def format_errors(err: ValidationError, source: str = "params.yaml") -> str:
    lines = [f"{source} is invalid ({err.error_count()} problem(s)):"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        value = e.get("input")
        if e["type"] == "extra_forbidden":
            allowed = ", ".join(_allowed_keys(Params, e["loc"]))
            lines.append(f"  - {key}: unknown key. Allowed keys here: {allowed}")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            shown = "" if isinstance(value, dict) else f" (got {value!r})"
            lines.append(f"  - {key}: {msg}{shown}")
    return "\n".join(lines)


def parse_params(raw: Any, source: str = "params.yaml") -> Params:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{source} must hold a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ParamsError(format_errors(err, source)) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path} not found: run from the project root or pass the path") from None
    except yaml.YAMLError as err:
        raise ParamsError(f"{path} is not valid YAML: {err}") from None
    return parse_params(raw, str(path))


def main(argv: list[str]) -> int:
    path = argv[0] if argv else "params.yaml"
    try:
        load_params(path)
    except ParamsError as err:
        print(err, file=sys.stderr)
        return 2
    print(f"{path}: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
