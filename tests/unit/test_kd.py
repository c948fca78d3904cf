"""The KD loss against a hand computation, and make_kd_loss's frozen teacher."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from slimline.compress.kd import kd_loss, make_kd_loss
from slimline.params import DistillParams

STUDENT = [[1.0, 2.0, 0.5], [-1.0, 0.0, 3.0]]
TEACHER = [[2.0, 1.0, -1.0], [0.5, 0.5, 2.5]]
LABELS = [1, 2]


def _softmax(row):
    m = max(row)
    e = [math.exp(v - m) for v in row]
    s = sum(e)
    return [v / s for v in e]


def _hand_kd(student, teacher, labels, t, alpha):
    kl = 0.0
    ce = 0.0
    for s_row, t_row, y in zip(student, teacher, labels, strict=True):
        p = _softmax([v / t for v in t_row])  # teacher, softened
        q = _softmax([v / t for v in s_row])  # student, softened
        kl += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))
        ce += -math.log(_softmax(s_row)[y])
    n = len(labels)
    return alpha * t * t * kl / n + (1 - alpha) * ce / n


@pytest.mark.parametrize("t, alpha", [(1.0, 0.5), (4.0, 0.5), (2.0, 0.3), (3.0, 1.0), (4.0, 0.0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kd_loss_matches_hand_computation(t, alpha, dtype):
    got = kd_loss(torch.tensor(STUDENT, dtype=dtype), torch.tensor(TEACHER, dtype=dtype),
                  torch.tensor(LABELS), t, alpha)
    want = _hand_kd(STUDENT, TEACHER, LABELS, t, alpha)
    assert got.ndim == 0
    assert float(got) == pytest.approx(want, abs=1e-6)


def test_kd_loss_alpha_zero_is_plain_cross_entropy():
    s, t, y = torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(LABELS)
    ce = sum(-math.log(_softmax(r)[c]) for r, c in zip(STUDENT, LABELS, strict=True)) / 2
    for temp in (1.0, 4.0, 10.0):
        got = float(kd_loss(s, t, y, temp, 0.0))
        assert got == pytest.approx(ce, abs=1e-6)
        assert got == pytest.approx(float(nn.functional.cross_entropy(s, y)), abs=1e-6)


@pytest.mark.parametrize("temp", [1.0, 4.0, 20.0])
def test_kd_loss_alpha_one_identical_logits_is_zero(temp):
    s = torch.tensor(STUDENT)
    assert float(kd_loss(s, s.clone(), torch.tensor(LABELS), temp, 1.0)) == pytest.approx(0.0, abs=1e-7)


def test_kd_loss_soft_term_is_scaled_by_t_squared():
    # alpha=1: loss(T) == T^2 * KL at T, so dividing by T^2 gives the raw KL.
    s, t, y = torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(LABELS)
    for temp in (2.0, 5.0):
        raw_kl = _hand_kd(STUDENT, TEACHER, LABELS, temp, 1.0) / temp ** 2
        assert float(kd_loss(s, t, y, temp, 1.0)) / temp ** 2 == pytest.approx(raw_kl, abs=1e-7)



def test_make_kd_loss_freezes_teacher_and_trains_student():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(5, 8), nn.Dropout(0.5), nn.Linear(8, 3))
    student = nn.Linear(5, 3)
    teacher.train()
    cfg = DistillParams(temperature=3.0, alpha=0.7)
    loss_fn = make_kd_loss(teacher, cfg)
    assert not teacher.training
    assert all(not m.training for m in teacher.modules())
    assert all(not p.requires_grad for p in teacher.parameters())

    xb, yb = torch.randn(6, 5), torch.tensor([0, 1, 2, 0, 1, 2])
    logits = student(xb)
    logits.retain_grad()
    loss = loss_fn(logits, xb, yb)
    loss.backward()

    assert logits.grad is not None and logits.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    # eval mode: dropout off, so the teacher's targets are deterministic and the loss is
    # exactly kd_loss against the teacher's eval-mode logits on the same batch
    with torch.no_grad():
        t_logits = teacher(xb)
        assert torch.equal(t_logits, teacher(xb))
        want = kd_loss(logits.detach(), t_logits, yb, cfg.temperature, cfg.alpha)
    assert loss.item() == pytest.approx(want.item(), abs=1e-6)
    assert loss_fn(logits.detach(), xb, yb).item() == pytest.approx(loss.item(), abs=1e-7)
