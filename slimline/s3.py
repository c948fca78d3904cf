"""Bootstrap an S3 bucket as Slimline's DVC remote.

    slimline s3 bootstrap --bucket NAME [--endpoint-url URL] [--prefix dvc] [--region R]

Creates the bucket if it is missing, turns on versioning and default
encryption where the server supports them, writes a least-privilege IAM
policy for the bucket prefix to infra/iam-policy-<bucket>.json, and prints
the `dvc remote` commands to run. Safe to run again: nothing is recreated.

Credentials come from the standard AWS chain (environment, profile, role);
they are never written to git. For an S3-compatible server, the endpoint and
keys go in .dvc/config.local (`dvc remote modify --local`).

For the flow: `remote_config` reads the DVC remote for boto3, `upload_reports`
shares report files through presigned links, `bounded_env` caps the retries of
dvc subprocesses, and `explain_dvc_failure` turns a failed dvc run's output into one
actionable line (the retry decision, `is_transient`, is slimline/dvc_runner.py's).

Retry layers in one `dvc push`/`dvc pull` (dvc-s3 3.3, s3fs 2026.9, aiohttp 3.14),
as measured against moto and dead ports (tests/e2e/test_s3.py counts the first two):
- botocore: AWS_MAX_ATTEMPTS tries per request (the legacy default is 5);
  `bounded_env` caps it. A refused connection costs exactly this many connects.
- aiohttp: resends a GET/HEAD once when the server drops the connection.
- s3fs: 5 tries per call on timeouts and dropped connections, not on refused
  ones. Fixed (S3FileSystem.retries): neither env nor DVC config reaches it.
- DVC: none of its own. A failed existence check (the first request of a push
  or pull) ends the command; a failed transfer fails that file, the rest go on.
A dropped connection therefore costs up to 2 x 5 x AWS_MAX_ATTEMPTS connects; a
hung server 5 x AWS_MAX_ATTEMPTS read timeouts (`dvc remote modify --local
storage read_timeout 10` bounds each one; s3fs's default is 15 s).
"""
from __future__ import annotations

import argparse
import json
import mimetypes
import posixpath
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from slimline.io import write_json


class S3Error(Exception):
    """A readable S3 failure: what went wrong and how to fix it."""


def client(endpoint_url: str | None, region: str | None, *, access_key_id: str | None = None,
           secret_access_key: str | None = None, session_token: str | None = None,
           profile: str | None = None):
    import boto3
    from botocore.config import Config

    # 2 attempts and short timeouts: an outage should cost seconds, not minutes.
    # SigV4 for presigned links too: botocore would presign with SigV2, which newer
    # regions reject; SigV4 links are signed for `region` (us-east-1 when None).
    cfg = Config(retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=5, read_timeout=30,
                 signature_version="s3v4")
    # A fresh session each time: the default one caches credentials from its first use.
    # Keys left None fall through to the AWS chain, as they do for dvc itself.
    return boto3.session.Session(profile_name=profile).client(
        "s3", endpoint_url=endpoint_url, region_name=region, aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key, aws_session_token=session_token, config=cfg)


