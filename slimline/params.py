"""The one typed schema for params.yaml.

Every stage calls `load_params(sections=...)` before doing any work, so an unknown
key or a bad value in a section it reads stops it at once with a message naming the
key, the value and what is allowed. The whole file is checked before any work by
`slimline check` (slimline/check.py), `make run` and the flow.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Literal, Optional, Union, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from slimline.errors import ShapeError

NOMINAL_INPUT = (1, 28, 28)  # for size checks made before the data is known


class Section(BaseModel):
    # extra="forbid" is what turns a typo ("lr_rate") into an error instead of
    # a silently ignored setting.
    model_config = ConfigDict(extra="forbid", frozen=True)


class Normalization(BaseModel):
    """The preprocessing imported weights were trained with: (pixels * scale - mean) / std."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scale: float = Field(1 / 255, gt=0, description="Multiplies raw pixels first (1/255: 0..255 to 0..1).")
    mean: list[float] = Field(min_length=1, description="Per channel (or one for all), subtracted "
                                                        "after scaling.")
    std: list[float] = Field(min_length=1, description="Per channel (or one for all), divides after "
                                                       "the mean.")

    @model_validator(mode="after")
    def _check(self):
        if len(self.mean) != len(self.std):
            raise ValueError(f"normalize.mean has {len(self.mean)} values and std {len(self.std)}: "
                             f"give one per channel to both")
        if min(self.std) <= 0:
            raise ValueError(f"normalize.std must be positive, got {self.std}")
        return self


class DataParams(Section):
    """`data`: where the images come from and how they are split (stage `prepare`)."""

    source: Literal["mnist5k", "idx", "npz", "imagefolder"] = Field(
        "mnist5k", description="Where the images come from: mnist5k (the packaged MNIST digits, "
                               "offline), idx (a folder of MNIST IDX files), npz (a file of x, y arrays) "
                               "or imagefolder (a folder of class folders of images).")
    path: Optional[str] = Field(
        None, description="The folder (idx, imagefolder) or .npz file (npz) to read; required for "
                          "those sources, unused for mnist5k.")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="Fraction of the images held out for "
                                                             "validation, stratified by class.")
    test_fraction: float = Field(
        0.2, gt=0, lt=1, description="Fraction of the images held out for testing; used only when "
                                     "the source has no test split of its own.")
    seed: int = Field(0, ge=0, description="Seed of the split and of the `limit` sample.")
    min_per_class: int = Field(10, ge=1, description="Fewest train images each class must have; "
                                                     "fewer fails validation before anything is written.")
    limit: Optional[int] = Field(None, ge=20, description="Stratified cap on the number of images, "
                                                          "for tiny configs; null: use them all.")
    pixel_max: float = Field(255.0, gt=0, description="Largest allowed pixel value: every pixel "
                                                      "must lie in [0, pixel_max].")
    num_classes: Optional[int] = Field(None, ge=2, description="Number of classes; null: inferred "
                                                               "as the largest label + 1.")
    image_size: Optional[list[int]] = Field(
        None, min_length=2, max_length=2, description="imagefolder: resize every image to [H, W]; "
                                                      "null: all images must share one size.")
    channels: Optional[Literal[1, 3]] = Field(
        None, description="imagefolder: convert every image to 1 (grayscale) or 3 (RGB) channels; "
                          "null: those of the first train image.")
    normalize: Optional[Normalization] = Field(
        None, description="The model's first layer: auto (or null: mean and std of the train split, on "
                          "raw pixels) or {scale, mean, std}, the preprocessing imported weights expect.")

    @field_validator("normalize", mode="before")
    @classmethod
    def _auto(cls, v):
        if isinstance(v, str):
            if v != "auto":
                raise ValueError(f"expected auto or a mapping {{scale, mean, std}}, got {v!r}")
            return None
        return v

    @model_validator(mode="after")
    def _check(self) -> "DataParams":
        if self.source in ("idx", "npz", "imagefolder") and not self.path:
            raise ValueError(f"data.path is required when data.source is '{self.source}' "
                             f"(a folder for idx and imagefolder, a .npz file for npz)")
        if self.source != "imagefolder" and (self.image_size is not None or self.channels is not None):
            raise ValueError("data.image_size and data.channels apply to source imagefolder only")
        if self.image_size is not None and min(self.image_size) < 1:
            raise ValueError(f"data.image_size must be two positive sizes [H, W], got {self.image_size}")
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError("data.val_fraction + data.test_fraction must be below 0.9 "
                             "so that training keeps most of the data")
        return self


