"""Compression pieces on fixed inputs: the KD loss, selection rules, the params
cross-checks for distill/prune/quantize/evaluate, and the ship bundle + predict CLI."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from slimline.compress.kd import kd_loss, make_kd_loss
from slimline.params import DistillParams, EvaluateParams, ParamsError, Structure, parse_params
from slimline.evaluation.selection import budget_failures, pareto_front, select, wilson_ci

# ---------------------------------------------------------------------------
# 1. kd_loss against a hand computation
# ---------------------------------------------------------------------------

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
    for s_row, t_row, y in zip(student, teacher, labels):
        p = _softmax([v / t for v in t_row])  # teacher, softened
        q = _softmax([v / t for v in s_row])  # student, softened
        kl += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
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
    ce = sum(-math.log(_softmax(r)[c]) for r, c in zip(STUDENT, LABELS)) / 2
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


# ---------------------------------------------------------------------------
# 2. make_kd_loss
# ---------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------
# 3. selection
# ---------------------------------------------------------------------------

def V(name, val, acc=None, size=1000, p50=1.0):
    return {"name": name, "val_accuracy": val, "accuracy": val if acc is None else acc,
            "bytes": size, "ort_p50_ms_b1": p50}


VARIANTS = [
    V("baseline", 0.980, size=100_000, p50=1.00),
    V("fast", 0.978, size=30_000, p50=0.20),
    V("small", 0.976, size=8_000, p50=0.40),
    V("mid", 0.979, size=20_000, p50=0.30),
]


def test_objective_latency_picks_fastest_within_budget():
    chosen, failures = select(VARIANTS, "baseline", EvaluateParams(objective="latency"))
    assert chosen == "fast"
    assert set(failures) == {v["name"] for v in VARIANTS}
    assert all(f == [] for f in failures.values())


def test_objective_size_picks_smallest_within_budget():
    chosen, _ = select(VARIANTS, "baseline", EvaluateParams(objective="size"))
    assert chosen == "small"


def test_accuracy_drop_is_judged_on_val_not_test():
    # 'cheat' has the best test accuracy and is fastest and smallest, but its val
    # accuracy is 1 pt below the baseline's: it must not be chosen.
    variants = VARIANTS + [V("cheat", 0.970, acc=0.999, size=1_000, p50=0.05)]
    for objective, want in (("latency", "fast"), ("size", "small")):
        chosen, failures = select(variants, "baseline", EvaluateParams(objective=objective))
        assert chosen == want
        assert len(failures["cheat"]) == 1
        assert "pt" in failures["cheat"][0] and "val" in failures["cheat"][0]
        assert "1.00 pt" in failures["cheat"][0] and "0.50 pt" in failures["cheat"][0]


def test_accuracy_drop_budget_is_a_fraction_and_inclusive():
    base = V("baseline", 0.98)
    cfg = EvaluateParams(max_accuracy_drop=0.005)  # 0.5 pt
    assert budget_failures(V("at", 0.975), base, cfg) == []  # exactly 0.5 pt (float noise included)
    assert budget_failures(V("under", 0.976), base, cfg) == []
    assert budget_failures(V("better", 0.99), base, cfg) == []
    over = budget_failures(V("over", 0.974), base, cfg)
    assert len(over) == 1 and "0.60 pt" in over[0]
    # the baseline always qualifies against itself
    assert budget_failures(base, base, EvaluateParams(max_accuracy_drop=0.0)) == []


def test_max_bytes_and_max_p50_exclusions():
    cfg = EvaluateParams(objective="size", max_bytes=25_000, max_p50_ms=0.35)
    chosen, failures = select(VARIANTS, "baseline", cfg)
    assert chosen == "mid"  # small is too slow, fast too big, baseline both
    assert len(failures["small"]) == 1 and "max_p50_ms" in failures["small"][0]
    assert len(failures["fast"]) == 1 and "max_bytes" in failures["fast"][0]
    assert len(failures["baseline"]) == 2
    assert failures["mid"] == []
    # exactly at the limits still qualifies
    chosen, failures = select(VARIANTS, "baseline", EvaluateParams(max_bytes=30_000, max_p50_ms=0.20))
    assert chosen == "fast" and failures["fast"] == []


def test_nothing_qualifies_returns_none_with_reasons_for_each():
    variants = VARIANTS + [V("bad", 0.90, size=500, p50=0.01)]
    cfg = EvaluateParams(max_bytes=5_000, max_p50_ms=0.1)
    chosen, failures = select(variants, "baseline", cfg)
    assert chosen is None
    assert set(failures) == {v["name"] for v in variants}
    assert all(failures[n] for n in failures), failures
    assert any("pt" in r for r in failures["bad"])
    assert not any("max_bytes" in r or "max_p50_ms" in r for r in failures["bad"])


def test_tie_break_is_deterministic():
    tied = [V("baseline", 0.98, size=9_000, p50=1.0),
            V("b", 0.98, size=5_000, p50=0.5), V("a", 0.98, size=5_000, p50=0.5),
            V("c", 0.98, size=4_000, p50=0.5)]
    # latency ties break on bytes, then on name
    assert select(tied, "baseline", EvaluateParams(objective="latency"))[0] == "c"
    assert select(tied[:3], "baseline", EvaluateParams(objective="latency"))[0] == "a"
    assert select(tied[:3][::-1], "baseline", EvaluateParams(objective="latency"))[0] == "a"
    # size ties break on latency, then on name
    size_tied = [V("baseline", 0.98, size=9_000, p50=1.0),
                 V("z", 0.98, size=5_000, p50=0.3), V("y", 0.98, size=5_000, p50=0.4),
                 V("x", 0.98, size=5_000, p50=0.4)]
    assert select(size_tied, "baseline", EvaluateParams(objective="size"))[0] == "z"
    assert select(size_tied[:1] + size_tied[2:], "baseline", EvaluateParams(objective="size"))[0] == "x"


def test_unknown_baseline_raises_value_error():
    with pytest.raises(ValueError, match="teacher"):
        select(VARIANTS, "teacher", EvaluateParams())


# ---------------------------------------------------------------------------
# 4. pareto_front and wilson_ci
# ---------------------------------------------------------------------------

def test_pareto_front_excludes_dominated_points():
    pts = [
        {"name": "a", "accuracy": 0.99, "bytes": 100},
        {"name": "b", "accuracy": 0.98, "bytes": 50},
        {"name": "c", "accuracy": 0.97, "bytes": 60},   # dominated by b
        {"name": "d", "accuracy": 0.99, "bytes": 120},  # dominated by a (same gain, more cost)
        {"name": "e", "accuracy": 0.90, "bytes": 10},
        {"name": "f", "accuracy": 0.90, "bytes": 10},   # exact tie with e: neither dominates
        {"name": "g", "accuracy": 0.98, "bytes": 100},  # dominated by a (same cost, less gain)
    ]
    assert pareto_front(pts, "bytes") == {"a", "b", "e", "f"}


def test_pareto_front_other_cost_and_gain_keys():
    pts = [{"name": "x", "accuracy": 0.9, "val_accuracy": 0.5, "ort_p50_ms_b1": 1.0},
           {"name": "y", "accuracy": 0.8, "val_accuracy": 0.6, "ort_p50_ms_b1": 1.0}]
    assert pareto_front(pts, "ort_p50_ms_b1") == {"x"}
    assert pareto_front(pts, "ort_p50_ms_b1", gain="val_accuracy") == {"y"}
    assert pareto_front([], "bytes") == set()
    assert pareto_front(pts[:1], "ort_p50_ms_b1") == {"x"}


@pytest.mark.parametrize("correct, n", [(0, 10), (1, 10), (5, 10), (9, 10), (10, 10), (0, 1), (1, 1),
                                        (500, 1000), (990, 1000), (1000, 1000), (3, 7)])
def test_wilson_ci_bounds_and_contains_p(correct, n):
    lo, hi = wilson_ci(correct, n)
    assert 0.0 <= lo <= correct / n <= hi <= 1.0
    assert lo < hi


def test_wilson_ci_at_perfect_and_zero_accuracy():
    lo, hi = wilson_ci(1000, 1000)
    assert hi == 1.0
    assert 0.99 < lo < 1.0
    lo, hi = wilson_ci(0, 1000)
    assert lo == 0.0 and 0.0 < hi < 0.01
    assert wilson_ci(0, 0) == (0.0, 1.0)


def test_wilson_ci_narrows_with_more_samples():
    widths = [(lambda ci: ci[1] - ci[0])(wilson_ci(9 * k, 10 * k)) for k in (1, 10, 100, 1000)]
    assert widths == sorted(widths, reverse=True)
    assert all(a > b for a, b in zip(widths, widths[1:]))


# ---------------------------------------------------------------------------
# 5. params cross-checks
# ---------------------------------------------------------------------------

BIG = {"conv_channels": [64, 128], "hidden": [256]}


def _err(raw) -> str:
    with pytest.raises(ParamsError) as info:
        parse_params(raw)
    return str(info.value)


def test_student_not_smaller_than_baseline_is_rejected():
    msg = _err({"student": BIG})
    assert "not smaller" in msg and "require_smaller" in msg
    # the student equal to the baseline is not smaller either
    assert "not smaller" in _err({"student": {"conv_channels": [32, 64], "hidden": [128]}})


def test_require_smaller_false_allows_a_bigger_student():
    p = parse_params({"student": BIG, "distill": {"require_smaller": False}})
    assert p.student.conv_channels == [64, 128]
    assert p.distill.require_smaller is False


@pytest.mark.parametrize("amount, needle", [(1.0, "less than 1"), (-0.1, "greater than or equal to 0"),
                                            (1.5, "less than 1")])
def test_prune_amount_outside_unit_interval(amount, needle):
    msg = _err({"prune": {"amount": amount}})
    assert "prune.amount" in msg and needle in msg and repr(amount) in msg


def test_prune_amount_zero_is_allowed():
    assert parse_params({"prune": {"amount": 0.0}}).prune.amount == 0.0


def test_unknown_prune_method_lists_allowed_names():
    msg = _err({"prune": {"methods": ["unstructured", "magnitude"]}})
    assert "prune.methods" in msg and "magnitude" in msg
    for name in ("unstructured", "structured", "layer"):
        assert f"'{name}'" in msg


def test_duplicated_prune_method():
    msg = _err({"prune": {"methods": ["layer", "structured", "layer"]}})
    assert "prune.methods" in msg and "twice" in msg


def test_empty_prune_methods():
    assert "prune.methods" in _err({"prune": {"methods": []}})


def test_calibration_larger_than_implied_train_data():
    # limit 100 -> about 70 training images; the default 8 x 32 = 256 do not fit
    msg = _err({"data": {"limit": 100}})
    assert "calibration_batches" in msg and "256" in msg and "70" in msg
    msg = _err({"data": {"limit": 400}, "quantize": {"calibration_batches": 9, "calibration_batch_size": 32}})
    assert "288" in msg and "280" in msg
    # fits: 400 -> 280 training images, 8 x 32 = 256
    assert parse_params({"data": {"limit": 400}}).data.limit == 400
    assert parse_params({"data": {"limit": 100},
                         "quantize": {"calibration_batches": 2, "calibration_batch_size": 32}})


def test_distill_epochs_beyond_train_epochs():
    msg = _err({"train": {"epochs": 5}, "distill": {"epochs": 6}})
    assert "distill.epochs (6)" in msg and "train.epochs (5)" in msg
    assert parse_params({"train": {"epochs": 5}, "distill": {"epochs": 5}}).distill.epochs == 5


def test_unknown_evaluate_objective():
    msg = _err({"evaluate": {"objective": "accuracy"}})
    assert "evaluate.objective" in msg and "'accuracy'" in msg
    assert "'latency'" in msg and "'size'" in msg


def test_max_accuracy_drop_must_be_a_fraction():
    # 0.5 is 50 pt; 5 (meaning "5 pt") must be rejected, not read as 500 pt
    assert "evaluate.max_accuracy_drop" in _err({"evaluate": {"max_accuracy_drop": 5}})


# ---------------------------------------------------------------------------
# 6. ship bundle + predict
# ---------------------------------------------------------------------------

SHAPE = (1, 8, 8)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny seeded model exported to ONNX: (torch model, onnx dir, quant manifest, prep)."""
    from slimline.compress import onnx_tools as ox
    from slimline.data.dataset import Prepared
    from slimline.model import ModelSpec, build_model

    torch.manual_seed(0)
    spec = ModelSpec(structure=Structure(conv_channels=[4], hidden=[8]).model_dump(), input_shape=SHAPE,
                     num_classes=3, mean=(0.0,), std=(1.0,))
    model = build_model(spec).eval()
    onnx_dir = tmp_path_factory.mktemp("exp") / "onnx"
    ox.export_onnx(model, SHAPE, onnx_dir / "m.onnx")
    manifest = {"variants": [{"name": "m", "file": "m.onnx", "source": "baseline", "source_dir": "unused",
                              "quantization": "fp32", "opset": 17, "agreement": 1.0}],
                "calibration": {"batches": 2, "batch_size": 4}}
    rng = np.random.default_rng(0)
    splits = {k: (rng.uniform(0, 255, (n, *SHAPE)).astype(np.float32), rng.integers(0, 3, n))
              for k, n in (("train", 12), ("val", 6), ("test", 6))}
    prep = Prepared(splits=splits, meta={"input_shape": list(SHAPE), "num_classes": 3,
                                         "mean": [0.0], "std": [1.0]})
    return model, onnx_dir, manifest, prep