def explain(err: Exception, bucket: str, endpoint_url: str | None) -> S3Error:
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    where = endpoint_url or "AWS S3"
    if isinstance(err, NoCredentialsError):
        return S3Error("no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                       "or AWS_PROFILE, or run where an IAM role is attached")
    if isinstance(err, EndpointConnectionError):
        return S3Error(f"cannot reach {where}: check --endpoint-url and that the server is running")
    if isinstance(err, ClientError):
        code = err.response.get("Error", {}).get("Code", "")
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return S3Error(f"access denied to bucket '{bucket}' at {where} ({code}): check the "
                           f"credentials, and that their IAM policy allows the actions in "
                           f"infra/iam-policy-{bucket}.json")
        return S3Error(f"S3 error on bucket '{bucket}' at {where}: {code}: {err}")
    return S3Error(f"S3 request to {where} failed: {err}")


def reports_prefix(dvc_prefix: str) -> str:
    """Where shared reports go: `reports` beside the DVC prefix (s3://b/dvc -> s3://b/reports,
    s3://b/team/dvc -> s3://b/team/reports), so DVC's own tree holds only DVC's objects."""
    return posixpath.join(posixpath.dirname(dvc_prefix.strip("/")), "reports")


def iam_policy(bucket: str, prefix: str) -> dict:
    """Least privilege for a DVC remote under s3://bucket/prefix, plus writing and
    presigning reports under the reports prefix (a presigned GET acts with the
    signer's rights, so the signer needs s3:GetObject there)."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "ListThePrefix", "Effect": "Allow", "Action": ["s3:ListBucket"],
             "Resource": f"arn:aws:s3:::{bucket}",
             "Condition": {"StringLike": {"s3:prefix": [f"{prefix}/*", prefix]}}},
            {"Sid": "ReadWriteObjects", "Effect": "Allow",
             "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
             "Resource": f"arn:aws:s3:::{bucket}/{prefix}/*"},
            {"Sid": "WriteAndShareReports", "Effect": "Allow",
             "Action": ["s3:GetObject", "s3:PutObject"],
             "Resource": f"arn:aws:s3:::{bucket}/{reports_prefix(prefix)}/*"},
        ],
    }


def bootstrap(bucket: str, endpoint_url: str | None = None, region: str = "us-east-1",
              prefix: str = "dvc", policy_dir: Path = Path("infra"), remote: str = "storage") -> dict:
    from botocore.exceptions import BotoCoreError, ClientError

    s3 = client(endpoint_url, region)
    result = {"bucket": bucket, "created": False}
    try:
        try:
            s3.head_bucket(Bucket=bucket)
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
                raise
            kwargs = {} if region == "us-east-1" else {
                "CreateBucketConfiguration": {"LocationConstraint": region}}
            s3.create_bucket(Bucket=bucket, **kwargs)
            result["created"] = True
        for feature, call in (
                ("versioning", lambda: s3.put_bucket_versioning(
                    Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})),
                ("encryption", lambda: s3.put_bucket_encryption(
                    Bucket=bucket, ServerSideEncryptionConfiguration={"Rules": [
                        {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]}))):
            try:
                call()
                result[feature] = "enabled"
            except ClientError as err:  # some S3-compatible servers lack the feature
                code = err.response.get("Error", {}).get("Code", "")
                if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                    raise
                result[feature] = f"not supported by the server ({code})"
    except (ClientError, BotoCoreError) as err:
        raise explain(err, bucket, endpoint_url) from None
    policy_path = Path(policy_dir) / f"iam-policy-{bucket}.json"
    write_json(policy_path, iam_policy(bucket, prefix))
    result["policy"] = str(policy_path)
    url = f"s3://{bucket}/{prefix}"
    # verify: dvc pull re-hashes what it downloads. Without it DVC 3 checks out a
    # corrupted or tampered object silently and `dvc status` calls it up to date.
    result["commands"] = [f"dvc remote add -d {remote} {url}", f"dvc remote modify {remote} verify true"]
    if region != "us-east-1":  # report links are signed for the bucket's region
        result["commands"].append(f"dvc remote modify {remote} region {region}")
    if endpoint_url:
        result["commands"].append(f"dvc remote modify --local {remote} endpointurl {endpoint_url}")
    return result


@dataclass(frozen=True)
class RemoteConfig:
    """A DVC remote as boto3 needs it. Keys and region are None unless DVC's config
    sets them, so the AWS chain (env, profile, role) applies just as it does for dvc."""

    name: str
    url: str
    bucket: str = ""
    prefix: str = ""
    endpoint_url: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)  # never in logs
    session_token: str | None = field(default=None, repr=False)
    region: str | None = None
    profile: str | None = None

    @property
    def is_s3(self) -> bool:
        """False for other remotes (a local folder, ssh, ...): dvc push still works,
        S3-only features such as report links do not."""
        return self.url.startswith("s3://")

    def client(self):
        return client(self.endpoint_url, self.region, access_key_id=self.access_key_id,
                      secret_access_key=self.secret_access_key, session_token=self.session_token,
                      profile=self.profile)


def remote_config(root: Path, name: str | None = None) -> RemoteConfig | None:
    """The default DVC remote (or `name`) of the project at root, None when it has none.

    Read through DVC's merged config (system, global, repo, local), so keys set with
    `dvc remote modify --local` count exactly as they do for dvc push."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        conf = repo.config
        name = name or conf["core"].get("remote")
        if not name:
            return None
        if name not in conf["remote"]:
            raise S3Error(f"no DVC remote named '{name}' (see `dvc remote list`)")
        section = dict(conf["remote"][name])
    url = section["url"]
    parts = urlsplit(url)
    s3 = parts.scheme == "s3"
    return RemoteConfig(name=name, url=url, bucket=parts.netloc if s3 else "",
                        prefix=parts.path.strip("/") if s3 else "",
                        endpoint_url=section.get("endpointurl"),
                        access_key_id=section.get("access_key_id"),
                        secret_access_key=section.get("secret_access_key"),
                        session_token=section.get("session_token"),
                        region=section.get("region"), profile=section.get("profile"))


# Browsers render or download by Content-Type; S3 would otherwise store
# binary/octet-stream and every link would download instead of showing.
CONTENT_TYPES = {".png": "image/png", ".json": "application/json",
                 ".md": "text/markdown; charset=utf-8"}
MAX_PRESIGN_S = 7 * 24 * 3600  # the SigV4 ceiling: S3 rejects longer-lived links


def upload_reports(root: Path, files: list[Path], run_id: str, cfg: RemoteConfig,
                   expires_s: int = MAX_PRESIGN_S) -> dict[str, str]:
    """Upload files to s3://bucket/<reports prefix>/<run_id>/<file name> and return
    {file name: presigned GET URL}, valid for expires_s seconds (links signed with
    temporary credentials, e.g. a role's, die with those credentials). Relative paths
    are taken from root."""
    from botocore.exceptions import BotoCoreError, ClientError

    if not cfg.is_s3:
        raise S3Error(f"DVC remote '{cfg.name}' is not on S3 ({cfg.url}): no report links")
    # The run id becomes a key segment: no '/' or '..' that would escape reports/.
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", run_id):
        raise ValueError(f"run id {run_id!r}: use letters, digits, '.', '_' and '-' only")
    if not 1 <= expires_s <= MAX_PRESIGN_S:
        raise ValueError(f"expires_s must be 1..{MAX_PRESIGN_S} (7 days, S3's limit), not {expires_s}")
    base = f"{reports_prefix(cfg.prefix)}/{run_id}"
    s3 = cfg.client()
    links = {}
    try:
        for f in files:
            path = Path(f) if Path(f).is_absolute() else Path(root) / f
            key = f"{base}/{path.name}"
            ctype = CONTENT_TYPES.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0] \
                or "application/octet-stream"
            s3.put_object(Bucket=cfg.bucket, Key=key, Body=path.read_bytes(), ContentType=ctype)
            links[path.name] = s3.generate_presigned_url(
                "get_object", Params={"Bucket": cfg.bucket, "Key": key}, ExpiresIn=expires_s)
    except (ClientError, BotoCoreError) as err:
        raise explain(err, cfg.bucket, cfg.endpoint_url) from None
    return links