class Structure(BaseModel):
    """A network's structure choices; the `baseline` (teacher) and `student` sections."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    conv_channels: list[int] = Field(
        default_factory=lambda: [32, 64],
        description="Output channels of each conv block, one block per entry (conv, optional batch "
                    "norm, activation, max-pool); [] for none.")
    kernel_size: int = Field(3, ge=1, le=11, description="Square kernel size of every conv block, in pixels.")
    padding: int = Field(0, ge=0, description="Zero padding on each side of every conv block's input, "
                                              "in pixels.")
    pool: int = Field(2, ge=1, le=4, description="Max-pool size and stride after each conv block; "
                                                 "1 turns pooling off.")
    hidden: list[int] = Field(
        default_factory=lambda: [128],
        description="Width of each fully-connected hidden layer, one layer per entry; [] for none.")
    activation: Literal["relu", "leaky_relu", "elu", "gelu", "silu"] = Field(
        "relu", description="Activation after every conv and hidden layer (never after the output logits).")
    negative_slope: float = Field(0.01, gt=0, lt=1, description="Slope for negative inputs; "
                                                                "leaky_relu only.")
    alpha: float = Field(1.0, gt=0, description="Saturation value for negative inputs; elu only.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout probability after each hidden layer; "
                                                        "0 turns it off.")
    batch_norm: bool = Field(False, description="Batch norm after each conv and hidden layer, "
                                                "before the activation.")

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


MODEL_KINDS = ("cnn", "torchvision:<name>", "timm:<name>", "python:<module>:<callable>")


def parse_model_spec(spec: str) -> tuple[str, str]:
    """("torchvision", "resnet18") from "torchvision:resnet18"; ValueError naming the accepted
    forms. The form only: whether the model exists is known when it is built."""
    kind, _, rest = spec.partition(":")
    if spec == "cnn":
        return "cnn", ""
    if kind in ("torchvision", "timm") and rest and ":" not in rest:
        return kind, rest
    if kind == "python" and rest.count(":") == 1 and all(rest.split(":")):
        return kind, rest
    raise ValueError(f"model {spec!r}: expected one of {', '.join(MODEL_KINDS)}")


class NetworkParams(Structure):
    """`baseline`: the model to compress. The structure keys apply to the built-in cnn only."""

    model: str = Field("cnn", description="cnn (the network the structure keys build), "
                                          "torchvision:<name>, timm:<name>, or python:<module>:<callable> "
                                          "(your code, called as "
                                          "fn(num_classes=K, in_channels=C, **kwargs)). "
                                          "See docs/own-model.md.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for the model's "
                                                                     "factory; zoo and python models only.")
    weights: Optional[str] = Field(None, description="A checkpoint to start from: .safetensors, or a "
                                                     "state dict saved with torch.save (never unpickled).")
    skip_training: bool = Field(False, description="With weights: use the imported model as it is "
                                                   "(evaluated and compressed, not retrained).")

    @field_validator("model")
    @classmethod
    def _model_form(cls, v: str) -> str:
        parse_model_spec(v)
        return v

    @model_validator(mode="after")
    def _keys_fit_the_model(self):
        structure_keys = sorted(self.model_fields_set & set(Structure.model_fields))
        if self.model != "cnn" and structure_keys:
            raise ValueError(f"{', '.join(structure_keys)}: structure keys of the built-in cnn; "
                             f"remove them for model {self.model!r} (its kwargs shape it)")
        if self.model == "cnn" and self.kwargs:
            raise ValueError("kwargs apply to zoo and python models, not to the built-in cnn")
        if self.skip_training and not self.weights:
            raise ValueError("skip_training needs weights: there is nothing to use untrained")
        return self

    def structure(self) -> Structure:
        """The cnn structure keys alone (what structure.json and the structure search hold)."""
        return Structure.model_validate(self.model_dump(include=set(Structure.model_fields)))


class Derive(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    from_: Literal["baseline"] = Field("baseline", alias="from", description="The model whose "
                                       "architecture the student takes.")
    width: float = Field(0.5, gt=0, lt=1, description="Fraction of channels kept in every prunable "
                                                      "channel group (rounded to a multiple of 8).")


class StudentParams(NetworkParams):
    """`student`: the small model trained with KD (and from scratch, the ablation)."""

    skip_training: bool = Field(False, description="Always false for the student: distill trains it "
                                                   "(its weights, if set, are a starting point).")
    derive: Optional[Derive] = Field(None, description="Derive the student from the baseline's "
                                                       "architecture, uniformly shrunk, freshly "
                                                       "initialised; replaces model and the structure keys.")

    @model_validator(mode="after")
    def _trained_by_distill(self):
        if self.skip_training:
            raise ValueError("skip_training: the student is what distill trains; import its weights "
                             "as a starting point instead (weights without skip_training)")
        return self

    @model_validator(mode="after")
    def _derive_alone(self):
        if self.derive is not None:
            placeholders = {"model": "cnn", "kwargs": {}, "weights": None, "skip_training": False}
            clash = sorted(k for k in self.model_fields_set - {"derive"}
                           if k not in placeholders or getattr(self, k) != placeholders[k])
            if clash:
                raise ValueError(f"derive builds the student from the baseline: remove "
                                 f"{', '.join(clash)}")
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


class DistributedParams(Section):
    """`train.distributed`: data-parallel training under torchrun. It changes results (each rank
    has its own BatchNorm statistics and dropout stream), so it is part of the recipe."""

    nproc_per_node: int = Field(
        1, ge=1, le=64, description="Ranks (processes) per training stage: one per GPU on CUDA, at most "
                                    "one per core on the CPU, sharing train.num_threads. Each step's "
                                    "train.batch_size images are split over them; 1 trains in one process.")


class TrainParams(Section):
    """`train`: the recipe every trained model gets (stage `train_baseline`)."""

    epochs: int = Field(15, ge=1, description="Passes over the train split.")
    batch_size: int = Field(64, ge=1, description="Images per optimizer step.")
    optimizer: Literal["sgd", "adamw"] = Field("sgd", description="sgd (Nesterov momentum) or adamw.")
    lr: float = Field(0.05, gt=0, le=10, description="Learning rate; the peak rate under the "
                                                     "onecycle schedule.")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (Nesterov when above 0); "
                                                         "unused by adamw.")
    weight_decay: float = Field(5e-4, ge=0, description="Weight decay of either optimizer; 0 turns it off.")
    schedule: Literal["onecycle", "cosine", "none"] = Field(
        "onecycle", description="Learning-rate schedule over all steps; none keeps lr constant.")
    augment_shift: int = Field(2, ge=0, le=8, description="Largest random shift of each train image, "
                                                          "in pixels either way; 0 turns it off.")
    crop_scale: Optional[tuple[float, float]] = Field(
        None, description="Random resized crop of each train image, for photos: the range of the "
                          "fraction of its area kept, e.g. [0.08, 1.0] (torchvision's default), resized "
                          "back to the input size; null turns it off.")
    hflip: bool = Field(False, description="Flip each train image left-right with probability 0.5, for "
                                           "photos (not digits or text).")
    grad_clip: Optional[float] = Field(
        2.0, gt=0, description="Largest gradient norm; keeps KD at high alpha from collapsing; "
                               "null turns clipping off.")
    seed: int = Field(0, ge=0, description="Seed of initialisation, shuffling and augmentation.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where to train; auto uses CUDA when a device is visible, else the CPU.")
    num_threads: int = Field(
        2, ge=1, description="CPU threads for training; part of the result, because the thread "
                             "count sets the summation order.")
    numerics: Literal["portable", "fast"] = Field(
        "portable", description="CPU math: portable is bit-identical on any x86-64 CPU with AVX2+FMA, "
                                "Intel or AMD (see slimline/numerics.py); fast uses each CPU's fastest "
                                "kernels, reproducible only on the same kind of CPU.")

    distributed: DistributedParams = Field(
        DistributedParams(), description="Data-parallel training under torchrun: ranks per training stage.")

    @field_validator("crop_scale")
    @classmethod
    def _crop_scale(cls, v):
        if v is not None and not 0 < v[0] <= v[1] <= 1:
            raise ValueError(f"crop_scale must be [low, high] with 0 < low <= high <= 1, got {list(v)}")
        return v


class LoaderParams(Section):
    """`loader`: how training stages read batches from disk. These settings never change a
    result (the same batches reach the model in the same order), so no stage lists them as
    a dvc.yaml param: changing them reruns nothing."""

    workers: int = Field(0, ge=0, le=64, description="DataLoader worker processes reading batches "
                                                    "ahead of the model; 0 reads them in the training "
                                                    "process, which is fastest for small images on a CPU.")
    prefetch: int = Field(2, ge=1, le=64, description="Batches each worker reads ahead.")
    pin_memory: bool = Field(True, description="On CUDA, read batches into page-locked memory so that "
                                               "the copy to the GPU overlaps compute.")


class DistillParams(Section):
    """`distill`: Hinton KD from models/baseline into the `student` structure."""

    temperature: float = Field(4.0, gt=0, le=20, description="Softmax temperature of the teacher's "
                                                             "and student's logits in the KD term.")
    alpha: float = Field(0.5, ge=0, le=1, description="Weight of the soft (teacher) KD term; "
                                                      "1 - alpha weighs the labels.")
    epochs: Optional[int] = Field(
        None, ge=1, description="Student training epochs; null: train.epochs, and never more than "
                                "the baseline got.")
    require_smaller: bool = Field(True, description="Reject a student with no fewer params than "
                                                    "the baseline (teacher).")
    features: Union[Literal["off", "auto"], list[tuple[str, str]]] = Field(
        "off", description="Feature KD (FitNets hints) on top of logit KD: off, auto (the last block of "
                           "each resolution stage, paired by spatial size) or a list of "
                           "[teacher_module, student_module] pairs (docs/compression.md).")
    feature_weight: float = Field(3.0, gt=0, description="Weight of the hint loss: the mean over pairs "
                                                         "of the MSE between adapted student and "
                                                         "teacher feature maps.")

    @field_validator("features", mode="before")
    @classmethod
    def _features(cls, v):
        if v is False:  # YAML 1.1 reads a bare `off` as false
            return "off"
        if v is True:
            raise ValueError("expected off or auto: YAML reads a bare on/yes/true as true; write auto")
        if isinstance(v, str):
            if v not in ("off", "auto"):
                raise ValueError("expected off, auto or a list of [teacher_module, student_module] pairs")
            return v
        bad = not isinstance(v, list) or not v or any(
            not isinstance(p, (list, tuple)) or len(p) != 2 or not all(isinstance(n, str) and n for n in p)
            for p in v)
        if bad:
            raise ValueError("expected off, auto or a non-empty list of [teacher_module, student_module] "
                             "pairs of module names")
        return [tuple(p) for p in v]


# The names of slimline.compress.pruning.PRUNERS (here without importing torch).
PruneMethod = Literal["unstructured", "structured", "layer"]
PRUNE_METHODS: tuple[str, ...] = get_args(PruneMethod)


class PruneParams(Section):
    """`prune`: each listed method makes its own variant (stage prune@<method>)."""

    source: Literal["baseline", "student"] = Field(
        "baseline", description="The model to prune: models/baseline or the distilled models/student.")
    methods: list[PruneMethod] = Field(
        default_factory=lambda: list(PRUNE_METHODS), min_length=1,
        description="Pruning methods to run, each a stage prune@<method> with its own variant.")
    amount: float = Field(0.75, ge=0, lt=1, description="Fraction of weights (unstructured) or "
                                                        "channels (structured) removed.")
    steps: int = Field(3, ge=1, description="Prune in this many steps, fine-tuning after each.")
    finetune_epochs: int = Field(2, ge=0, description="Fine-tuning epochs per step; 0 turns "
                                                      "fine-tuning off.")
    layers_to_remove: int = Field(1, ge=1, description="Layer method: whole hidden layers or conv "
                                                       "blocks to remove.")
    ablation_epochs: int = Field(1, ge=0, description="Layer method: fine-tuning epochs before "
                                                      "scoring each candidate removal.")
    distill: bool = Field(True, description="Fine-tune with the KD loss from models/baseline "
                                            "instead of the labels alone.")
    ratios: Literal["uniform", "sensitivity"] = Field(
        "uniform", description="Structured method: remove `amount` of every layer's channels, or per-layer "
                               "ratios from a sensitivity scan that remove as many FLOPs "
                               "(docs/compression.md).")
    scan_ratios: list[float] = Field(
        default_factory=lambda: [0.25, 0.5, 0.75, 0.9], min_length=1,
        description="ratios: sensitivity: the ratios each layer is pruned by, alone, in the scan; the "
                    "largest caps every layer's ratio.")
    graph_timeout_s: float = Field(
        120.0, gt=0, description="Seconds one Torch-Pruning graph step may take (structured pruning and "
                                 "its scan, student.derive; also each step of `slimline check`'s model "
                                 "preflight). Past it, structured pruning is not applicable and derive "
                                 "fails (docs/own-model.md).")

    @field_validator("methods")
    @classmethod
    def _unique(cls, v):
        if len(set(v)) != len(v):
            raise ValueError(f"methods lists a method twice: {v}")
        return v

    @field_validator("scan_ratios")
    @classmethod
    def _fractions(cls, v):
        if any(not 0 < r < 1 for r in v) or sorted(set(v)) != v:
            raise ValueError(f"scan_ratios must be increasing fractions in (0, 1), got {v}")
        return v

    @model_validator(mode="after")
    def _scan_reaches_amount(self):
        if self.ratios == "sensitivity" and self.amount > self.scan_ratios[-1]:
            raise ValueError(f"amount {self.amount} is more than the largest of scan_ratios "
                             f"{self.scan_ratios}: add a ratio of at least {self.amount} to scan_ratios")
        return self


class QuantizeParams(Section):
    """`quantize`: ONNX export of every model, then ONNX Runtime variants."""

    variants: list[Literal["dynamic", "static", "fp16"]] = Field(
        default_factory=lambda: ["dynamic", "static", "fp16"],
        description="Variants made from each fp32 ONNX model: dynamic int8, static int8 (QDQ, "
                    "calibrated) and fp16; [] exports fp32 only.")
    calibration_batches: int = Field(8, ge=1, description="Batches of train images that calibrate "
                                                          "static int8.")
    calibration_batch_size: int = Field(32, ge=1, description="Images per calibration batch.")
    min_agreement: float = Field(
        0.99, gt=0, le=1, description="Least top-1 agreement with the fp32 source on the test split; "
                                      "evaluate applies it: a variant below it is not eligible to ship.")
    max_accuracy_drop: float = Field(
        0.005, ge=0, lt=1, description="Largest val accuracy drop of a variant below its own fp32 source, as "
                                       "a fraction (0.005 = 0.5 pt). quantize keeps static int8's most "
                                       "sensitive nodes in fp32 to meet it; evaluate applies it: a variant "
                                       "over it is not eligible to ship. Not evaluate.max_accuracy_drop, "
                                       "which is against the baseline.")
    max_excluded: int = Field(3, ge=0, description="Most nodes static int8 may keep in fp32 to meet "
                                                   "max_accuracy_drop; 0: none. A variant still over budget "
                                                   "is written as its best attempt, and evaluate rejects it.")
    sensitivity_scan: bool = Field(
        True, description="Rank every static int8 variant's nodes by sensitivity for reports/sensitivity.md "
                          "(one quantization per int8 node); false: only for a variant over "
                          "max_accuracy_drop.")
    opset: int = Field(17, ge=17, le=21, description="ONNX opset of the export.")


class QatParams(Section):
    """`qat`: quantization-aware training, a static int8 variant `<model>.int8_qat` fine-tuned with
    fake int8 under KD from the baseline (stages qat@<model> and qat_prune@<method>). A section of its
    own: turning it on does not rerun quantize's variants."""

    enabled: bool = Field(False, description="Make the QAT variants; false: each QAT stage writes "
                                             "only a marker, and evaluate has no QAT variant.")
    models: list[Literal["baseline", "student"]] = Field(
        default_factory=lambda: ["student"],
        description="Trained models that get a QAT variant, each a stage qat@<model>.")
    pruned: list[PruneMethod] = Field(
        default_factory=list, description="Pruned models (prune.methods) that get a QAT variant "
                                          "`prune_<method>.int8_qat`, each a stage qat_prune@<method>.")
    epochs: int = Field(2, ge=1, description="Fine-tuning epochs with fake quantization; the epoch with "
                                             "the best val accuracy is exported.")
    lr: float = Field(0.005, gt=0, le=10, description="Starting learning rate, decayed by cosine to 0; "
                                                      "the rest of the recipe is train's.")

    @model_validator(mode="after")
    def _some_model(self):
        for key in ("models", "pruned"):
            items = getattr(self, key)
            if len(set(items)) != len(items):
                raise ValueError(f"qat.{key} lists a model twice: {items}")
        if not self.models and not self.pruned:
            # evaluate reads models/qat: at least one stage must make it (enabled: false for none)
            raise ValueError("qat.models and qat.pruned are both empty: list at least one model "
                             "(qat.enabled: false turns QAT off)")
        return self


