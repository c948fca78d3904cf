"""S3 remote: bootstrap against a real local S3-compatible server (moto),
cross-machine reproduction through a DVC remote, report links, and what dvc
says (and how often it retries) when the remote is down, refuses access or
serves a corrupted object. The error strings asserted here are the ones dvc
printed against these servers. The projects are the toy project's (DVC's plumbing,
not the stages' computing, is under test); the pure parts of slimline/s3.py (the
failure classification, bounded_env, remote_config) are in tests/unit/test_s3_parts.py."""
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import urllib.request
from dataclasses import replace
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from slimline.dvc_runner import is_transient
from slimline.s3 import (
    S3Error,
    bootstrap,
    bounded_env,
    explain_dvc_failure,
    iam_policy,
    remote_config,
    upload_reports,
)
from tests.support.prefect_server import free_port
from tests.support.project import dvc, run_env, sh, tree_digest
from tests.support.s3 import KEYS, configure_remote, start_moto, stop_moto


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """moto in server mode on a free loopback port, for the whole session."""
    port = free_port()
    proc = start_moto(port, tmp_path_factory.mktemp("moto") / "moto.log")
    yield f"http://127.0.0.1:{port}"
    stop_moto(proc)


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
    grants = {st["Resource"]: sorted(st["Action"]) for st in policy["Statement"]}
    assert grants == {"arn:aws:s3:::slimline-a": ["s3:ListBucket"],
                      "arn:aws:s3:::slimline-a/dvc/*": ["s3:DeleteObject", "s3:GetObject", "s3:PutObject"],
                      "arn:aws:s3:::slimline-a/reports/*": ["s3:GetObject", "s3:PutObject"]}
    assert first["commands"][0] == "dvc remote add -d storage s3://slimline-a/dvc"
    assert first["commands"][1] == "dvc remote modify storage verify true"
    assert f"dvc remote modify --local storage endpointurl {s3_server}" == first["commands"][2]


def test_cli_prints_the_dvc_commands(s3_server, aws_env, tmp_path):
    from tests.support.project import ROOT

    proc = sh([sys.executable, "-m", "infra.s3", "bootstrap", "--bucket", "slimline-cli",
               "--endpoint-url", s3_server], tmp_path, PYTHONPATH=str(ROOT), **KEYS)
    assert "created" in proc.stdout and "dvc remote add -d storage s3://slimline-cli/dvc" in proc.stdout
    assert "dvc remote modify storage verify true" in proc.stdout


def test_cross_machine_reproduction_through_the_remote(s3_server, aws_env, toy_copy, tmp_path):
    """Clone A pushes; a fresh clone B of the same commit pulls and has nothing to reproduce."""
    import boto3

    bootstrap("slimline-x", s3_server, policy_dir=tmp_path)
    configure_remote(toy_copy, "slimline-x", s3_server)
    dvc("push", cwd=toy_copy)

    clone = tmp_path / "machine-b"
    sh(["git", "clone", "-q", str(toy_copy), str(clone)], tmp_path)
    configure_remote(clone, "slimline-x", s3_server)
    dvc("pull", cwd=clone)
    assert dvc("status", cwd=clone).stdout.strip().endswith("up to date.")
    assert "Running stage" not in dvc("repro", cwd=clone).stdout
    assert (clone / "models/baseline/model.safetensors").read_bytes() == \
        (toy_copy / "models/baseline/model.safetensors").read_bytes()

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


# ---- report links ------------------------------------------------------------------------

