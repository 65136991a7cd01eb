"""A real S3 endpoint on 127.0.0.1 for the s3_sse_kms tests: moto's server in a subprocess,
set up through boto3 with IAM users, a KMS key and SSE-KMS objects, then switched to checking
every request's SigV4 signature and IAM permissions (moto's ``/moto-api/reset-auth``, the
server-mode form of ``INITIAL_NO_AUTH_ACTION_COUNT``)."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3

from tests.support.local_http import serving
from tests.support.spawn import free_port

LOCAL = "127.0.0.1"
REGION = "us-east-1"
BUCKET = "models"
# moto's server answers within a second here; a loaded CI machine gets much longer.
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
# Credentials for setting the endpoint up, before it checks any: moto accepts any then.
_SETUP_KEY = ("setup", "setup")
_READ_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": ["s3:GetObject", "kms:Decrypt"], "Resource": "*"}],
}


@dataclass(frozen=True)
class AccessKey:
    access_key: str
    secret_key: str


@dataclass(frozen=True)
class S3Site:
    """What the tests reach: the endpoint, the bucket, its objects' keys and two IAM users'
    keys (``reader`` may read; ``stranger`` exists but has no permissions)."""

    endpoint: str
    bucket: str
    kms_key_id: str
    reader: AccessKey
    stranger: AccessKey
    keys: dict[str, str] = field(default_factory=dict)  # model name -> object key

    def http_url(self, key: str, bucket: str | None = None) -> str:
        return f"{self.endpoint}/{bucket or self.bucket}/{key}"


def _get(url: str, timeout: float = 2.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code


def unsigned_status(url: str) -> int:
    """The status S3 answers a plain, unsigned GET of ``url`` with."""
    return _get(url)


@contextmanager
def moto_server(log: Path) -> Iterator[str]:
    """moto's server on a free port; yields its endpoint once it answers, stops it after.

    Raises:
        RuntimeError: it exited or did not answer within START_TIMEOUT_S (its log quoted).
    """
    port = free_port()
    endpoint = f"http://{LOCAL}:{port}"
    # Only what moto needs: no AWS settings of the machine it runs on leak into it.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", LOCAL, "-p", str(port)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"moto server exited: {log.read_text(errors='replace')}")
            try:
                if _get(f"{endpoint}/moto-api/", timeout=1.0) == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"moto server did not answer: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield endpoint
    finally:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def client(service: str, endpoint: str, key: tuple[str, str] = _SETUP_KEY) -> Any:
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=key[0],
        aws_secret_access_key=key[1],
    )


def set_up(endpoint: str, archives: dict[str, Path]) -> S3Site:
    """Users, a KMS key, the bucket and one SSE-KMS object per archive (``models/<file>``);
    then every later request must be signed by a known key and allowed by IAM."""
    iam, kms, s3 = (client(name, endpoint) for name in ("iam", "kms", "s3"))
    users = {}
    for name in ("reader", "stranger"):
        iam.create_user(UserName=name)
        made = iam.create_access_key(UserName=name)["AccessKey"]
        users[name] = AccessKey(made["AccessKeyId"], made["SecretAccessKey"])
    iam.put_user_policy(
        UserName="reader", PolicyName="read-models", PolicyDocument=json.dumps(_READ_POLICY)
    )
    key_id = kms.create_key(Description="model archives")["KeyMetadata"]["KeyId"]
    s3.create_bucket(Bucket=BUCKET)
    keys = {}
    for name, path in archives.items():
        keys[name] = f"models/{path.name}"
        s3.put_object(
            Bucket=BUCKET,
            Key=keys[name],
            Body=path.read_bytes(),
            ServerSideEncryption="aws:kms",
            SSEKMSKeyId=key_id,
        )
        head = s3.head_object(Bucket=BUCKET, Key=keys[name])
        assert head["ServerSideEncryption"] == "aws:kms"
        assert head["SSEKMSKeyId"].endswith(key_id)
    enforce_auth(endpoint)
    return S3Site(endpoint, BUCKET, key_id, users["reader"], users["stranger"], keys)


def enforce_auth(endpoint: str) -> None:
    request = urllib.request.Request(
        f"{endpoint}/moto-api/reset-auth",
        data=b"0",  # no more unchecked requests from now on
        method="POST",
        headers={"Content-Type": "text/plain"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


@dataclass
class ErrorSite:
    """An S3-compatible endpoint that answers every GET with one canned S3 error: the KMS
    failures moto does not model (its GetObject never consults KMS)."""

    status: int = 400
    body: bytes = b""
    location: str | None = None
    endpoint: str = ""
    requests: list[dict[str, str]] = field(default_factory=list)


@contextmanager
def error_site() -> Iterator[ErrorSite]:
    site = ErrorSite()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            site.requests.append(dict(self.headers.items()))
            self.send_response(site.status)
            self.send_header("Content-Type", "application/xml")
            if site.location:
                self.send_header("Location", site.location)
            self.send_header("Content-Length", str(len(site.body)))
            self.end_headers()
            self.wfile.write(site.body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    with serving(Handler) as site.endpoint:
        yield site


def s3_error(code: str, message: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        "<RequestId>4442587FB7D0A2F9</RequestId></Error>"
    ).encode()
