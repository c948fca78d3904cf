"""evaluate's leaderboard (slimline.evaluation.report): one row per variant, the runtimes side by side."""
from __future__ import annotations

from slimline.evaluation.report import leaderboard


def pair(variant, runtime, p50, ratio, ok=True, acc=0.98):
    return {"name": f"{variant}@{runtime}", "variant": variant, "runtime": runtime,
            "bytes": len(variant) * 1000, "accuracy": acc, "p50_ms_b1": p50, "latency_ratio": ratio,
            "within_budget": ok}


def test_the_leaderboard_puts_each_variant_s_runtimes_side_by_side():
    variants = [pair("baseline", "onnxruntime", 0.0682, 1.0), pair("baseline", "openvino", 0.0545, 1.2514),
                pair("student", "onnxruntime", 0.0412, 1.655, ok=False, acc=0.97),
                pair("student", "openvino", 0.0304, 2.243)]
    rows = leaderboard(variants[:3], ["onnxruntime", "openvino"], "baseline@openvino")
    assert [r["variant"] for r in rows] == ["baseline", "student"]
    base, student = rows
    assert base == {"variant": "baseline", "bytes": 8000,
                    "onnxruntime acc": 0.98, "onnxruntime p50 ms": "0.0682", "onnxruntime speed-up": "1.00x",
                    "onnxruntime eligible": "yes",
                    "openvino acc": 0.98, "openvino p50 ms": "**0.0545**", "openvino speed-up": "1.25x",
                    "openvino eligible": "yes"}  # the selected pair in bold
    assert student["onnxruntime eligible"] == "no" and student["onnxruntime acc"] == 0.97
    # a pair its runtime did not run (skipped): "-" in every column of that runtime
    assert [student[f"openvino {c}"] for c in ("acc", "p50 ms", "speed-up", "eligible")] == ["-"] * 4
    assert leaderboard(variants, ["onnxruntime", "openvino"], None)[1]["openvino p50 ms"] == "0.0304"
