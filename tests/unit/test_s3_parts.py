"""slimline/s3.py without a server or a project: what a failed dvc run's output is
classified as (the strings dvc printed against real servers), the bounded retry
environment, how the DVC remote's config merges, and bootstrap's errors with no
credentials or a dead endpoint. The live counterparts (moto, a real project) are in
tests/e2e/test_s3.py."""
import time

import pytest

from slimline.dvc_runner import is_transient
from slimline.s3 import S3Error, bootstrap, bounded_env, explain_dvc_failure, remote_config
from tests.support.prefect_server import free_port
from tests.support.project import dvc
from tests.support.s3 import KEYS


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


# ---- remote config ---------------------------------------------------------------------

def test_remote_config_merges_local_keys_and_flags_other_remotes(tmp_path):
    from dvc.config import Config
    from dvc.repo import Repo

    Repo.init(str(tmp_path), no_scm=True).close()
    assert remote_config(tmp_path) is None  # no remote: nothing to push or share
    # What a team commits (`dvc remote add -d ...`), and what each machine adds in
    # .dvc/config.local (`dvc remote modify --local ...`), through the API those commands use.
    with Config(dvc_dir=str(tmp_path / ".dvc")).edit("repo") as conf:
        conf["core"]["remote"] = "storage"
        conf["remote"]["storage"] = {"url": "s3://team-bucket/ml/dvc"}
        conf["remote"]["backup"] = {"url": str(tmp_path / "backup")}
    with Config(dvc_dir=str(tmp_path / ".dvc")).edit("local") as conf:
        conf["remote"]["storage"] = {"endpointurl": "http://127.0.0.1:9", "access_key_id": "testing",
                                     "secret_access_key": "testing-secret"}
    assert "testing" not in (tmp_path / ".dvc/config").read_text()  # keys stay out of git
    assert "testing-secret" in (tmp_path / ".dvc/config.local").read_text()

    cfg = remote_config(tmp_path)
    assert (cfg.name, cfg.url, cfg.bucket, cfg.prefix, cfg.is_s3) == (
        "storage", "s3://team-bucket/ml/dvc", "team-bucket", "ml/dvc", True)
    assert (cfg.endpoint_url, cfg.access_key_id, cfg.secret_access_key, cfg.region) == (
        "http://127.0.0.1:9", "testing", "testing-secret", None)  # no region: the AWS chain's
    assert "testing-secret" not in repr(cfg)  # safe to log

    backup = remote_config(tmp_path, "backup")
    assert not backup.is_s3 and backup.bucket == "" and backup.url == str(tmp_path / "backup")
    with pytest.raises(S3Error, match="no DVC remote named 'nope'"):
        remote_config(tmp_path, "nope")


# ---- what a failed dvc run says ----------------------------------------------------------

URL = "s3://slimline/dvc"
# Printed by dvc 3.67 / dvc-s3 3.3 against moto (no auth; IAM auth with a read-only
# user, a wrong secret, no keys; a tampered object; a deleted one), a dead port, a port
# that drops or hangs, and a held lock; bucket names and paths adjusted. The live tests
# (tests/e2e/test_s3.py, and the lock test below) repeat the refused, dropped, 403,
# no-credentials, checkout and lock cases.
REFUSED = ('ERROR: unexpected error - Could not connect to the endpoint URL: '
           '"http://127.0.0.1:45671/slimline/dvc/files/md5/55/f1815dc275351c87f141814fd031d3.dir"')
DROPPED = ('ERROR: unexpected error - Connection was closed before we received a valid response '
           'from endpoint URL: "http://127.0.0.1:45671/slimline/dvc/files/md5/55/f1815dc2.dir".')
HUNG = ('ERROR: unexpected error - Read timeout on endpoint URL: '
        '"http://127.0.0.1:45672/slimline/dvc/files/md5/55/f1815dc275351c87f141814fd031d3.dir"')
