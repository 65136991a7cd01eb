"""Registering SSE-KMS encrypted archives from S3 (``s3_sse_kms``, contract §2.2 and §4.2)
against a real S3 endpoint on 127.0.0.1 (moto's server, signatures and IAM enforced): the
signed download succeeds and the model predicts; every refusal is a 400 that says which, leaves
nothing in the model store and never shows a secret."""

from __future__ import annotations

import os
import re
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from tests.conftest import Server, make_config
from tests.integration.test_grpc import Clients, call, rpc_error
from tests.integration.test_grpc import pb as pb  # the grpcio stubs fixture
from tests.support import s3 as support
from tests.support.models import ECHO_HANDLER, handler_archive
from tests.support.s3 import AccessKey, S3Site
from tests.support.workflows import workflow_archive

ServerFactory = Callable[..., Awaitable[Server]]
DOWNLOAD_FAILED = "DownloadArchiveException"
_AWS_ISOLATION = {
    # Nothing of this machine's AWS setup may answer instead of the test's own.
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": "/nonexistent/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
    "AWS_DEFAULT_REGION": support.REGION,
}


@pytest.fixture(scope="session")
def s3_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Site]:
    root = tmp_path_factory.mktemp("s3")
    archive = handler_archive(root, "echo", ECHO_HANDLER)
    with support.moto_server(root / "moto.log") as endpoint:
        # A workflow whose one model node is the encrypted echo archive, in the same bucket.
        spec = f"models:\n  echo:\n    url: {endpoint}/{support.BUCKET}/models/echo.mar\n"
        flow = workflow_archive(root, "flow", spec + "dag:\n  echo: []\n")
        yield support.set_up(endpoint, {"echo": archive, "flow": flow})


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """An environment with no AWS credentials or endpoint; tests add what they need."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    for name, value in _AWS_ISOLATION.items():
        monkeypatch.setenv(name, value)
    return monkeypatch


def use_key(env: pytest.MonkeyPatch, key: AccessKey) -> None:
    env.setenv("AWS_ACCESS_KEY_ID", key.access_key)
    env.setenv("AWS_SECRET_ACCESS_KEY", key.secret_key)


def store_names(model_store: Path) -> list[str]:
    """What the model store holds, temporary download files included."""
    return sorted(p.name for p in model_store.iterdir())


def no_secret_in(response_text: str, site: S3Site) -> None:
    for secret in (site.reader.secret_key, site.stranger.secret_key, "wrong-secret"):
        assert secret not in response_text


async def register(server: Server, how: str, **params: Any) -> httpx.Response:
    if how == "query":
        query = {k: str(v).lower() if isinstance(v, bool) else v for k, v in params.items()}
        return await server.management.post("/models", params=query)
    return await server.management.post("/models", json=params)


def refused(response: httpx.Response, url: str, *, detail: str) -> str:
    """Check the contract's download-failure shape; returns the detail after the URL."""
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["code"] == 400
    assert body["type"] == DOWNLOAD_FAILED
    prefix = f"Failed to download archive from: {url}: "
    assert body["message"].startswith(prefix), body["message"]
    assert re.search(detail, body["message"][len(prefix) :]), body["message"]
    return str(body["message"])


@pytest.mark.parametrize("how", ["query", "json"])
async def test_signed_register_downloads_the_encrypted_archive_and_predicts(
    server_factory: ServerFactory,
    model_store: Path,
    s3_site: S3Site,
    aws_env: pytest.MonkeyPatch,
    how: str,
) -> None:
    use_key(aws_env, s3_site.reader)
    url = s3_site.http_url(s3_site.keys["echo"])
    server = await server_factory(make_config(model_store))
    response = await register(
        server, how, url=url, s3_sse_kms=True, initial_workers=1, synchronous=True
    )
    assert response.status_code == 200, response.text
    assert response.json() == {
        "status": 'Model "echo" Version: 1.0 registered with 1 initial workers'
    }
    no_secret_in(response.text, s3_site)
    assert store_names(model_store) == ["echo.mar"]
    prediction = await server.inference.post("/predictions/echo", content=b"decrypted")
    assert prediction.status_code == 200
    assert prediction.content == b"decrypted"


