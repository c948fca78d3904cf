"""The flow with a DVC remote: bounded retries through an outage, then a fresh
machine that pulls only what its stages need, and presigned report links. The
project is the toy project's: what is under test is the flow and DVC around the
stages (retries, pulls, pushes, uploads), not what the stages compute."""
from __future__ import annotations

import base64
import re
import urllib.request

import pytest

from tests.support.prefect_server import artifacts, free_port, task_runs
from tests.support.project import dvc, sh, tree_digest
from tests.support.s3 import KEYS, configure_remote, start_moto, stop_moto

pytestmark = pytest.mark.timeout(900)


def test_outage_is_retried_bounded_then_explained_and_a_fresh_clone_pulls_what_it_needs(
        prefect_api, toy_copy, tmp_path, monkeypatch):
    import boto3

    import flows.pipeline as fp
    from flows.remote import push_outputs
    from slimline.errors import StageFailed
    from slimline.s3 import bootstrap

    for k, v in KEYS.items():
        monkeypatch.setenv(k, v)
    # The decorator's backoff (5 s, then 20 s) is what users get; the test keeps the
    # attempt count and drops the waiting.
    assert push_outputs.retries == 2 and push_outputs.retry_delay_seconds == [5, 20]
    monkeypatch.setattr(fp, "push_outputs", push_outputs.with_options(retry_delay_seconds=0))

    port = free_port()  # nothing listens: connections are refused at once
    configure_remote(toy_copy, "slimline", f"http://127.0.0.1:{port}", verify=True)
    cache, data = toy_copy / ".dvc" / "cache", toy_copy / "data" / "prepared"
    before = tree_digest(cache), tree_digest(data)

    state = fp.pipeline(root=str(toy_copy), targets=["prepare"], return_state=True)
    assert state.is_failed()
    with pytest.raises(StageFailed, match="remote unreachable: s3://slimline/dvc") as err:
        state.result()
    assert "local outputs and DVC cache are untouched" in str(err.value)
    assert task_runs(state.state_details.flow_run_id)["dvc push"].run_count == 3  # 1 + 2 retries
    assert (tree_digest(cache), tree_digest(data)) == before

    # the server comes back on the same port: the next run pushes
    moto = start_moto(port, tmp_path / "moto.log")
    try:
        bootstrap("slimline", f"http://127.0.0.1:{port}", policy_dir=tmp_path)
        results = fp.pipeline(root=str(toy_copy), targets=["prepare"])
        assert results[-1]["outcome"] == "pushed to s3://slimline/dvc"
        s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1")
        assert s3.list_objects_v2(Bucket="slimline", Prefix="dvc/files/md5/")["KeyCount"] > 10
        sh(["git", "add", "-A"], toy_copy)
        sh(["git", "commit", "-qm", "pushed"], toy_copy, check=False)
        # everything else goes up too (the whole pipeline's outputs), as a nightly run would
        dvc("push", cwd=toy_copy)

        # a fresh machine: a clone with an empty cache and the same remote
        fresh = tmp_path / "fresh"
        sh(["git", "clone", "-q", str(toy_copy), str(fresh)], tmp_path)
        configure_remote(fresh, "slimline", f"http://127.0.0.1:{port}", verify=True)
        state = fp.pipeline(root=str(fresh), targets=["distill"], overrides={"distill.temperature": 3.0},
                            return_state=True)
        assert state.is_completed(), state.message
        outcome = {r["stage"]: r["outcome"] for r in state.result()}
        assert outcome["prepare"] == outcome["train_baseline"] == \
            "skipped (up to date; outputs on the remote)"
        assert outcome["distill"] == "ran" and outcome["dvc push"].startswith("pushed")
        # distill's inputs were fetched, nothing else
        assert (fresh / "models" / "baseline" / "model.safetensors").exists()
        assert not (fresh / "models" / "onnx").exists()
        assert not list((fresh / "models").glob("pruned/*/model.safetensors"))

        # evaluate on that machine: its report and chart go up with presigned links
        state = fp.pipeline(root=str(fresh), targets=["evaluate"], overrides={"evaluate.repeats": 21},
                            return_state=True)
        assert state.is_completed(), state.message
        found = artifacts(state.state_details.flow_run_id)
        png = (fresh / "reports" / "pareto_latency.png").read_bytes()
        assert base64.b64encode(png).decode() in found["local-evaluate-pareto"].data  # inline, always
        links = found["local-evaluate-links"].data
        assert "evaluate.md" in links
        url = re.search(r"\[pareto_latency.png\]\((\S+)\)", links).group(1)
        with urllib.request.urlopen(url, timeout=30) as resp:
            assert resp.read() == png
    finally:
        stop_moto(moto)
