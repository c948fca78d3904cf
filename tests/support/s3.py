"""A local S3-compatible server (moto) on a loopback port, and a project's DVC remote on it."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1"}


def start_moto(port: int, log: Path, **env: str) -> subprocess.Popen:
    """moto in server mode on a loopback port; returns once it answers."""
    out = open(log, "w")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1",
                             "-p", str(port)], stdout=out, stderr=subprocess.STDOUT,
                            env={**os.environ, **env})
    out.close()  # the child keeps its own handle
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=1)
            return proc
        except OSError as err:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"moto server did not start:\n{log.read_text()[-2000:]}") from err
            time.sleep(0.2)


def stop_moto(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(timeout=10)


def configure_remote(root: Path, bucket: str, url: str, *, prefix: str = "dvc", verify: bool = False,
                     key_id: str | None = KEYS["AWS_ACCESS_KEY_ID"],
                     secret: str | None = KEYS["AWS_SECRET_ACCESS_KEY"]) -> None:
    """The default remote `storage` in .dvc/config.local, as `dvc remote add -d --local`
    and `dvc remote modify --local` write it (through DVC's own config API: one
    process instead of one per option). Keys None: the AWS chain applies."""
    from dvc.config import Config

    section = {"url": f"s3://{bucket}/{prefix}", "endpointurl": url, "verify": str(verify).lower()}
    section.update({k: v for k, v in (("access_key_id", key_id), ("secret_access_key", secret)) if v})
    with Config(dvc_dir=str(root / ".dvc")).edit("local") as conf:
        conf["core"]["remote"] = "storage"
        conf["remote"]["storage"] = section