def bounded_env(env: dict, attempts: int = 2) -> dict:
    """A copy of env for dvc subprocesses with botocore capped at `attempts` tries per
    request (a lower AWS_MAX_ATTEMPTS already there is kept). Standard mode because
    the legacy default makes 5 tries with growing sleeps. The s3fs and aiohttp
    layers (module docstring) are fixed and multiply this on dropped connections."""
    out = dict(env)
    try:
        current = int(out.get("AWS_MAX_ATTEMPTS", attempts))
    except ValueError:
        current = attempts
    out["AWS_MAX_ATTEMPTS"] = str(max(1, min(current, attempts)))
    if out.get("AWS_RETRY_MODE") != "adaptive":  # adaptive is standard plus rate limiting
        out["AWS_RETRY_MODE"] = "standard"
    return out


# Substrings of failed dvc push/pull/repro output, as dvc-s3 prints them (the tests
# reproduce each against a real S3 server or a dead port).
UNREACHABLE = ("Could not connect to the endpoint URL",  # refused, DNS (EndpointConnectionError)
               "Connection was closed before we received a valid response",  # dropped
               "Read timeout on endpoint URL", "Connect timeout on endpoint URL",  # hung
               "EndpointConnectionError", "ClientConnectorError", "Cannot connect to host")
