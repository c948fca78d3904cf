"""Compare this run's results with the previous run's: metric deltas and the regression gate.

"Previous" is the last commit (HEAD): the tracked branch's committed reports,
exactly what `dvc metrics diff HEAD` compares against. A nightly run starts
from the tip of its branch, so it is judged against what the team last
accepted, not against another unreviewed run.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from slimline.errors import RegressionFailed
from slimline.evaluation.history import at_revision


@dataclass
class Verdict:
    ok: bool
    message: str

    def check(self) -> None:
        """Raise RegressionFailed, whose message names the change, when the gate failed."""
        if not self.ok:
            raise RegressionFailed(self.message)


def _selected(report: dict) -> dict | None:
    by_name = {v["name"]: v for v in report.get("variants", [])}
    return by_name.get(report.get("selected")) if report.get("selected") else None


def _relative_p50(report: dict) -> float | None:
    """The selected model's p50 over the baseline's p50 timed in the same run: on a
    shared machine the absolute figure drifts by tens of percent between runs, the
    side-by-side ratio much less."""
    by_name = {v["name"]: v for v in report.get("variants", [])}
    sel, base = _selected(report), by_name.get(report.get("baseline"))
    if not sel or not base or not _p50(base):
        return None
    return _p50(sel) / _p50(base)


def _p50(v: dict) -> float | None:
    # "ort_p50_ms_b1": a report from before the runtime was chosen (it ran on ONNX Runtime)
    return v.get("p50_ms_b1", v.get("ort_p50_ms_b1"))


def regression_gate(root: Path, gate, rev: str = "HEAD") -> Verdict:
    """Whether this run's selected model is no worse than the one at `rev`, within `gate`
    (slimline.params.GateParams)."""
    rel = "reports/evaluate.json"
    if not gate.enabled:
        return Verdict(True, "regression gate disabled (gate.enabled: false)")
    if not (root / rel).exists():
        return Verdict(True, "no evaluate report in this run: nothing to gate")
    now, before = json.loads((root / rel).read_text()), at_revision(root, rel, rev)
    if before is None:
        return Verdict(True, f"no evaluate report at {rev}: first run, nothing to compare")
    new, old = _selected(now), _selected(before)
    if old is None:
        return Verdict(True, "the previous run selected no model: nothing to compare")
    if new is None:
        return Verdict(False, f"regression: no variant meets the budgets now; "
                              f"{rev} shipped '{old['name']}' ({old['accuracy']:.4f} test accuracy)")
    problems = []
    drop = old["accuracy"] - new["accuracy"]
    if drop > gate.max_accuracy_drop:
        problems.append(f"test accuracy of the selected model fell {drop * 100:.2f} pt "
                        f"('{old['name']}' {old['accuracy']:.4f} -> '{new['name']}' {new['accuracy']:.4f}; "
                        f"gate.max_accuracy_drop is {gate.max_accuracy_drop * 100:.2f} pt)")
    same_cpu = now.get("hardware", {}).get("cpu") == before.get("hardware", {}).get("cpu")
    r_new, r_old = _relative_p50(now), _relative_p50(before)
    if same_cpu and r_new and r_old and r_new > r_old * (1 + gate.max_latency_increase):
        problems.append(f"latency of the selected model rose {(r_new / r_old - 1) * 100:.0f}% "
                        f"relative to the baseline ({r_old:.3f} -> {r_new:.3f} of the baseline's p50; "
                        f"gate.max_latency_increase is {gate.max_latency_increase * 100:.0f}%)")
    if problems:
        return Verdict(False, "regression against " + rev + ": " + "; ".join(problems))
    note = "" if same_cpu else " (latency not compared: different CPU model)"
    return Verdict(True, f"no regression against {rev}: '{new['name']}' {new['accuracy']:.4f} "
                         f"vs '{old['name']}' {old['accuracy']:.4f}{note}")