# Where a variant can run (slimline/runtime/registry.py): ONNX Runtime's CPU provider;
# OpenVINO on the CPU at f32, or at bf16 by name; ONNX Runtime's GPU providers (onnxruntime-gpu).
Runtime = Literal["onnxruntime", "openvino", "openvino-bf16", "onnxruntime-cuda", "onnxruntime-tensorrt"]
RUNTIMES: tuple[str, ...] = get_args(Runtime)


class EvaluateParams(Section):
    """`evaluate`: measure every variant on every runtime and choose the (variant, runtime) to ship."""

    objective: Literal["latency", "size"] = Field(
        "latency", description="What the shipped variant minimises among those within every budget: "
                               "p50 latency or file size.")
    max_accuracy_drop: float = Field(
        0.005, ge=0, lt=1, description="Largest val accuracy drop below the baseline, as a fraction "
                                       "(0.005 = 0.5 pt).")
    max_bytes: Optional[int] = Field(None, ge=1, description="Largest model file size in bytes; "
                                                             "null: no size budget.")
    max_p50_ms: Optional[float] = Field(
        None, gt=0, description="Largest p50 latency at batch 1 on the pair's runtime, in ms; null: no "
                                "latency budget.")
    runtimes: list[Runtime] = Field(
        default_factory=lambda: ["onnxruntime", "openvino"], min_length=1,
        description="Runtimes every variant is measured on; each (variant, runtime) pair is a candidate to "
                    "ship. The first is the reference: budgets and speed-ups are against the baseline on it. "
                    "openvino computes in f32, openvino-bf16 in bf16; onnxruntime-cuda and "
                    "onnxruntime-tensorrt need the onnxruntime-gpu package (make setup-gpu).")
    require_selection: bool = Field(False, description="Fail the stage when no variant meets every "
                                                       "budget; false ships no model and records why.")
    threads: int = Field(1, ge=1, description="Threads of every runtime, and torch's, for timing.")
    warmup: int = Field(20, ge=0, description="Untimed runs of each variant before the first round.")
    repeats: int = Field(200, ge=10, description="Timed runs per variant and round; a round's p50 is over "
                                                 "these.")
    rounds: int = Field(5, ge=5, description="Timing rounds; in each, the variants take turns in blocks of "
                                             "calls. Every round's p50 is kept, and one variant beats "
                                             "another only in 80% of the rounds (4 of 5).")
    latency_margin: float = Field(
        0.10, ge=0, lt=1, description="Relative p50 lead a variant needs, round by round, to beat another. "
                                      "objective latency: the variants the fastest does not beat tie, and "
                                      "fewer bytes decide.")
    switch_margin: float = Field(
        0.25, ge=0, lt=10, description="Hysteresis against the incumbent (models/incumbent.json, the "
                                       "variant last shipped and accepted): a challenger replaces it only "
                                       "when it beats it by latency_margin in 4 of 5 rounds and its median "
                                       "p50 is this much lower too (relative), or when the incumbent misses "
                                       "a budget. Must be at least latency_margin.")

    @field_validator("runtimes")
    @classmethod
    def _unique_runtimes(cls, v):
        if len(set(v)) != len(v):
            raise ValueError(f"runtimes lists a runtime twice: {v}")
        return v

    @model_validator(mode="after")
    def _switch_wider_than_tie(self):
        if self.switch_margin < self.latency_margin:
            raise ValueError(f"evaluate.switch_margin ({self.switch_margin}) must be at least "
                             f"evaluate.latency_margin ({self.latency_margin}): the band that replaces "
                             f"the incumbent is the wider one")
        return self