def test_upload_reports_shares_the_exact_bytes_through_presigned_links(s3_server, aws_env, tmp_path):
    import boto3
    from dvc.repo import Repo

    bootstrap("slimline-r", s3_server, prefix="team/dvc", policy_dir=tmp_path)
    project = tmp_path / "proj"
    Repo.init(str(project), no_scm=True).close()
    configure_remote(project, "slimline-r", s3_server, prefix="team/dvc")
    reports = project / "reports"
    reports.mkdir()
    files = {"pareto_latency.png": (b"\x89PNG\r\n\x1a\n" + os.urandom(3000), "image/png"),
             "evaluate.json": (b'{"models": 3}', "application/json"),
             "evaluate.md": ("| model | 2 × smaller |\n".encode(), "text/markdown; charset=utf-8")}
    for name, (body, _) in files.items():
        (reports / name).write_bytes(body)
    cfg = remote_config(project)

    # Relative paths are taken from the project root.
    links = upload_reports(project, [Path("reports/evaluate.md"), reports / "evaluate.json",
                                     reports / "pareto_latency.png"], "run-42", cfg)
    assert set(links) == set(files)
    for name, link in links.items():
        assert parse_qs(urlsplit(link).query)["X-Amz-Expires"] == ["604800"]  # 7 days by default
        with urllib.request.urlopen(link, timeout=10) as resp:  # no credentials: the link is enough
            assert resp.read() == files[name][0]
            assert resp.headers["Content-Type"] == files[name][1]
    # reports/ sits beside the DVC prefix, never inside DVC's tree.
    keys = {o["Key"] for o in boto3.client("s3", endpoint_url=s3_server).list_objects_v2(
        Bucket="slimline-r")["Contents"]}
    assert keys == {f"team/reports/run-42/{name}" for name in files}

    short = upload_reports(project, [reports / "evaluate.json"], "run-43", cfg, expires_s=60)
    assert parse_qs(urlsplit(short["evaluate.json"]).query)["X-Amz-Expires"] == ["60"]
    with pytest.raises(ValueError, match="run id"):
        upload_reports(project, [reports / "evaluate.json"], "../escape", cfg)
    with pytest.raises(ValueError, match="7 days"):
        upload_reports(project, [reports / "evaluate.json"], "run-44", cfg, expires_s=8 * 24 * 3600)
    with pytest.raises(S3Error, match="NoSuchBucket"):
        upload_reports(project, [reports / "evaluate.json"], "run-45", replace(cfg, bucket="no-such-bucket"))


# ---- live failures: outage, refused access, corruption -----------------------------------

# Counts the dvc process's own connect() calls to one port through an audit hook:
# a refused connection never reaches a server that could count it.
COUNT_CONNECTS = '''import os, sys
_port = int(os.environ["COUNT_CONNECTS_PORT"])
_log = os.environ["COUNT_CONNECTS_LOG"]
def _hook(event, args):
    if event == "socket.connect" and isinstance(args[1], tuple) and args[1][1:2] == (_port,):
        with open(_log, "a") as f:
            f.write(repr(args[1]) + "\\n")
sys.addaudithook(_hook)
'''


class DroppingServer:
    """Reads each request and hangs up without an answer (a crashed backend behind a
    live port), counting connections. Reading first makes the client's error the same
    every time: hanging up before the request arrives can reset its send instead."""

    def __init__(self, port: int):
        self.sock = socket.create_server(("127.0.0.1", port))
        self.sock.settimeout(0.1)
        self.count = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.done.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.count += 1
            with conn:
                conn.settimeout(5)
                request = b""
                while b"\r\n\r\n" not in request:  # a HEAD or GET: headers only
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    request += chunk

    def close(self):
        self.done.set()
        self.thread.join()
        self.sock.close()


def push_prepared(root: Path, env: dict) -> tuple[int, str]:
    proc = subprocess.run([sys.executable, "-m", "dvc", "push", "data/prepared"], cwd=root, env=env,
                          capture_output=True, text=True)
    return proc.returncode, proc.stdout + proc.stderr