async def test_grpc_register_with_s3_sse_kms_signs_the_download(
    server_factory: ServerFactory,
    model_store: Path,
    s3_site: S3Site,
    aws_env: pytest.MonkeyPatch,
    pb: SimpleNamespace,
) -> None:
    use_key(aws_env, s3_site.reader)
    url = s3_site.http_url(s3_site.keys["echo"])
    server = await server_factory(make_config(model_store))
    clients = Clients(pb, server)
    try:
        message = pb.management_pb2.RegisterModelRequest
        unsigned = await rpc_error(clients.management.RegisterModel, message(url=url))
        assert unsigned.code().name == "INVALID_ARGUMENT"
        assert unsigned.details().startswith(f"Failed to download archive from: {url}\n")
        use_key(aws_env, AccessKey(s3_site.reader.access_key, "wrong-secret"))
        wrong = await rpc_error(clients.management.RegisterModel, message(url=url, s3_sse_kms=True))
        assert wrong.code().name == "INVALID_ARGUMENT"
        assert "SignatureDoesNotMatch" in wrong.details()
        assert "wrong-secret" not in wrong.details()
        assert store_names(model_store) == []
        use_key(aws_env, s3_site.reader)
        request = message(url=url, s3_sse_kms=True, initial_workers=1, synchronous=True)
        reply = await call(clients.management.RegisterModel, request)
        assert reply.msg == 'Model "echo" Version: 1.0 registered with 1 initial workers'
        prediction = await call(clients.inference.Predictions, clients.predict("echo", data="g"))
        assert prediction.prediction == b"g"
    finally:
        clients.close()


@pytest.mark.parametrize("setting", ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "s3_endpoint_url"])
async def test_s3_url_resolves_through_the_endpoint_setting(
    server_factory: ServerFactory,
    model_store: Path,
    s3_site: S3Site,
    aws_env: pytest.MonkeyPatch,
    setting: str,
) -> None:
    use_key(aws_env, s3_site.reader)
    overrides: dict[str, Any] = {"allowed_urls": (r"s3://models/.*",)}
    if setting == "s3_endpoint_url":
        overrides["s3_endpoint_url"] = s3_site.endpoint
    else:
        aws_env.setenv(setting, s3_site.endpoint)
    server = await server_factory(make_config(model_store, **overrides))
    url = f"s3://{s3_site.bucket}/{s3_site.keys['echo']}"
    response = await register(server, "query", url=url, initial_workers=1, synchronous=True)
    assert response.status_code == 200, response.text
    assert store_names(model_store) == ["echo.mar"]
    assert (await server.inference.post("/predictions/echo", content=b"s3")).content == b"s3"


async def test_s3_url_must_match_allowed_urls_as_given(
    server_factory: ServerFactory, model_store: Path, s3_site: S3Site, aws_env: pytest.MonkeyPatch
) -> None:
    use_key(aws_env, s3_site.reader)
    aws_env.setenv("AWS_ENDPOINT_URL_S3", s3_site.endpoint)
    server = await server_factory(make_config(model_store))  # the default list: no s3://
    url = f"s3://{s3_site.bucket}/{s3_site.keys['echo']}"
    response = await register(server, "query", url=url)
    assert response.status_code == 404
    assert response.json()["message"] == f"Given URL {url} does not match any allowed URL(s)"
    assert store_names(model_store) == []


async def test_the_object_cannot_be_fetched_without_a_signature(
    server_factory: ServerFactory, model_store: Path, s3_site: S3Site, aws_env: pytest.MonkeyPatch
) -> None:
    url = s3_site.http_url(s3_site.keys["echo"])
    assert support.unsigned_status(url) == 403  # the endpoint itself refuses
    server = await server_factory(make_config(model_store))
    plain = await register(server, "query", url=url)
    assert plain.status_code == 400
    assert plain.json() == {
        "code": 400,
        "type": DOWNLOAD_FAILED,
        "message": f"Failed to download archive from: {url}",
    }
    assert store_names(model_store) == []
    no_credentials = await register(server, "query", url=url, s3_sse_kms=True)
    refused(no_credentials, url, detail=r"^missing credentials: no AWS credentials found")
    assert store_names(model_store) == []


async def test_a_wrong_secret_is_access_denied_and_never_shown(
    server_factory: ServerFactory, model_store: Path, s3_site: S3Site, aws_env: pytest.MonkeyPatch
) -> None:
    use_key(aws_env, AccessKey(s3_site.reader.access_key, "wrong-secret"))
    url = s3_site.http_url(s3_site.keys["echo"])
    server = await server_factory(make_config(model_store))
    for how in ("query", "json"):
        response = await register(server, how, url=url, s3_sse_kms=True)
        message = refused(response, url, detail=r"^access denied: .*\[SignatureDoesNotMatch\]$")
        no_secret_in(response.text, s3_site)
        assert s3_site.reader.access_key not in message
        assert store_names(model_store) == []


async def test_unknown_access_key_and_missing_permission_are_access_denied(
    server_factory: ServerFactory, model_store: Path, s3_site: S3Site, aws_env: pytest.MonkeyPatch
) -> None:
    url = s3_site.http_url(s3_site.keys["echo"])
    server = await server_factory(make_config(model_store))
    use_key(aws_env, AccessKey("AKIAUNKNOWNKEY000000", "some-secret"))
    unknown = await register(server, "query", url=url, s3_sse_kms=True)
    refused(unknown, url, detail=r"^access denied: .*\[InvalidAccessKeyId\]$")
    assert "AKIAUNKNOWNKEY000000" not in unknown.text
    use_key(aws_env, s3_site.stranger)  # a real user without s3:GetObject
    stranger = await register(server, "query", url=url, s3_sse_kms=True)
    refused(stranger, url, detail=r"^access denied: .*s3:GetObject.*\[AccessDenied\]$")
    no_secret_in(stranger.text, s3_site)
    assert store_names(model_store) == []