class GateParams(Section):
    """`gate`: the pipeline flow's regression gate (no stage reads it, so changing it
    reruns nothing). A run fails when its selected model is worse than the previous
    run's (the last commit's reports/evaluate.json) by more than these margins."""

    max_accuracy_drop: float = Field(
        0.005, ge=0, lt=1, description="Largest fall in the shipped model's test accuracy, as a "
                                       "fraction (0.005 = 0.5 pt).")
    max_latency_increase: float = Field(
        0.5, ge=0, description="Largest rise in the shipped model's p50 relative to the baseline's "
                               "p50, as a fraction (0.5 = 50%); compared on the same CPU model only.")
    enabled: bool = Field(True, description="Run the gate; false lets every run pass.")


STRUCTURE_KEYS = ("conv_channels", "hidden", "activation", "dropout")  # what a search may vary


class SearchSpace(Section):
    """`search.space`: the choices per structure key; a key left out keeps the target's value."""

    conv_channels: Optional[list[list[int]]] = Field(
        None, min_length=1, description="Choices of conv_channels, one list per choice, e.g. "
                                        "[[32, 64], [16, 32]]; null: keep the target's value.")
    hidden: Optional[list[list[int]]] = Field(
        None, min_length=1, description="Choices of hidden (layer count and widths), one list per "
                                        "choice; [] is no hidden layer; null: keep the target's value.")
    activation: Optional[list[Literal["relu", "leaky_relu", "elu", "gelu", "silu"]]] = Field(
        None, min_length=1, description="Choices of activation; null: keep the target's value.")
    dropout: Optional[list[float]] = Field(
        None, min_length=1, description="Choices of dropout; null: keep the target's value.")

    def choices(self) -> dict[str, list]:
        """{key: choices} for the keys being searched, in STRUCTURE_KEYS order."""
        return {k: getattr(self, k) for k in STRUCTURE_KEYS if getattr(self, k) is not None}