CHOSEN = {"name": "m", "accuracy": 0.5, "accuracy_ci95": [0.2, 0.8], "val_accuracy": 0.6, "bytes": 1234,
          "ort_p50_ms_b1": 0.01, "ort_throughput_b256": 1e5, "params": 1, "quantization": "fp32"}
HW = {"cpu": "test cpu", "cores": 1, "threads": 1, "onnxruntime": "x.y.z", "torch": "t", "python": "p",
      "gpu": None}


@pytest.fixture(scope="module")
def ship(exported, tmp_path_factory):
    from slimline.evaluation.ship import write_ship

    _, onnx_dir, manifest, prep = exported
    out = tmp_path_factory.mktemp("ship") / "ship"
    write_ship(out, dict(CHOSEN), onnx_dir, manifest, prep, HW, why="")
    return out


def _torch_top1(model, x):
    with torch.no_grad():
        return model(torch.from_numpy(np.asarray(x, np.float32).reshape(-1, *SHAPE))).argmax(1).numpy()


def test_ship_bundle_files_and_manifest(ship, exported):
    _, onnx_dir, _, _ = exported
    assert sorted(p.name for p in ship.iterdir()) == ["labels.json", "manifest.json", "model.onnx"]
    assert (ship / "model.onnx").read_bytes() == (onnx_dir / "m.onnx").read_bytes()
    assert json.loads((ship / "labels.json").read_text()) == ["0", "1", "2"]
    m = json.loads((ship / "manifest.json").read_text())
    assert m["selected"] == "m" and m["source"] == "baseline" and m["opset"] == 17
    assert m["quantization"] == {"kind": "fp32"}  # calibration settings belong to static int8 only
    assert m["input"]["shape"] == ["batch", 1, 8, 8] and m["input"]["dtype"] == "float32"
    assert m["metrics"] == {k: CHOSEN[k] for k in ("accuracy", "accuracy_ci95", "val_accuracy", "bytes",
                                                   "ort_p50_ms_b1", "ort_throughput_b256")}
    assert m["hardware"] == HW and m["onnxruntime"] == "x.y.z"
    assert "git_commit" in m
    assert m["git_commit"] is None or isinstance(m["git_commit"], str)


