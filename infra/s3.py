"""Bootstrap an S3 bucket as Slimline's DVC remote.

    python -m infra.s3 bootstrap --bucket NAME [--endpoint-url URL] [--prefix dvc] [--region R]

Creates the bucket if it is missing, turns on versioning and default
encryption where the server supports them, writes a least-privilege IAM
policy for the bucket prefix to infra/iam-policy-<bucket>.json, and prints
the `dvc remote` commands to run. Safe to run again: nothing is recreated.

Credentials come from the standard AWS chain (environment, profile, role);
they are never written to git. For an S3-compatible server, the endpoint and
keys go in .dvc/config.local (`dvc remote modify --local`).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tasks.io import write_json


class S3Error(Exception):
    """A readable S3 failure: what went wrong and how to fix it."""


def client(endpoint_url: str | None, region: str):
    import boto3
    from botocore.config import Config

    # 2 attempts and short timeouts: an outage should cost seconds, not minutes.
    cfg = Config(retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=5, read_timeout=30)
    # A fresh session each time: the default one caches credentials from its first use.
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url, region_name=region, config=cfg)


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


def iam_policy(bucket: str, prefix: str) -> dict:
    """Least privilege for a DVC remote under s3://bucket/prefix."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "ListThePrefix", "Effect": "Allow", "Action": ["s3:ListBucket"],
             "Resource": f"arn:aws:s3:::{bucket}",
             "Condition": {"StringLike": {"s3:prefix": [f"{prefix}/*", prefix]}}},
            {"Sid": "ReadWriteObjects", "Effect": "Allow",
             "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
             "Resource": f"arn:aws:s3:::{bucket}/{prefix}/*"},
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
    result["commands"] = [f"dvc remote add -d {remote} {url}"]
    if endpoint_url:
        result["commands"].append(f"dvc remote modify --local {remote} endpointurl {endpoint_url}")
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m infra.s3", description=__doc__.split("\n")[0])
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
