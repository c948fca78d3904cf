"""The one typed schema for params.yaml.

Every stage calls `load_params()` before doing any work, so an unknown key or a
bad value anywhere in the file stops the run at once with a message naming the
key, the value and what is allowed.  `python -m slimline.params` checks the file.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from slimline.errors import ShapeError

NOMINAL_INPUT = (1, 28, 28)  # for size checks made before the data is known


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


def feature_shape(s: "Structure", input_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """Shape after the conv blocks; raises ShapeError naming what to change."""
    c, h, w = input_shape
    for i, ch in enumerate(s.conv_channels, 1):
        h, w = h + 2 * s.padding - s.kernel_size + 1, w + 2 * s.padding - s.kernel_size + 1
        if h < 1 or w < 1:
            raise ShapeError(
                f"input {input_shape[1]}x{input_shape[2]} is too small: conv block {i} "
                f"(kernel_size {s.kernel_size}, padding {s.padding}) leaves no pixels. "
                f"Use fewer conv_channels, a smaller kernel_size or more padding.")
        if s.pool > 1:
            h, w = h // s.pool, w // s.pool
            if h < 1 or w < 1:
                raise ShapeError(
                    f"input {input_shape[1]}x{input_shape[2]} is too small: the {s.pool}x{s.pool} "
                    f"pool after conv block {i} leaves no pixels. Use fewer conv_channels, "
                    f"pool: 1, or more padding.")
        c = ch
    return c, h, w


def param_count(s: "Structure", input_shape: tuple[int, int, int], num_classes: int = 10) -> int:
    """Trainable parameters of build_model(s), by arithmetic (no torch needed)."""
    c, h, w = feature_shape(s, input_shape)
    total, in_ch = 0, input_shape[0]
    for ch in s.conv_channels:
        total += in_ch * ch * s.kernel_size ** 2 + ch + (2 * ch if s.batch_norm else 0)
        in_ch = ch
    width = c * h * w
    for hid in s.hidden:
        total += width * hid + hid + (2 * hid if s.batch_norm else 0)
        width = hid
    return total + width * num_classes + num_classes


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
    grad_clip: Optional[float] = Field(2.0, gt=0)  # clip the gradient norm; null turns it off
    seed: int = Field(0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_threads: int = Field(2, ge=1)  # fixed, because the thread count sets the summation order
    # portable: bit-identical on any x86-64 CPU with AVX2+FMA, Intel or AMD (see slimline/numerics.py);
    # fast: each CPU's fastest kernels, reproducible only on the same kind of CPU
    numerics: Literal["portable", "fast"] = "portable"


class DistillParams(Section):
    """`distill`: Hinton KD from models/baseline into the `student` structure."""

    temperature: float = Field(4.0, gt=0, le=20)
    alpha: float = Field(0.5, ge=0, le=1)  # weight of the KD term; 1 - alpha weighs the labels
    epochs: Optional[int] = Field(None, ge=1)  # None: train.epochs; never more than the baseline got
    require_smaller: bool = True  # reject a student that is not smaller than the teacher


PRUNE_METHODS = ("unstructured", "structured", "layer")


class PruneParams(Section):
    """`prune`: each listed method makes its own variant (stage prune@<method>)."""

    source: Literal["baseline", "student"] = "baseline"
    methods: list[Literal["unstructured", "structured", "layer"]] = Field(
        default_factory=lambda: list(PRUNE_METHODS), min_length=1)
    amount: float = Field(0.75, ge=0, lt=1)  # weights (unstructured) or channels (structured) removed
    steps: int = Field(3, ge=1)  # prune in this many steps, fine-tuning after each
    finetune_epochs: int = Field(2, ge=0)  # per step
    layers_to_remove: int = Field(1, ge=1)  # layer method: whole hidden layers / conv blocks
    ablation_epochs: int = Field(1, ge=0)  # layer method: fine-tuning before scoring each candidate
    distill: bool = True  # fine-tune with the KD loss from models/baseline

    @field_validator("methods")
    @classmethod
    def _unique(cls, v):
        if len(set(v)) != len(v):
            raise ValueError(f"methods lists a method twice: {v}")
        return v


class QuantizeParams(Section):
    """`quantize`: ONNX export of every model, then ONNX Runtime variants."""

    variants: list[Literal["dynamic", "static", "fp16"]] = Field(
        default_factory=lambda: ["dynamic", "static", "fp16"])
    calibration_batches: int = Field(8, ge=1)
    calibration_batch_size: int = Field(32, ge=1)
    min_agreement: float = Field(0.99, gt=0, le=1)  # top-1 agreement with the fp32 source
    opset: int = Field(17, ge=17, le=21)


class EvaluateParams(Section):
    """`evaluate`: measure every variant and choose the one to ship."""

    objective: Literal["latency", "size"] = "latency"
    max_accuracy_drop: float = Field(0.005, ge=0, lt=1)  # fraction: 0.005 = 0.5 pt below the baseline
    max_bytes: Optional[int] = Field(None, ge=1)
    max_p50_ms: Optional[float] = Field(None, gt=0)
    require_selection: bool = False  # fail the stage when no variant meets every budget
    threads: int = Field(1, ge=1)  # ONNX Runtime / torch threads for timing
    warmup: int = Field(20, ge=0)
    repeats: int = Field(200, ge=10)


class GateParams(Section):
    """`gate`: the pipeline flow's regression gate (no stage reads it, so changing it
    reruns nothing). A run fails when its selected model is worse than the previous
    run's (the last commit's reports/evaluate.json) by more than these margins."""

    max_accuracy_drop: float = Field(0.005, ge=0, lt=1)  # fraction: 0.005 = 0.5 pt on test
    max_latency_increase: float = Field(0.5, ge=0)  # 0.5: p50/baseline p50 up 50%; same CPU only
    enabled: bool = True


STRUCTURE_KEYS = ("conv_channels", "hidden", "activation", "dropout")  # what a search may vary


class SearchSpace(Section):
    """`search.space`: the choices per structure key; a key left out keeps the target's value."""

    conv_channels: Optional[list[list[int]]] = Field(None, min_length=1)  # one list per choice
    hidden: Optional[list[list[int]]] = Field(None, min_length=1)  # [] = no hidden layer
    activation: Optional[list[Literal["relu", "leaky_relu", "elu", "gelu", "silu"]]] = Field(None, min_length=1)
    dropout: Optional[list[float]] = Field(None, min_length=1)

    def choices(self) -> dict[str, list]:
        """{key: choices} for the keys being searched, in STRUCTURE_KEYS order."""
        return {k: getattr(self, k) for k in STRUCTURE_KEYS if getattr(self, k) is not None}