DENIED = ("Unable to locate credentials", "NoCredentialsError", "InvalidAccessKeyId",
          "SignatureDoesNotMatch", "AccessDenied", "Access Denied", "(403)", "Forbidden")
CORRUPTED = "corrupted cache file"  # `dvc pull -v` with verify true, naming the object


def _corrupted(output: str) -> bool:
    # Without -v, verify's only trace is a checkout failure after a complete fetch:
    # the mismatched object was deleted from the cache. A missing object instead says
    # "failed to download".
    return CORRUPTED in output or (
        "Checkout failed for following targets" in output
        and re.search(r"\b\d+ files? fetched", output) is not None
        and "failed to download" not in output)


def explain_dvc_failure(output: str, remote_url: str, name: str = "storage") -> str | None:
    """One line naming the cause and the fix for a failed dvc run whose output (stdout
    and stderr) shows an unreachable remote, refused access or a corrupted object;
    None for anything else. name: the DVC remote, for the commands in the fix."""
    bucket = urlsplit(remote_url).netloc if remote_url.startswith("s3://") else "<bucket>"
    if any(m in output for m in UNREACHABLE):
        endpoint = re.search(r'endpoint URL: "?(https?://[^/"\s]+)', output)
        where = f"{remote_url} (endpoint {endpoint.group(1)})" if endpoint else remote_url
        return (f"remote unreachable: {where}: check that the server is running and the endpoint "
                f"in .dvc/config.local (dvc remote modify --local {name} endpointurl URL)")
    denied = next((m for m in DENIED if m in output), None)
    if denied:
        return (f"access denied to {remote_url} ({denied.strip('()')}): the credentials are missing, "
                f"wrong, or not allowed by the bucket policy; fix: set AWS_ACCESS_KEY_ID/"
                f"AWS_SECRET_ACCESS_KEY or `dvc remote modify --local {name} access_key_id ...` "
                f"(and secret_access_key); check the IAM policy in infra/iam-policy-{bucket}.json")
    if _corrupted(output):
        return (f"corrupted object in {remote_url}: a downloaded file did not match its hash, so DVC "
                f"discarded it and checked nothing out (`dvc pull -v` names it: '{CORRUPTED}'); "
                f"fix: restore the object's previous version (bootstrap turns on bucket versioning) "
                f"or copy the good file from another clone's .dvc/cache to the same key; `dvc push` "
                f"will not replace it, since DVC remembers the directory as pushed")
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="slimline s3", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bootstrap", help="create/configure the bucket and print the dvc commands")
    b.add_argument("--bucket", required=True)
    b.add_argument("--endpoint-url", default=None, help="S3-compatible server (default: AWS)")
    b.add_argument("--region", default="us-east-1")
    b.add_argument("--prefix", default="dvc", help="key prefix for the DVC remote")
    b.add_argument("--remote", default="storage", help="DVC remote name")
    b.add_argument("--json", action="store_true", help="print the result as JSON")
    args = ap.parse_args(argv)
    try:
        r = bootstrap(args.bucket, args.endpoint_url, args.region, args.prefix, remote=args.remote)
    except S3Error as err:
        print(f"ERROR: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(r))
        return 0
    print(f"bucket {r['bucket']}: {'created' if r['created'] else 'already there'}; versioning "
          f"{r['versioning']}; encryption {r['encryption']}")
    print(f"least-privilege IAM policy: {r['policy']}")
    print("configure DVC with:\n  " + "\n  ".join(r["commands"]))
    print("(verify true: `dvc pull` re-hashes downloads, so a corrupted object fails the pull "
          "instead of reaching the workspace)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
