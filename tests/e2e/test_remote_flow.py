"""The flow with a DVC remote: bounded retries through an outage, then a fresh
machine that pulls only what its stages need, and presigned report links."""
from __future__ import annotations

import asyncio
import base64
import re
import urllib.request
from pathlib import Path

import pytest

from tests.support.prefect_server import free_port
from tests.support.project import dvc, sh, tree_digest
from test_s3 import KEYS, start_moto, stop

pytestmark = pytest.mark.timeout(900)


def add_remote(root: Path, port: int, bucket: str = "slimline") -> None:
    dvc("remote", "add", "-d", "--local", "-f", "storage", f"s3://{bucket}/dvc", cwd=root)
    for key, value in (("endpointurl", f"http://127.0.0.1:{port}"), ("access_key_id", "testing"),
                       ("secret_access_key", "testing"), ("verify", "true")):
        dvc("remote", "modify", "--local", "storage", key, value, cwd=root)


def task_runs(flow_run_id) -> dict:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def read():
        async with get_client() as client:
            return await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))

    return {t.name: t for t in asyncio.run(read())}


def artifacts(flow_run_id) -> dict:
    from test_flow import artifacts as read

    return read(flow_run_id)


def test_outage_is_retried_bounded_then_explained_and_a_fresh_clone_pulls_what_it_needs(
        prefect_api, pipeline_copy, tmp_path, monkeypatch):
    import boto3

    import flows.pipeline as fp
    from flows.remote import push_outputs
    from slimline.s3 import bootstrap

    for k, v in KEYS.items():
        monkeypatch.setenv(k, v)
    # The decorator's backoff (5 s, then 20 s) is what users get; the test keeps the
    # attempt count and drops the waiting.
    assert push_outputs.retries == 2 and push_outputs.retry_delay_seconds == [5, 20]
    monkeypatch.setattr(fp, "push_outputs", push_outputs.with_options(retry_delay_seconds=0))

    port = free_port()  # nothing listens: connections are refused at once
    add_remote(pipeline_copy, port)
    cache, data = pipeline_copy / ".dvc" / "cache", pipeline_copy / "data" / "prepared"
    before = tree_digest(cache), tree_digest(data)

    state = fp.pipeline(root=str(pipeline_copy), targets=["prepare"], return_state=True)
    assert state.is_failed()
    with pytest.raises(fp.StageFailed, match="remote unreachable: s3://slimline/dvc") as err:
        state.result()
    assert "local outputs and DVC cache are untouched" in str(err.value)
    assert task_runs(state.state_details.flow_run_id)["dvc push"].run_count == 3  # 1 + 2 retries
    assert (tree_digest(cache), tree_digest(data)) == before

    # the server comes back on the same port: the next run pushes
    moto = start_moto(port, tmp_path / "moto.log")
    try:
        bootstrap("slimline", f"http://127.0.0.1:{port}", policy_dir=tmp_path)
        results = fp.pipeline(root=str(pipeline_copy), targets=["prepare"])
        assert results[-1]["outcome"] == "pushed to s3://slimline/dvc"
        s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1")
        assert s3.list_objects_v2(Bucket="slimline", Prefix="dvc/files/md5/")["KeyCount"] > 10
        sh(["git", "add", "-A"], pipeline_copy)
        sh(["git", "commit", "-qm", "pushed"], pipeline_copy, check=False)
        # everything else goes up too (the whole pipeline's outputs), as a nightly run would
        dvc("push", cwd=pipeline_copy)

        # a fresh machine: a clone with an empty cache and the same remote
        fresh = tmp_path / "fresh"
        sh(["git", "clone", "-q", str(pipeline_copy), str(fresh)], tmp_path)
        add_remote(fresh, port)
        state = fp.pipeline(root=str(fresh), targets=["distill"], overrides={"distill.temperature": 3.0},
                            return_state=True)
        assert state.is_completed(), state.message
        outcome = {r["stage"]: r["outcome"] for r in state.result()}
        assert outcome["prepare"] == outcome["train_baseline"] == "skipped (up to date; outputs on the remote)"
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
        stop(moto)