class SearchParams(Section):
    """`search`: structure search (python -m flows.search). No stage reads it: each
    candidate is a DVC experiment of the target's training stage with `-S` overrides."""

    target: Literal["baseline", "student"] = "baseline"  # baseline: train_baseline; student: distill
    space: SearchSpace = SearchSpace(activation=["relu", "leaky_relu", "elu"], hidden=[[128], [128, 64]])
    strategy: Literal["grid", "random"] = "grid"
    n: Optional[int] = Field(None, ge=1)  # random: candidates drawn from the grid, without repeats
    seed: int = Field(0, ge=0)  # random: the draw
    objective: Literal["accuracy", "score"] = "accuracy"  # score = val accuracy - latency_weight x p50 ms
    latency_weight: float = Field(0.0, ge=0)
    max_params: Optional[int] = Field(None, ge=1)  # budgets a recommended structure must meet
    max_flops: Optional[int] = Field(None, ge=1)
    overrides: dict[str, Any] = Field(default_factory=dict)  # recipe for every candidate: {"train.epochs": 5}
    workers: int = Field(2, ge=1)  # local mode: candidates at a time (torch threads split between them)

    @model_validator(mode="after")
    def _check(self) -> "SearchParams":
        choices = self.space.choices()
        if not choices:
            raise ValueError("space names no structure key; give choices for at least one of "
                             + ", ".join(STRUCTURE_KEYS))
        for key, values in choices.items():
            seen = [repr(v) for v in values]
            if len(set(seen)) != len(seen):
                raise ValueError(f"space.{key} lists a choice twice: {values}")
        size = 1
        for values in choices.values():
            size *= len(values)
        if self.strategy == "random":
            if self.n is None:
                raise ValueError("strategy random needs n (how many candidates to draw)")
            if self.n > size:
                raise ValueError(f"n ({self.n}) exceeds the {size} combinations of space; "
                                 f"use strategy: grid")
        for key in self.overrides:
            section, _, name = key.partition(".")
            if key == "train.num_threads":
                raise ValueError("overrides.train.num_threads: the search sets threads itself, "
                                 "so that workers x threads fits the machine's cores")
            if section in ("search", self.target) or name in STRUCTURE_KEYS:
                raise ValueError(f"overrides.{key}: overrides set the recipe; structure "
                                 f"keys belong in search.space, and search cannot override itself")
            model = Params.model_fields.get(section)
            sub = getattr(model, "annotation", None)
            if not name or not (isinstance(sub, type) and name in sub.model_fields):
                raise ValueError(f"overrides.{key}: not a key of params.yaml (write section.key, "
                                 f"e.g. train.epochs)")
        return self