class SearchParams(Section):
    """`search`: structure search (python -m flows.search). No stage reads it: each
    candidate is a DVC experiment of the target's training stage with `-S` overrides."""

    target: Literal["baseline", "student"] = Field(
        "baseline", description="The structure searched: baseline (stage train_baseline) or student "
                                "(stage distill).")
    space: SearchSpace = Field(
        SearchSpace(activation=["relu", "leaky_relu", "elu"], hidden=[[128], [128, 64]]),
        description="Choices per structure key; every combination is one candidate (a DVC experiment).")
    strategy: Literal["grid", "random"] = Field(
        "grid", description="grid runs every combination; random draws n of them with seed.")
    n: Optional[int] = Field(None, ge=1, description="random: candidates drawn from the grid, without "
                                                     "repeats; unused by grid.")
    seed: int = Field(0, ge=0, description="random: seed of the draw.")
    objective: Literal["accuracy", "score"] = Field(
        "accuracy", description="Ranking: val accuracy, or score = val accuracy - latency_weight x "
                                "ONNX Runtime p50 ms.")
    latency_weight: float = Field(0.0, ge=0, description="score: val accuracy (a fraction) charged per ms "
                                                                   "of p50 latency.")
    max_params: Optional[int] = Field(None, ge=1, description="Most params a recommended structure "
                                                              "may have; null: no budget.")
    max_flops: Optional[int] = Field(None, ge=1, description="Most FLOPs per image a recommended "
                                                             "structure may have; null: no budget.")
    overrides: dict[str, Any] = Field(
        default_factory=dict, description="Recipe for every candidate, as section.key: value, e.g. "
                                          "{train.epochs: 5}; part of each candidate's identity.")
    workers: int = Field(2, ge=1, description="Local mode: candidates at a time; each gets "
                                              "cores // workers torch threads.")

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
    baseline: NetworkParams = NetworkParams(dropout=0.3)  # the seed network, as params.yaml ships it
    train: TrainParams = TrainParams()
    loader: LoaderParams = LoaderParams()
    student: StudentParams = StudentParams(conv_channels=[8, 16], hidden=[32], dropout=0.0)
    distill: DistillParams = DistillParams()
    prune: PruneParams = PruneParams()
    quantize: QuantizeParams = QuantizeParams()
    qat: QatParams = QatParams()
    evaluate: EvaluateParams = EvaluateParams()
    gate: GateParams = GateParams()
    search: SearchParams = SearchParams()

    @model_validator(mode="after")
    def _cross_checks(self) -> "Params":
        for _, check in CROSS_CHECKS:
            check(self)
        return self