def test_bundle_predict_matches_torch(ship, exported):
    from slimline.predict import Bundle

    model = exported[0]
    b = Bundle(ship)
    assert b.shape == SHAPE
    x = np.random.default_rng(1).uniform(0, 255, (50, *SHAPE)).astype(np.float32)
    preds = b.predict(x)
    assert len(preds) == 50
    assert [int(label) for label, _ in preds] == _torch_top1(model, x).tolist()
    assert all(1 / 3 - 1e-6 <= p <= 1.0 for _, p in preds)
    # (N, H, W) is accepted for one-channel models
    assert b.predict(x[:, 0]) == preds
    with pytest.raises(ValueError, match=r"\(1, 8, 8\)"):
        b.predict(np.zeros((2, 1, 9, 9), np.float32))


def test_predict_cli_npz_json(ship, exported, tmp_path, capsys):
    from slimline.predict import main

    model = exported[0]
    x = np.random.default_rng(2).uniform(0, 255, (7, 8, 8)).astype(np.float32)
    path = tmp_path / "batch.npz"
    np.savez(path, x=x)
    assert main([str(path), "--bundle", str(ship), "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 7
    rows = [json.loads(line) for line in lines]
    assert [r["input"] for r in rows] == [f"{path}[{i}]" for i in range(7)]
    assert [int(r["label"]) for r in rows] == _torch_top1(model, x).tolist()
    assert all(0 < r["probability"] <= 1 for r in rows)


def test_predict_cli_png(ship, exported, tmp_path, capsys):
    from PIL import Image

    from slimline.predict import main

    model = exported[0]
    pixels = np.random.default_rng(3).integers(0, 256, (8, 8), dtype=np.uint8)
    png = tmp_path / "digit.png"
    img = Image.fromarray(pixels)
    assert img.mode == "L"
    img.save(png)
    assert main([str(png), "--bundle", str(ship), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert len(rows) == 1 and rows[0]["input"] == str(png)
    assert int(rows[0]["label"]) == _torch_top1(model, pixels)[0]
    # plain (non-JSON) output: tab-separated
    assert main([str(png), "--bundle", str(ship)]) == 0
    out = capsys.readouterr().out.strip().split("\t")
    assert out[0] == str(png) and out[1] == rows[0]["label"]


def test_predict_cli_wrong_png_size_exits_2(ship, tmp_path, capsys):
    from PIL import Image

    from slimline.predict import main

    png = tmp_path / "big.png"
    Image.fromarray(np.zeros((6, 10), np.uint8)).save(png)  # 10 wide, 6 high
    assert main([str(png), "--bundle", str(ship)]) == 2
    err = capsys.readouterr().err
    assert "8x8" in err and "10x6" in err and str(png) in err


def test_predict_cli_npz_without_x_exits_2(ship, tmp_path, capsys):
    from slimline.predict import main

    path = tmp_path / "bad.npz"
    np.savez(path, images=np.zeros((2, 8, 8)))
    assert main([str(path), "--bundle", str(ship)]) == 2
    assert "'x'" in capsys.readouterr().err


def test_write_ship_without_choice(exported, tmp_path):
    from slimline.evaluation.ship import write_ship

    _, onnx_dir, manifest, prep = exported
    out = tmp_path / "ship"
    write_ship(out, None, onnx_dir, manifest, prep, HW, why="no variant meets every budget: m: too big")
    assert [p.name for p in out.iterdir()] == ["manifest.json"]
    assert json.loads((out / "manifest.json").read_text()) == {
        "selected": None, "reason": "no variant meets every budget: m: too big"}


def test_write_ship_without_choice_replaces_previous_bundle(exported, tmp_path):
    from slimline.evaluation.ship import write_ship

    _, onnx_dir, manifest, prep = exported
    out = tmp_path / "ship"
    write_ship(out, dict(CHOSEN), onnx_dir, manifest, prep, HW, why="")
    assert (out / "model.onnx").exists()
    write_ship(out, None, onnx_dir, manifest, prep, HW, why="nothing fits")
    assert [p.name for p in out.iterdir()] == ["manifest.json"]  # no stale model left behind
    assert [p.name for p in tmp_path.iterdir()] == ["ship"]  # no temp folders left behind


def test_predict_cli_unselected_bundle_exits_2_with_reason(exported, tmp_path, capsys):
    from slimline.evaluation.ship import write_ship
    from slimline.predict import Bundle, main

    _, onnx_dir, manifest, prep = exported
    out = tmp_path / "ship"
    write_ship(out, None, onnx_dir, manifest, prep, HW, why="no variant meets every budget: m: slow")
    img = tmp_path / "x.npz"
    np.savez(img, x=np.zeros((1, 8, 8), np.float32))
    assert main([str(img), "--bundle", str(out)]) == 2
    err = capsys.readouterr().err
    assert "no variant meets every budget: m: slow" in err
    with pytest.raises(FileNotFoundError, match="holds no model"):
        Bundle(out)


def test_predict_cli_missing_bundle_exits_2(tmp_path, capsys):
    from slimline.predict import main

    img = tmp_path / "x.npz"
    np.savez(img, x=np.zeros((1, 8, 8), np.float32))
    assert main([str(img), "--bundle", str(tmp_path / "nope")]) == 2
    assert "manifest.json" in capsys.readouterr().err


def test_quantize_takes_pruned_models_from_params_not_from_stale_folders(tmp_path):
    from slimline.errors import StageError
    from slimline.compress.variants import find_models

    for name in ("baseline", "student", "pruned/layer", "pruned/structured"):
        (tmp_path / name).mkdir(parents=True)
        (tmp_path / name / "structure.json").write_text("{}")
    found = find_models(tmp_path, ["structured"])
    assert sorted(found) == ["baseline", "prune_structured", "student"]  # the old `layer` is ignored
    with pytest.raises(StageError, match=r"prune@unstructured"):
        find_models(tmp_path, ["structured", "unstructured"])