class Params(Section):
    data: DataParams = DataParams()
    baseline: Structure = Structure(dropout=0.3)  # the seed network, as params.yaml ships it
    train: TrainParams = TrainParams()
    student: Structure = Structure(conv_channels=[8, 16], hidden=[32], dropout=0.0)
    distill: DistillParams = DistillParams()
    prune: PruneParams = PruneParams()
    quantize: QuantizeParams = QuantizeParams()
    evaluate: EvaluateParams = EvaluateParams()
    gate: GateParams = GateParams()
    search: SearchParams = SearchParams()

    @model_validator(mode="after")
    def _cross_checks(self) -> "Params":
        if self.distill.epochs and self.distill.epochs > self.train.epochs:
            raise ValueError(f"distill.epochs ({self.distill.epochs}) exceeds train.epochs "
                             f"({self.train.epochs}): the baseline must get at least the student's "
                             f"epoch budget, or it flatters the student")
        if self.distill.require_smaller:
            try:
                t, s = param_count(self.baseline, NOMINAL_INPUT), param_count(self.student, NOMINAL_INPUT)
            except ShapeError:
                t = s = None  # judged against the real input shape by the stage itself
            if t is not None and s >= t:
                raise ValueError(f"student ({s:,} params at 1x28x28) is not smaller than the baseline "
                                 f"({t:,}); shrink student.conv_channels / student.hidden, or set "
                                 f"distill.require_smaller: false")
        total = self.data.limit or (5000 if self.data.source == "mnist5k" else None)
        if total is not None:  # idx/npz sizes are only known to the stage, which checks again
            train_n = int(total * (1 - self.data.val_fraction - self.data.test_fraction))
            need = self.quantize.calibration_batches * self.quantize.calibration_batch_size
            if need > train_n:
                raise ValueError(f"quantize.calibration_batches x calibration_batch_size = {need} images, "
                                 f"but the data leaves about {train_n} training images; lower them")
        self._check_search_choices()
        return self

    def _check_search_choices(self) -> None:
        """Each choice must make a valid structure of the target (input size aside: only
        the stage knows the data's shape, so a too-small structure fails there)."""
        base = getattr(self, self.search.target).model_dump()
        for key, values in self.search.space.choices().items():
            for i, value in enumerate(values):
                try:
                    Structure.model_validate({**base, key: value})
                except ValidationError as err:
                    msg = err.errors()[0]["msg"].removeprefix("Value error, ")
                    raise ValueError(f"search.space.{key}[{i}] = {value!r}: {msg}") from None


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
    if argv and argv[0] in ("-h", "--help"):
        print("usage: slimline check [PARAMS_FILE]  (default params.yaml): validate it, exit 2 if invalid")
        return 0
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
