"""A real S3-compatible server on 127.0.0.1 for tests and benchmarks: moto's standalone
server (``moto[server]``, installed by ``make install``) in its own subprocess, with IAM
authentication on, so refused credentials and denied writes are real answers.

The server lets its first few requests through unauthenticated: those create two users,
``admin`` (every action) and ``reader`` (get and list only), and their access keys; from then
on every request must be signed by one of them.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REGION = "us-east-1"
_SETUP_REQUESTS = 6  # the IAM calls of _create_users, made before authentication starts


@dataclass(frozen=True)
class Keys:
    """An access key pair."""

    access_key_id: str
    secret_access_key: str


@dataclass
class S3Server:
    """A running server: its ``endpoint`` URL and the two users' keys."""

    endpoint: str
    admin: Keys
    reader: Keys
    process: subprocess.Popen

    def env(self, keys: Keys | None = None) -> dict[str, str]:
        """Environment variables that point AWS clients (botocore, s3fs, pyarrow) at this
        server with ``keys`` (default: admin), and away from any profile or metadata
        service of the machine."""
        keys = keys or self.admin
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": keys.access_key_id,
            "AWS_SECRET_ACCESS_KEY": keys.secret_access_key,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }

    def client(self, keys: Keys | None = None):
        """A boto3 S3 client signed with ``keys`` (default: admin)."""
        import boto3

        keys = keys or self.admin
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=keys.access_key_id,
            aws_secret_access_key=keys.secret_access_key,
        )

    def upload_tree(self, bucket: str, root: Path, prefix: str = "") -> list[str]:
        """Create ``bucket`` (if missing) and upload every file under ``root`` (symbolic
        links skipped) to ``<prefix><relative path>``. Returns the keys."""
        s3 = self.client()
        with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
            s3.create_bucket(Bucket=bucket)
        keys = []
        for path in sorted(root.rglob("*")):
            if path.is_file() and not path.is_symlink():
                key = prefix + path.relative_to(root).as_posix()
                s3.upload_file(str(path), bucket, key)
                keys.append(key)
        return keys


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _create_users(endpoint: str) -> tuple[Keys, Keys]:
    import boto3

    iam = boto3.client(
        "iam", endpoint_url=endpoint, region_name=REGION,
        aws_access_key_id="setup", aws_secret_access_key="setup",
    )  # fmt: skip
    policies = {
        "admin": ["*"],
        # AWS authorises a listing as s3:ListBucket; moto by the call's name
        "reader": ["s3:GetObject", "s3:ListBucket", "s3:ListObjectsV2", "s3:GetBucketLocation"],
    }
    keys = {}
    for user, actions in policies.items():
        iam.create_user(UserName=user)
        allow = {"Effect": "Allow", "Action": actions, "Resource": "*"}
        document = {"Version": "2012-10-17", "Statement": [allow]}
        iam.put_user_policy(UserName=user, PolicyName="p", PolicyDocument=json.dumps(document))
        key = iam.create_access_key(UserName=user)["AccessKey"]
        keys[user] = Keys(key["AccessKeyId"], key["SecretAccessKey"])
    return keys["admin"], keys["reader"]


@contextlib.contextmanager
def s3_server(log: Path | None = None) -> Iterator[S3Server]:
    """Start moto's S3 server on a free port of 127.0.0.1, create the users, yield it;
    stop it on exit."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(_SETUP_REQUESTS)}
    for name in [k for k in env if k.startswith("AWS_")]:
        env.pop(name)
    sink = log.open("w") if log is not None else subprocess.DEVNULL
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env, stdout=sink, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not start on {endpoint}") from None
                time.sleep(0.1)
        admin, reader = _create_users(endpoint)
        yield S3Server(endpoint, admin, reader, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if log is not None:
            sink.close()
