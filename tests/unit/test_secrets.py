"""No credentials in git: scan every file a commit would include.

The project talks to S3 (DVC remote, slimline/s3.py) and a shared Prefect server, so
keys end up in shells and local config; this catches one that slips into a file.
"""
from __future__ import annotations

import re
import subprocess

from tests.support.project import ROOT

AWS_KEY_ID = re.compile(r"(?<![0-9A-Z])(?:AKIA|ASIA)[0-9A-Z]{16}(?![0-9A-Z])")
# A 40-character secret key right after its name: `key = v`, `"KEY": "v"`, `key v` (dvc CLI).
AWS_SECRET = re.compile(r"(?i)\b(?:aws_)?secret_access_key\b[\"']?[\s:=,]{1,4}[\"']?"
                        r"([A-Za-z0-9/+=]{40})(?![A-Za-z0-9/+=])")
PRIVATE_KEY = re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----")


def is_placeholder(value: str) -> bool:
    """AWS's documented example keys, `testing` (moto's fixed credentials) and filler."""
    return "EXAMPLE" in value.upper() or value == "testing" or len(set(value)) == 1


def scan(text: str) -> list[tuple[int, str]]:
    """(line number, what was found) for every credential-looking string in text."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        found += [(number, "AWS access key id") for m in AWS_KEY_ID.finditer(line)
                  if not is_placeholder(m.group())]
        found += [(number, "AWS secret access key") for m in AWS_SECRET.finditer(line)
                  if not is_placeholder(m.group(1))]
        found += [(number, "private key") for _ in PRIVATE_KEY.finditer(line)]
    return found


def committable_files() -> list[str]:
    # Untracked, not ignored files too: they are one `git add -A` away from a commit.
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=ROOT, capture_output=True, check=True).stdout
    return sorted(set(filter(None, out.decode().split("\0"))))


def test_scanner_catches_keys_and_ignores_placeholders():
    # Built at runtime so this file itself never holds a key-shaped string.
    key_id = "AKIA" + "Z7QW3RT5YU8IOP2L"
    temp_id = "AS" + "IA" + "Q" * 8 + "4" * 8
    secret = "Xb7/k2Lq" + "9Rt+Wm4Zp1Vs8Ny6Hc3Jd5Fg0Ak7Bt2E"
    assert len(secret) == 40
    begin = "-----BEGIN " + "RSA PRIVATE KEY" + "-----"
    text = "\n".join([
        f"aws_access_key_id = {key_id}",
        f"aws_secret_access_key = {secret}",
        f'"AWS_SECRET_ACCESS_KEY": "{secret}"',
        f"dvc remote modify --local storage secret_access_key {secret}",
        f"export TOKEN_ID={temp_id}",
        begin,
        "-----BEGIN " + "OPENSSH PRIVATE KEY" + "-----",
    ])
    assert scan(text) == [(1, "AWS access key id"), (2, "AWS secret access key"),
                          (3, "AWS secret access key"), (4, "AWS secret access key"),
                          (5, "AWS access key id"), (6, "private key"), (7, "private key")]

    harmless = "\n".join([
        "AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing",
        "dvc remote modify --local storage secret_access_key testing",
        "aws_secret_access_key = ${AWS_SECRET_ACCESS_KEY}",
        "aws_secret_access_key = " + "x" * 40,
        "aws_access_key_id = AKIA" + "IOSFODNN7" + "EXAMPLE",
        f"checksum = {secret}",  # 40 characters, but not next to a key name
        "-----BEGIN " + "PUBLIC KEY" + "-----",
        "KEY" + key_id,  # part of a longer token
    ])
    assert scan(harmless) == []


def test_no_credentials_in_committable_files():
    leaks = []
    for rel in committable_files():
        path = ROOT / rel
        if not path.is_file():  # deleted in the working tree, still in the index
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:  # binary (plots, ONNX): no text credentials to find
            continue
        leaks += [f"{rel}:{number}: {what}" for number, what in scan(data.decode("utf-8", "replace"))]
    assert not leaks, "credentials in files git would commit:\n" + "\n".join(leaks)


def test_dvc_credentials_stay_in_the_ignored_local_config():
    config = (ROOT / ".dvc" / "config").read_text()
    keys = re.findall(r"(?im)^\s*(access_key_id|secret_access_key|session_token)\s*=", config)
    assert not keys, f".dvc/config holds {keys}: use `dvc remote modify --local` (.dvc/config.local)"
    tracked = subprocess.run(["git", "ls-files", "--error-unmatch", ".dvc/config"], cwd=ROOT,
                             capture_output=True)
    assert tracked.returncode == 0, ".dvc/config should be tracked"
    ignored = subprocess.run(["git", "check-ignore", "-q", ".dvc/config.local"], cwd=ROOT)
    assert ignored.returncode == 0, ".dvc/config.local must be gitignored: it holds the remote's keys"