def test_outage_is_bounded_explained_and_recovers(aws_env, toy_copy, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    configure_remote(toy_copy, "slimline-o", url)
    cache = toy_copy / ".dvc/cache"
    before = tree_digest(cache)
    env = bounded_env(run_env())  # what the flow gives its dvc subprocesses
    unreachable = (f"remote unreachable: s3://slimline-o/dvc (endpoint {url}): check that the server "
                   "is running and the endpoint in .dvc/config.local (dvc remote modify --local "
                   "storage endpointurl URL)")

    # Nothing listens: each refused connect is one botocore attempt, and nothing else retries.
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(COUNT_CONNECTS)
    log = tmp_path / "connects.log"
    rc, out = push_prepared(toy_copy, {
        **env, "PYTHONPATH": os.pathsep.join(filter(None, [str(hook), env.get("PYTHONPATH")])),
        "COUNT_CONNECTS_PORT": str(port), "COUNT_CONNECTS_LOG": str(log)})
    assert rc != 0
    assert f'Could not connect to the endpoint URL: "{url}/slimline-o/dvc/files/md5/' in out
    connects = log.read_text().splitlines()
    assert 1 <= len(connects) <= 2  # AWS_MAX_ATTEMPTS=2; botocore's legacy default makes 5
    assert explain_dvc_failure(out, "s3://slimline-o/dvc") == unreachable
    assert is_transient(out)
    assert tree_digest(cache) == before

    # A port that takes requests and hangs up: aiohttp resends a GET/HEAD once and s3fs
    # tries 5 times per call on top of botocore's 2, and dvc stops at the first failed call.
    dropping = DroppingServer(port)
    try:
        rc, out = push_prepared(toy_copy, env)
    finally:
        dropping.close()
    assert rc != 0 and "Connection was closed before we received a valid response" in out
    assert 1 <= dropping.count <= 2 * 5 * 2
    assert explain_dvc_failure(out, "s3://slimline-o/dvc") == unreachable
    assert is_transient(out)
    assert tree_digest(cache) == before

    # The server comes back on the same port: the same push goes through.
    moto = start_moto(port, tmp_path / "moto.log")
    try:
        bootstrap("slimline-o", url, policy_dir=tmp_path)
        rc, out = push_prepared(toy_copy, env)
        assert rc == 0, out
        import boto3

        listed = boto3.client("s3", endpoint_url=url).list_objects_v2(Bucket="slimline-o")
        assert listed["KeyCount"] >= 2 and all(o["Key"].startswith("dvc/files/md5/")
                                                for o in listed["Contents"])
    finally:
        stop_moto(moto)
    assert tree_digest(cache) == before


@pytest.fixture
def auth_s3(tmp_path):
    """A separate moto that enforces IAM after its first 4 actions, which create a user
    holding exactly bootstrap's least-privilege policy for s3://slimline-auth/dvc."""
    import boto3

    port = free_port()
    proc = start_moto(port, tmp_path / "moto-auth.log", INITIAL_NO_AUTH_ACTION_COUNT="4")
    url = f"http://127.0.0.1:{port}"
    admin = {"endpoint_url": url, "region_name": "us-east-1", "aws_access_key_id": "testing",
             "aws_secret_access_key": "testing"}
    try:
        iam = boto3.client("iam", **admin)
        iam.create_user(UserName="slimline-dvc")
        key = iam.create_access_key(UserName="slimline-dvc")["AccessKey"]
        iam.put_user_policy(UserName="slimline-dvc", PolicyName="slimline",
                            PolicyDocument=json.dumps(iam_policy("slimline-auth", "dvc")))
        boto3.client("s3", **admin).create_bucket(Bucket="slimline-auth")
        yield url, key["AccessKeyId"], key["SecretAccessKey"]
    finally:
        stop_moto(proc)


def test_refused_access_is_explained_with_the_fix(auth_s3, toy_copy, monkeypatch, tmp_path):
    url, key_id, secret = auth_s3
    for k in KEYS:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")

    # Bootstrap's policy is enough to push and to share reports, and nothing more.
    configure_remote(toy_copy, "slimline-auth", url, key_id=key_id, secret=secret)
    dvc("push", "data/prepared", cwd=toy_copy)
    report = toy_copy / "reports/prepare.json"
    cfg = remote_config(toy_copy)
    assert set(upload_reports(toy_copy, [report], "run-1", cfg)) == {"prepare.json"}
    # A presigned GET carries the signer's s3:GetObject right. (moto checks IAM only on
    # header-signed requests, so ask directly; the links themselves are fetched above.)
    body = cfg.client().get_object(Bucket="slimline-auth", Key="reports/run-1/prepare.json")["Body"]
    assert body.read() == report.read_bytes()

    cases = {  # remote prefix, key id, secret -> what dvc printed
        "outside the policy": ("other", key_id, secret, "Forbidden: An error occurred (403) when "
                                                        "calling the HeadObject operation: Forbidden"),
        "wrong secret": ("dvc", key_id, "not-the-secret", "An error occurred (403) when calling the "
                                                          "HeadObject operation: Forbidden"),
        "no credentials": ("dvc", None, None, "Unable to locate credentials"),
    }
    for case, (prefix, kid, sec, printed) in cases.items():
        configure_remote(toy_copy, "slimline-auth", url, prefix=prefix, key_id=kid, secret=sec)
        proc = dvc("push", "data/prepared", cwd=toy_copy, check=False)
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0 and printed in out, (case, out)
        line = explain_dvc_failure(out, f"s3://slimline-auth/{prefix}")
        assert line.startswith(f"access denied to s3://slimline-auth/{prefix} ("), case
        assert "dvc remote modify --local storage access_key_id" in line
        assert "infra/iam-policy-slimline-auth.json" in line
        assert not is_transient(out), case  # waiting will not fix it: no retries

    configure_remote(toy_copy, "slimline-auth", url, key_id=key_id, secret="not-the-secret")
    with pytest.raises(S3Error, match=r"access denied to bucket 'slimline-auth'.*SignatureDoesNotMatch"):
        upload_reports(toy_copy, [report], "run-2", remote_config(toy_copy))


def test_verify_turns_a_tampered_object_into_a_failed_pull(s3_server, aws_env, toy_copy, tmp_path):
    import boto3

    bootstrap("slimline-v", s3_server, policy_dir=tmp_path)
    configure_remote(toy_copy, "slimline-v", s3_server, verify=True)
    dvc("push", "data/prepared", cwd=toy_copy)

    # Overwrite one pushed file's bytes in the bucket, keeping its name (its md5).
    lock = yaml.safe_load((toy_copy / "dvc.lock").read_text())
    out = next(o for o in lock["stages"]["prepare"]["outs"] if o["path"] == "data/prepared")
    listing = json.loads((toy_copy / ".dvc/cache/files/md5" / out["md5"][:2] / out["md5"][2:])
                         .read_text())
    entry = max(listing, key=lambda e: (toy_copy / "data/prepared" / e["relpath"]).stat().st_size)
    key = f"dvc/files/md5/{entry['md5'][:2]}/{entry['md5'][2:]}"
    s3 = boto3.client("s3", endpoint_url=s3_server)
    good = s3.get_object(Bucket="slimline-v", Key=key)["Body"].read()
    bad = good[:-1] + bytes([good[-1] ^ 0xFF])
    s3.put_object(Bucket="slimline-v", Key=key, Body=bad)

    def clone(name: str, verify: bool) -> Path:
        dest = tmp_path / name
        sh(["git", "clone", "-q", str(toy_copy), str(dest)], tmp_path)
        configure_remote(dest, "slimline-v", s3_server, verify=verify)
        return dest

    # Why bootstrap recommends verify: without it DVC 3 checks the tampered bytes out
    # and calls the workspace up to date.
    trusting = clone("trusting", verify=False)
    dvc("pull", "data/prepared", cwd=trusting)
    assert (trusting / "data/prepared" / entry["relpath"]).read_bytes() == bad
    assert "up to date" in dvc("status", "prepare", cwd=trusting).stdout

    # With verify, the pull fails and nothing of data/prepared reaches the workspace.
    checking = clone("checking", verify=True)
    proc = dvc("pull", "data/prepared", cwd=checking, check=False)
    printed = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "fetched" in printed and "Checkout failed for following targets:\ndata/prepared" in printed
    assert not (checking / "data/prepared").exists()
    assert explain_dvc_failure(printed, "s3://slimline-v/dvc").startswith(
        "corrupted object in s3://slimline-v/dvc: ")
    assert not is_transient(printed)  # (`dvc pull -v` adds the CORRUPT_V line above)

    # Deleting the object and pushing again does not repair it: the pushing clone
    # remembers data/prepared as pushed.
    s3.delete_object(Bucket="slimline-v", Key=key)
    assert "Everything is up to date." in dvc("push", "data/prepared", cwd=toy_copy).stdout
    assert "Contents" not in s3.list_objects_v2(Bucket="slimline-v", Prefix=key)
    # The fix the message names: restore the previous version (bootstrap turned on
    # versioning) by removing the delete marker and the tampered version above it.
    for kind in ("DeleteMarkers", "Versions"):
        latest = next(v for v in s3.list_object_versions(Bucket="slimline-v", Prefix=key)[kind]
                      if v["IsLatest"])
        s3.delete_object(Bucket="slimline-v", Key=key, VersionId=latest["VersionId"])
    assert s3.get_object(Bucket="slimline-v", Key=key)["Body"].read() == good
    dvc("pull", "data/prepared", cwd=checking)
    assert hashlib.md5((checking / "data/prepared" / entry["relpath"]).read_bytes()).hexdigest() \
        == entry["md5"]