# Checks that involve more than one section: (the sections they read, the check). The
# full check runs them all; a stage runs those whose sections it reads (load_params).
def _distill_epochs(p) -> None:
    if p.distill.epochs and p.distill.epochs > p.train.epochs:
        raise ValueError(f"distill.epochs ({p.distill.epochs}) exceeds train.epochs "
                         f"({p.train.epochs}): the baseline must get at least the student's "
                         f"epoch budget, or it flatters the student")


def _student_smaller(p) -> None:
    if not p.distill.require_smaller or p.baseline.model != "cnn" or p.student.model != "cnn" \
            or p.student.derive is not None:
        return  # only the cnn's size is known from params; distill checks the built models
    try:
        t, s = param_count(p.baseline, NOMINAL_INPUT), param_count(p.student, NOMINAL_INPUT)
    except ShapeError:
        return  # judged against the real input shape by the distill stage itself
    if s >= t:
        raise ValueError(f"student ({s:,} params at 1x28x28) is not smaller than the baseline "
                         f"({t:,}); shrink student.conv_channels / student.hidden, or set "
                         f"distill.require_smaller: false")


def _calibration_fits(p) -> None:
    total = p.data.limit or (5000 if p.data.source == "mnist5k" else None)
    if total is not None:  # idx/npz sizes are only known to the stage, which checks again
        train_n = int(total * (1 - p.data.val_fraction - p.data.test_fraction))
        need = p.quantize.calibration_batches * p.quantize.calibration_batch_size
        if need > train_n:
            raise ValueError(f"quantize.calibration_batches x calibration_batch_size = {need} images, "
                             f"but the data leaves about {train_n} training images; lower them")


