"""The distill stage's experiment: one student trained two or three ways, same seed and recipe.

From scratch (the ablation that makes the KD gain a paired, fair difference), with Hinton's
logit KD and, with distill.features on, with logit KD plus FitNets feature hints; then the
logit-KD run is the ablation that measures the hints (reported, never saved). All reuse
the one training loop (slimline.training.trainer.train_network).
"""
from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

from torch import nn

from slimline.compress.features import FeatureHints, HintPair, resolve_pairs
from slimline.compress.kd import load_teacher, make_kd_loss
from slimline.compress.student import Init, student_plan
from slimline.compress.student import size as student_size
from slimline.data.dataset import Prepared
from slimline.errors import StageError
from slimline.io import replace_dir
from slimline.model import ModelSpec, build_model, count_params, load_spec
from slimline.params import Params, TrainParams
from slimline.training import distributed
from slimline.training.loop import resolve_device
from slimline.training.trainer import Trained, train_network


@dataclass
class Distilled:
    spec: ModelSpec  # the student's
    pairs: list[HintPair]  # the feature maps hinted; empty: logit KD only
    scratch: Trained
    logit: Trained  # logit KD alone: the hints' ablation, or the saved student itself without hints
    kd: Trained  # the saved student


def plan_student(params: Params, teacher: nn.Module, teacher_dir: Path
                 ) -> tuple[ModelSpec, Init | None, list[HintPair]]:
    """The student's spec and init (derived from the teacher when params ask), checked to be
    smaller than the teacher, and the feature maps to hint (none with distill.features off)."""
    spec, init = student_plan(params.student, load_spec(teacher_dir), params.prune.graph_timeout_s)
    if params.distill.require_smaller:
        # Against the teacher as trained (models/baseline, a dep), not params' baseline
        # section, which this stage does not read.
        s, t = student_size(spec, init), count_params(teacher)
        if s >= t:
            raise StageError(f"student has {s:,} params, the baseline {t:,}: the student must be "
                             f"smaller. Shrink `student`, or set distill.require_smaller: false")
    pairs = []
    if params.distill.features != "off":
        probe = build_model(spec)  # the student's modules, for the pairs (train_network reseeds)
        student = init(probe) if init else probe
        pairs = resolve_pairs(params.distill.features, teacher, student, spec.input_shape)
    return spec, init, pairs


def distill_student(params: Params, cfg: TrainParams, prep: Prepared, teacher_dir: Path,
                    out: Path, scratch_out: Path, deps: list[str]) -> Distilled:
    """Train the scratch student to scratch_out and the distilled one to out; each resumes
    after a kill (its resume key: the student, the recipe, the spec, and for KD the distill
    params). deps: the stage's code and data, which the resume keys also follow."""
    teacher = load_teacher(teacher_dir, resolve_device(cfg.device))
    spec, init, pairs = plan_student(params, teacher, teacher_dir)
    # The spec too: a derived student changes with its teacher's architecture.
    key = {"student": params.student.model_dump(), "train": cfg.model_dump(), "spec": asdict(spec)}
    # Each model is saved beside its target and moved in only when every training has
    # finished, so a failure in KD never leaves a new scratch model next to an old student.
    pending = {o: o.parent / f".{o.name}.pending" for o in (scratch_out, out)}
    train = partial(train_network, spec=spec, cfg=cfg, prep=prep, deps=deps, init=init, keep_checkpoints=True,
                    loader=params.loader)
    scratch = train("distill_scratch", out_dir=pending[scratch_out], key_params=key)
    logit_cfg = params.distill.model_copy(update={"features": "off"})
    logit_key = {**key, "distill": params.distill.model_dump(exclude={"features", "feature_weight"})}
    kd_deps = [*deps, str(teacher_dir)]
    if pairs:  # the logit-KD ablation: measured and reported, never an output
        with tempfile.TemporaryDirectory(prefix="slimline-logit-kd-") as logit_out:
            logit = train("distill_logit_kd", out_dir=logit_out, key_params=logit_key, deps=kd_deps,
                          loss_fn=make_kd_loss(teacher, logit_cfg), log=False)
        hints = FeatureHints(teacher, pairs, params.distill.feature_weight, cfg.seed)
        kd = train("distill", out_dir=pending[out],
                   key_params={**key, "distill": params.distill.model_dump()}, deps=kd_deps,
                   loss_fn=make_kd_loss(teacher, params.distill, hints), hints=hints)
        runs = [scratch, logit, kd]
    else:
        kd = logit = train("distill", out_dir=pending[out], key_params=logit_key, deps=kd_deps,
                           loss_fn=make_kd_loss(teacher, logit_cfg))
        runs = [scratch, kd]
    if distributed.current().writer:  # under torchrun, rank 0 writes
        for target, tmp in pending.items():
            replace_dir(tmp, target)
        # All done: only now drop the checkpoints, so a kill during KD never retrains scratch.
        for r in runs:
            r.store.clear()
    return Distilled(spec=spec, pairs=pairs, scratch=scratch, logit=logit, kd=kd)
