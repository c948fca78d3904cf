"""Knowledge distillation: Hinton's logit loss (plus feature hints), and the teacher it distils from."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from slimline.errors import StageError
from slimline.model import load_model
from slimline.params import DistillParams


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            temperature: float, alpha: float) -> torch.Tensor:
    """alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y).

    T^2 keeps the soft term's gradients on the scale of the hard term's
    (Hinton et al. 2015), so alpha means the same at any temperature.
    """
    t = temperature
    soft = F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                    reduction="batchmean", log_target=True) * (t * t)
    return alpha * soft + (1 - alpha) * F.cross_entropy(student_logits, labels)


def make_kd_loss(teacher: torch.nn.Module, cfg: DistillParams, hints: torch.nn.Module | None = None):
    """A loss for training.fit: the teacher sees exactly the (augmented) batch the student sees.
    With `hints` (slimline.compress.features.FeatureHints, attached to the student), their
    feature loss is added to the logit loss. (Not imported here: stages that only need the
    logit loss, like prune, do not depend on the feature code.)"""
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)

    def loss(logits, xb, yb):
        with torch.no_grad():
            t_logits = teacher(xb).float()
        out = kd_loss(logits, t_logits, yb, cfg.temperature, cfg.alpha)
        return out if hints is None else out + hints.loss()

    return loss


def load_teacher(path: Path, device) -> torch.nn.Module:
    if not (Path(path) / "structure.json").exists():
        raise StageError(f"no teacher model in {path}: run the `train_baseline` stage first "
                         f"(`dvc repro train_baseline`)")
    model, _ = load_model(path)
    return model.to(device)
