"""reports/sensitivity.md and its chart: every scanned number appears, as points, with
the node or layer it belongs to; an unscanned side says why."""
import struct

from slimline.compress.sensitivity_report import chart, render

INT8 = {"student.int8_static": {"fp32_nodes": ["/0/0.4/Conv"], "nodes": [
    {"node": "/0/0.4/Conv", "op": "Conv", "val_drop": 0.004, "recovered": 0.118},
    {"node": "/1/1.0/Gemm", "op": "Gemm", "val_drop": 0.12, "recovered": 0.002}]}}
PRUNING = {"prune_structured": {"ratios": "sensitivity", "allocation": {
    "kept": {"0.1": 14, "0.4": 7}, "threshold": 0.07, "flops": 402296, "target_flops": 402368,
    "base_flops": 5262080}, "layers": [
    {"layer": "0.1", "channels": 32, "kept": 14, "ratio": 0.5625, "drop@0.5": 0.0, "drop@0.75": 0.3},
    {"layer": "0.4", "channels": 64, "kept": 7, "ratio": 0.890625, "drop@0.5": 0.002, "drop@0.75": 0.028}]}}


def png_size(path):
    width, height = struct.unpack(">II", path.read_bytes()[16:24])  # the IHDR chunk
    return width, height


def test_both_scans_render_as_tables_in_points(tmp_path):
    md = render(INT8, PRUNING)
    assert "![accuracy drop per layer](sensitivity.png)" in md
    assert "All-int8 drop against its fp32 source: 12.2 pt" in md  # 0.004 + 0.118
    assert "| /0/0.4/Conv | Conv | 11.8 | 0.4 | True |" in md
    assert "| 0.4 | 64 | 7 | 0.8906 | 0.2 | 2.8 |" in md
    assert "402,296 FLOPs against 402,368" in md
    chart(INT8, PRUNING, tmp_path / "s.png")
    assert png_size(tmp_path / "s.png") == (1320, 495)  # two panels, 12 x 4.5 in at 110 dpi


def test_nothing_scanned_says_why_and_still_draws(tmp_path):
    uniform = {"prune_structured": {"ratios": "uniform", "allocation": None, "layers": [
        {"layer": "0.1", "channels": 32, "kept": 8, "ratio": 0.75}]}}
    md = render({}, uniform, with_chart=False)
    assert "No static int8 variant was scanned" in md and "no scan ran" in md and "](" not in md
    assert "| 0.1 | 32 | 8 | 0.75 |" in md
    assert "No structured pruning in this run" in render({}, {}, with_chart=False)
    chart({}, uniform, tmp_path / "s.png")
    assert png_size(tmp_path / "s.png") == (1320, 495)