async def test_unknown_key_and_unknown_bucket_say_which(
    server_factory: ServerFactory, model_store: Path, s3_site: S3Site, aws_env: pytest.MonkeyPatch
) -> None:
    use_key(aws_env, s3_site.reader)
    server = await server_factory(make_config(model_store))
    no_key = s3_site.http_url("models/absent.mar")
    refused(
        await register(server, "query", url=no_key, s3_sse_kms=True),
        no_key,
        detail=r"^unknown key: no object models/absent\.mar in the bucket \[NoSuchKey\]$",
    )
    no_bucket = s3_site.http_url(s3_site.keys["echo"], bucket="no-such-bucket")
    refused(
        await register(server, "json", url=no_bucket, s3_sse_kms=True),
        no_bucket,
        detail=r"^unknown bucket: no-such-bucket does not exist \[NoSuchBucket\]$",
    )
    assert store_names(model_store) == []


@pytest.mark.parametrize(
    ("status", "code", "message", "detail"),
    [
        (
            400,
            "KMS.NotFoundException",
            "Invalid keyId 'arn:aws:kms:us-east-1:123456789012:key/gone'",
            r"^KMS error reading the object's encryption key: Invalid keyId .*"
            r"\[KMS\.NotFoundException\]$",
        ),
        (
            403,
            "AccessDenied",
            "User: arn:aws:iam::123456789012:user/reader is not authorized to perform: "
            "kms:Decrypt on resource: arn:aws:kms:us-east-1:123456789012:key/k",
            r"^KMS access denied: .*kms:Decrypt.*\[AccessDenied\]$",
        ),
        (
            400,
            "InvalidArgument",
            "Requests specifying Server Side Encryption with AWS KMS managed keys require "
            "AWS Signature Version 4.",
            r"^S3 refused the SSE-KMS request: .*\[InvalidArgument\]$",
        ),
    ],
)
async def test_kms_errors_are_reported_as_such(
    server_factory: ServerFactory,
    model_store: Path,
    aws_env: pytest.MonkeyPatch,
    status: int,
    code: str,
    message: str,
    detail: str,
) -> None:
    use_key(aws_env, AccessKey("AKIAREADER0000000000", "reader-secret"))
    with support.error_site() as site:
        site.status, site.body = status, support.s3_error(code, message)
        config = make_config(
            model_store, s3_endpoint_url=site.endpoint, allowed_urls=(r"s3://models/.*",)
        )
        server = await server_factory(config)
        url = "s3://models/encrypted/echo.mar"
        response = await register(server, "query", url=url)
        refused(response, url, detail=detail)
        assert "reader-secret" not in response.text
        assert len(site.requests) == 1
        sent = {k.lower(): v for k, v in site.requests[0].items()}
        assert sent["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIAREADER0000000000/")
        assert "/us-east-1/s3/aws4_request" in sent["authorization"]
    assert store_names(model_store) == []


async def test_a_signed_download_is_never_redirected(
    server_factory: ServerFactory, model_store: Path, aws_env: pytest.MonkeyPatch
) -> None:
    use_key(aws_env, AccessKey("AKIAREADER0000000000", "reader-secret"))
    with support.error_site() as site:
        site.status = 307
        site.body = support.s3_error("TemporaryRedirect", "Please re-send this request")
        site.location = f"{site.endpoint}/elsewhere/echo.mar"
        server = await server_factory(make_config(model_store))
        url = f"{site.endpoint}/models/echo.mar"
        response = await register(server, "query", url=url, s3_sse_kms=True)
        refused(response, url, detail=r"another endpoint or region.*\[TemporaryRedirect\]$")
        assert len(site.requests) == 1
    assert store_names(model_store) == []


async def test_workflow_register_signs_the_war_and_its_model_nodes(
    server_factory: ServerFactory, model_store: Path, s3_site: S3Site, aws_env: pytest.MonkeyPatch
) -> None:
    use_key(aws_env, s3_site.reader)
    server = await server_factory(make_config(model_store))
    url = s3_site.http_url(s3_site.keys["flow"])
    unsigned = await server.management.post("/workflows", params={"url": url})
    assert unsigned.status_code == 400
    assert unsigned.json()["message"] == f"Failed to download archive from: {url}"
    assert store_names(model_store) == []
    response = await server.management.post("/workflows", json={"url": url, "s3_sse_kms": True})
    assert response.status_code == 200, response.text
    no_secret_in(response.text, s3_site)
    answer = await server.inference.post("/wfpredict/flow", content=b"through the dag")
    assert answer.status_code == 200, answer.text
    assert answer.content == b"through the dag"