FORBIDDEN = ("ERROR: unexpected error - Forbidden: An error occurred (403) when calling the "
             "HeadObject operation: Forbidden")
PUT_DENIED = ("ERROR: failed to transfer '8e98e2b94dc23e15327d9d02660c588e' - Access Denied: An error "
              "occurred (AccessDenied) when calling the PutObject operation: Access Denied\n"
              "ERROR: failed to push data to the cloud - 3 files failed to upload")
NO_KEYS = "ERROR: unexpected error - Unable to locate credentials"
CORRUPT = ("3 files fetched\nERROR: failed to pull data from the cloud - Checkout failed for "
           "following targets:\ndata\nIs your cache up to date?\n<https://error.dvc.org/missing-files>")
CORRUPT_V = ("2026-11-27 22:54:51,239 DEBUG: corrupted cache file "
             "'/tmp/b/.dvc/cache/files/md5/01/7ad4ad9b0eb96a7ce5fa3f16792066'.")
MISSING = ("ERROR: failed to transfer '8e98e2b94dc23e15327d9d02660c588e' - The specified key does not "
           "exist.: An error occurred (NoSuchKey) when calling the GetObject operation: The specified "
           "key does not exist.\nERROR: failed to pull data from the cloud - 2 files failed to download")
LOCK = ("ERROR: failed to push data to the cloud - Unable to acquire lock. Most likely another DVC "
        "process is running or was terminated abruptly.")


@pytest.mark.parametrize("output, starts, transient", [
    (REFUSED, f"remote unreachable: {URL} (endpoint http://127.0.0.1:45671): check that the server "
              "is running and the endpoint in .dvc/config.local (dvc remote modify --local storage "
              "endpointurl URL)", True),
    (DROPPED, "remote unreachable: ", True),
    (HUNG, "remote unreachable: ", True),
    (FORBIDDEN, f"access denied to {URL} (403): ", False),
    (PUT_DENIED, f"access denied to {URL} (AccessDenied): ", False),
    (NO_KEYS, f"access denied to {URL} (Unable to locate credentials): ", False),
    (CORRUPT, f"corrupted object in {URL}: ", False),
    (CORRUPT_V, f"corrupted object in {URL}: ", False),
    (MISSING, None, False),  # not pushed: a different problem, no misleading hint
    (LOCK, None, True),  # another dvc run: wait and retry, nothing to explain about the remote
])
def test_dvc_failures_are_classified(output, starts, transient):
    line = explain_dvc_failure(output, URL)
    if starts is None:
        assert line is None
    else:
        assert line.startswith(starts) and "\n" not in line
    if starts and starts.startswith("access denied"):
        assert "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY" in line
        assert "dvc remote modify --local storage access_key_id" in line
        assert "infra/iam-policy-slimline.json" in line
    assert is_transient(output) is transient


def test_a_busy_dvc_lock_is_transient(tmp_path):
    from dvc.repo import Repo

    repo = Repo.init(str(tmp_path), no_scm=True)
    with repo.lock:  # what a second dvc process sees while one runs
        proc = dvc("push", cwd=tmp_path, check=False)
    repo.close()
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Unable to acquire lock" in out
    assert is_transient(out) and explain_dvc_failure(out, URL) is None


def test_bounded_env_caps_botocore_without_touching_the_input():
    env = {"PATH": "/bin", "AWS_MAX_ATTEMPTS": "10"}
    out = bounded_env(env)
    assert out == {"PATH": "/bin", "AWS_MAX_ATTEMPTS": "2", "AWS_RETRY_MODE": "standard"}
    assert env == {"PATH": "/bin", "AWS_MAX_ATTEMPTS": "10"}
    assert bounded_env({"AWS_MAX_ATTEMPTS": "1"}, attempts=3)["AWS_MAX_ATTEMPTS"] == "1"  # lower kept
    assert bounded_env({"AWS_RETRY_MODE": "adaptive"})["AWS_RETRY_MODE"] == "adaptive"
