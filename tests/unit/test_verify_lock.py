"""`make verify-lock`'s comparison (benchmarks.verify_lock), on fixed dvc.lock entries."""
from __future__ import annotations

import copy

from benchmarks.verify_lock import compare_stage, report


def entry(code="c1", data="d1", out="o1", report_md5="r1", params=None):
    return {"cmd": "python -m tasks.x",
            "deps": [{"path": "data/prepared", "md5": data}, {"path": "tasks/x.py", "md5": code}],
            "params": {"params.yaml": params or {"x": {"a": 1}}},
            "outs": [{"path": "models/x", "md5": out}, {"path": "reports/x.json", "md5": report_md5}]}


OUTS = {"data/prepared", "models/x", "reports/x.json"}


def test_equal_outputs_reproduce_and_reports_are_not_compared():
    assert compare_stage(entry(report_md5="r2"), entry(), OUTS) == []  # a report is a measurement


def test_a_different_model_hash_names_the_path_and_both_hashes():
    assert compare_stage(entry(out="o2"), entry(), OUTS) == ["models/x: committed o1, here o2"]


def test_changed_code_or_params_is_stale_not_a_numerics_difference():
    stale = compare_stage(entry(code="c2", out="o2"), entry(), OUTS)
    assert stale[0].startswith("STALE") and "tasks/x.py" in stale[0]
    assert stale[1:] == ["models/x: committed o1, here o2"]  # shown, though it proves nothing
    assert compare_stage(entry(code="c2"), entry(), OUTS)[1:] == ["(its outputs match all the same)"]
    assert "params" in compare_stage(entry(params={"x": {"a": 2}}), entry(), OUTS)[0]
    assert compare_stage(entry(), None, OUTS) == ["not in the committed dvc.lock"]


def test_an_upstream_difference_is_reported_where_it_arises(capsys):
    # data/prepared differs: prepare says so; the next stage is judged on its own outputs
    committed = {"prepare": {"outs": [{"path": "data/prepared", "md5": "d1"}]}, "x": entry()}
    now = copy.deepcopy(committed)
    now["prepare"]["outs"][0]["md5"] = "d2"
    now["x"]["deps"][0]["md5"] = "d2"
    assert not report(now, committed)
    out = capsys.readouterr().out
    assert "prepare: DIFFERS\n  data/prepared: committed d1, here d2" in out and "x: OK (models/x)" in out
    assert report(committed, committed)
