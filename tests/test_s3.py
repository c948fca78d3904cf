"""S3 remote: bootstrap against a real local S3-compatible server (moto), and
cross-machine reproduction through a DVC remote."""
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import dvc, sh
from infra.s3 import S3Error, bootstrap

KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """moto in server mode on a free loopback port, for the whole session."""
    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "w")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1",
                             "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=1)
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, "moto server did not start"
            time.sleep(0.2)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def aws_env(monkeypatch, tmp_path):
    for k, v in KEYS.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))


def test_bootstrap_is_idempotent_and_writes_a_least_privilege_policy(s3_server, aws_env, tmp_path):
    import boto3

    first = bootstrap("slimline-a", s3_server, policy_dir=tmp_path)
    again = bootstrap("slimline-a", s3_server, policy_dir=tmp_path)
    assert first["created"] and not again["created"]
    assert first["versioning"] == again["versioning"] == "enabled"
    s3 = boto3.client("s3", endpoint_url=s3_server)
    assert s3.get_bucket_versioning(Bucket="slimline-a")["Status"] == "Enabled"
    policy = json.loads((tmp_path / "iam-policy-slimline-a.json").read_text())
    actions = sorted(a for st in policy["Statement"] for a in st["Action"])
    assert actions == ["s3:DeleteObject", "s3:GetObject", "s3:ListBucket", "s3:PutObject"]
    assert {st["Resource"] for st in policy["Statement"]} == {
        "arn:aws:s3:::slimline-a", "arn:aws:s3:::slimline-a/dvc/*"}
    assert first["commands"][0] == "dvc remote add -d storage s3://slimline-a/dvc"
    assert f"endpointurl {s3_server}" in first["commands"][1]


def test_missing_credentials_and_dead_endpoint_are_explained(monkeypatch, tmp_path):
    for k in KEYS:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(S3Error, match="no AWS credentials found"):
        bootstrap("b", f"http://127.0.0.1:{free_port()}", policy_dir=tmp_path)
    for k, v in KEYS.items():
        monkeypatch.setenv(k, v)
    start = time.monotonic()
    with pytest.raises(S3Error, match="cannot reach http://127.0.0.1"):
        bootstrap("b", f"http://127.0.0.1:{free_port()}", policy_dir=tmp_path)
    assert not (tmp_path / "iam-policy-b.json").exists()  # nothing written on failure
    assert time.monotonic() - start < 60  # bounded retries, not minutes of backoff


def test_cli_prints_the_dvc_commands(s3_server, aws_env, tmp_path):
    from conftest import ROOT

    proc = sh([sys.executable, "-m", "infra.s3", "bootstrap", "--bucket", "slimline-cli",
               "--endpoint-url", s3_server], tmp_path, PYTHONPATH=str(ROOT), **KEYS)
    assert "created" in proc.stdout and "dvc remote add -d storage s3://slimline-cli/dvc" in proc.stdout


def configure_remote(root: Path, bucket: str, url: str) -> None:
    dvc("remote", "add", "-d", "--local", "-f", "storage", f"s3://{bucket}/dvc", cwd=root)
    dvc("remote", "modify", "--local", "storage", "endpointurl", url, cwd=root)
    dvc("remote", "modify", "--local", "storage", "access_key_id", KEYS["AWS_ACCESS_KEY_ID"], cwd=root)
    dvc("remote", "modify", "--local", "storage", "secret_access_key", KEYS["AWS_SECRET_ACCESS_KEY"], cwd=root)


def test_cross_machine_reproduction_through_the_remote(s3_server, aws_env, pipeline_copy, tmp_path):
    """Clone A pushes; a fresh clone B of the same commit pulls and has nothing to reproduce."""
    import hashlib

    import boto3

    bootstrap("slimline-x", s3_server, policy_dir=tmp_path)
    configure_remote(pipeline_copy, "slimline-x", s3_server)
    dvc("push", cwd=pipeline_copy)

    clone = tmp_path / "machine-b"
    sh(["git", "clone", "-q", str(pipeline_copy), str(clone)], tmp_path)
    configure_remote(clone, "slimline-x", s3_server)
    dvc("pull", cwd=clone)
    assert dvc("status", cwd=clone).stdout.strip().endswith("up to date.")
    assert "Running stage" not in dvc("repro", cwd=clone).stdout
    assert (clone / "models/baseline/model.safetensors").read_bytes() == \
        (pipeline_copy / "models/baseline/model.safetensors").read_bytes()

    # The bucket holds exactly the bytes dvc.lock records (DVC 3 layout: files/md5/ab/cdef...).
    s3 = boto3.client("s3", endpoint_url=s3_server)
    lock = yaml.safe_load((clone / "dvc.lock").read_text())
    out = next(o for o in lock["stages"]["train_baseline"]["outs"] if o["path"] == "models/baseline")
    listing = json.loads(s3.get_object(Bucket="slimline-x",
                                       Key=f"dvc/files/md5/{out['md5'][:2]}/{out['md5'][2:]}")["Body"].read())
    for entry in listing:
        body = s3.get_object(Bucket="slimline-x",
                             Key=f"dvc/files/md5/{entry['md5'][:2]}/{entry['md5'][2:]}")["Body"].read()
        assert hashlib.md5(body).hexdigest() == entry["md5"]
        assert body == (clone / "models/baseline" / entry["relpath"]).read_bytes()