def _search_choices(p) -> None:
    """Each choice must make a valid structure of the target (input size aside: only
    the stage knows the data's shape, so a too-small structure fails there)."""
    target = getattr(p, p.search.target)
    if target.model != "cnn" or getattr(target, "derive", None) is not None:
        return  # the search itself refuses a zoo or derived target (slimline.search.space)
    base = target.structure().model_dump()
    for key, values in p.search.space.choices().items():
        for i, value in enumerate(values):
            try:
                Structure.model_validate({**base, key: value})
            except ValidationError as err:
                msg = err.errors()[0]["msg"].removeprefix("Value error, ")
                raise ValueError(f"search.space.{key}[{i}] = {value!r}: {msg}") from None


def _qat_static(p) -> None:
    if p.qat.enabled and "static" not in p.quantize.variants:
        raise ValueError(f"qat.enabled is true but quantize.variants ({p.quantize.variants}) lacks static: "
                         f"QAT exports static int8 and evaluate compares it with the static variant; "
                         f"add static to quantize.variants or set qat.enabled: false")


def _qat_pruned(p) -> None:
    missing = [m for m in p.qat.pruned if m not in p.prune.methods]
    if missing:
        raise ValueError(f"qat.pruned names {missing}, which prune.methods ({p.prune.methods}) does "
                         f"not make: add them to prune.methods or drop them from qat.pruned")


CROSS_CHECKS = [
    (("distill", "train"), _distill_epochs),
    (("distill", "baseline", "student"), _student_smaller),
    (("data", "quantize"), _calibration_fits),
    (("search", "baseline", "student"), _search_choices),
    (("qat", "quantize"), _qat_static),
    (("qat", "prune"), _qat_pruned),
]


@lru_cache(maxsize=None)
def _sections_model(sections: tuple[str, ...]) -> type[Section]:
    """A schema holding only `sections` of Params, with the cross-section checks among them.
    Reading any other section from it is an AttributeError: a stage reads only what it
    declares (and what dvc.yaml reruns it for)."""
    unknown = set(sections) - set(Params.model_fields)
    if unknown:
        raise ValueError(f"not sections of params.yaml: {sorted(unknown)}")

    def cross_checks(self):
        for needs, check in CROSS_CHECKS:
            if set(needs) <= set(sections):
                check(self)
        return self

    fields = {k: (Params.model_fields[k].annotation, Params.model_fields[k]) for k in sections}
    return create_model(f"Params[{','.join(sections)}]", __base__=Section,
                        __validators__={"_cross_checks": model_validator(mode="after")(cross_checks)},
                        **fields)


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


def parse_params(raw: Any, source: str = "params.yaml", sections: Iterable[str] | None = None) -> Params:
    """The whole file validated, or with `sections` only those sections (and the
    cross-section checks among them): a stage is not stopped by a section it never reads."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{source} must hold a mapping of sections, got {type(raw).__name__}")
    try:
        if sections is None:
            return Params.model_validate(raw)
        sections = tuple(sections)
        return _sections_model(sections).model_validate({k: raw[k] for k in sections if k in raw})
    except ValidationError as err:
        raise ParamsError(format_errors(err, source)) from None


def load_params(path: str | Path = "params.yaml", sections: Iterable[str] | None = None) -> Params:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path} not found: run from the project root or pass the path") from None
    except yaml.YAMLError as err:
        raise ParamsError(f"{path} is not valid YAML: {err}") from None
    return parse_params(raw, str(path), sections)
