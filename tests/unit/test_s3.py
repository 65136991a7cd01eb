"""The sans-IO parts of S3 downloads (models/s3.py): resolving s3:// URLs, the signing region,
the SigV4 headers (checked against AWS's published example) and S3 errors put into words; and
the hook's reading of botocore's credential and endpoint settings from the environment."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import botocore.auth
import pytest

from trioserve.config import Config, default_config, parse_value
from trioserve.config_sources import load_config
from trioserve.errors import ConfigError
from trioserve.models import s3
from trioserve.models.s3 import Credentials, S3Object
from trioserve.models.store import DownloadRefused

# AWS's documentation example credentials (Signature Version 4, "GET Bucket (List Objects)").
EXAMPLE = Credentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
SECRETS = ("AKIDSECRETISH", "very-secret-key", "session-token-value")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("s3://models/echo.mar", S3Object("models", "echo.mar")),
        ("S3://models/a/b/echo.mar", S3Object("models", "a/b/echo.mar")),
        ("s3://my.bucket-1/k%20ey.mar", S3Object("my.bucket-1", "k ey.mar")),
    ],
)
def test_s3_urls_parse_into_bucket_and_key(url: str, expected: S3Object) -> None:
    assert s3.parse_s3_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "s3://models",
        "s3://models/",
        "s3://Models/echo.mar",  # upper case is not a bucket name
        "s3://ab/echo.mar",  # too short
        "s3://evil.example#/echo.mar",
        "s3://user@models/echo.mar",
        "s3://models:9000/echo.mar",
        "s3://a..b/echo.mar",
        "s3://models/echo.mar?versionId=1",
    ],
)
def test_malformed_s3_urls_are_refused(url: str) -> None:
    with pytest.raises(DownloadRefused):
        s3.parse_s3_url(url)


def test_object_urls_are_path_style_on_a_configured_endpoint() -> None:
    obj = S3Object("models", "dir/my model+1.mar")
    assert (
        s3.object_url(obj, endpoint="http://127.0.0.1:9000/", region="eu-west-1")
        == "http://127.0.0.1:9000/models/dir/my%20model%2B1.mar"
    )


def test_object_urls_on_aws_are_virtual_hosted_unless_the_bucket_has_dots() -> None:
    assert (
        s3.object_url(S3Object("models", "e.mar"), endpoint=None, region="eu-west-1")
        == "https://models.s3.eu-west-1.amazonaws.com/e.mar"
    )
    assert (
        s3.object_url(S3Object("my.models", "e.mar"), endpoint=None, region="eu-west-1")
        == "https://s3.eu-west-1.amazonaws.com/my.models/e.mar"
    )


@pytest.mark.parametrize(
    ("url", "region"),
    [
        ("https://b.s3.eu-central-1.amazonaws.com/k.mar", "eu-central-1"),
        ("https://s3.ap-southeast-2.amazonaws.com/b/k.mar", "ap-southeast-2"),
        ("https://b.s3-us-west-2.amazonaws.com/k.mar", "us-west-2"),
        ("https://b.s3.dualstack.us-east-2.amazonaws.com/k.mar", "us-east-2"),
        ("https://b.s3.amazonaws.com/k.mar", "us-east-1"),
        ("https://s3.amazonaws.com/b/k.mar", "us-east-1"),
        ("https://torchserve.pytorch.org/sse-test/squeezenet1_1.mar", None),
        ("http://127.0.0.1:9000/b/k.mar", None),
    ],
)
def test_the_signing_region_comes_from_an_aws_host(url: str, region: str | None) -> None:
    assert s3.region_in_url(url) == region


def test_signed_headers_match_aws_published_example(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        botocore.auth, "get_current_datetime", lambda: datetime.datetime(2013, 5, 24)
    )
    headers = s3.signed_headers(
        "https://examplebucket.s3.amazonaws.com/?max-keys=2&prefix=J", EXAMPLE, "us-east-1"
    )
    assert headers == {
        "Host": "examplebucket.s3.amazonaws.com",
        "X-Amz-Date": "20130524T000000Z",
        "X-Amz-Content-SHA256": (
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        ),
        "Authorization": (
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
            "SignedHeaders=host;x-amz-content-sha256;x-amz-date, "
            "Signature=34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"
        ),
    }


def test_signed_headers_carry_a_session_token_and_a_non_default_port() -> None:
    creds = Credentials("AKID", "secret", "the-token")
    headers = s3.signed_headers("http://127.0.0.1:9000/b/k.mar", creds, "eu-west-1")
    assert headers["Host"] == "127.0.0.1:9000"
    assert headers["X-Amz-Security-Token"] == "the-token"
    assert "/eu-west-1/s3/aws4_request" in headers["Authorization"]
    assert "x-amz-security-token" in headers["Authorization"]
    assert "secret" not in " ".join(headers.values())
    assert s3.signed_headers("https://h:443/b/k", creds, "eu-west-1")["Host"] == "h"


def error(code: str, message: str, **extra: str) -> bytes:
    more = "".join(f"<{k}>{v}</{k}>" for k, v in extra.items())
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
        f"<Message>{message}</Message>{more}<RequestId>R</RequestId></Error>"
    ).encode()


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (
            403,
            error("SignatureDoesNotMatch", "The request signature we calculated does not match"),
            "access denied: the request signature does not match (check AWS_SECRET_ACCESS_KEY)"
            " [SignatureDoesNotMatch]",
        ),
        (
            403,
            error("InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist"),
            "access denied: S3 does not know the access key id (check AWS_ACCESS_KEY_ID)"
            " [InvalidAccessKeyId]",
        ),
        (
            400,
            error("ExpiredToken", "The provided token has expired."),
            "access denied: the session token is expired or invalid [ExpiredToken]",
        ),
        (
            403,
            error("AccessDenied", "Access Denied"),
            "access denied: the credentials may not read this object (s3:GetObject) [AccessDenied]",
        ),
        (
            403,
            b"",
            "access denied: the credentials may not read this object (s3:GetObject) [HTTP 403]",
        ),
        (
            403,
            error(
                "AccessDenied",
                "The ciphertext refers to a customer master key that does not exist, does not "
                "exist in this region, or you are not allowed to access.",
            ),
            "KMS access denied: the credentials may not use the object's KMS key (kms:Decrypt): "
            "The ciphertext refers to a customer master key that does not exist, does not "
            "exist in this region, or you are not allowed to access. [AccessDenied]",
        ),
        (
            400,
            error("KMS.DisabledException", "arn:aws:kms:us-east-1:1:key/k is disabled."),
            "KMS error reading the object's encryption key: arn:aws:kms:us-east-1:1:key/k is "
            "disabled. [KMS.DisabledException]",
        ),
        (
            400,
            error("InvalidArgument", "Server Side Encryption with AWS KMS managed key requires"),
            "S3 refused the SSE-KMS request: Server Side Encryption with AWS KMS managed key "
            "requires [InvalidArgument]",
        ),
        (
            400,
            error("InvalidArgument", "Invalid version id specified"),
            "S3 answered HTTP 400: Invalid version id specified [InvalidArgument]",
        ),
        (
            404,
            error("NoSuchBucket", "The specified bucket does not exist", BucketName="gone"),
            "unknown bucket: gone does not exist [NoSuchBucket]",
        ),
        (
            404,
            error("NoSuchKey", "The specified key does not exist.", Key="m/a&amp;b.mar"),
            "unknown key: no object m/a&b.mar in the bucket [NoSuchKey]",
        ),
        (
            301,
            error("PermanentRedirect", "Use the endpoint", Endpoint="b.s3-eu-west-1.amazonaws.com"),
            "the bucket is served by another endpoint or region (S3 names "
            "b.s3-eu-west-1.amazonaws.com) [PermanentRedirect]",
        ),
        (
            400,
            error("AuthorizationHeaderMalformed", "the region 'us-east-1' is wrong"),
            "access denied: the request was signed for the wrong region: the region "
            "'us-east-1' is wrong [AuthorizationHeaderMalformed]",
        ),
        (500, b"<html>oops</html>", "S3 answered HTTP 500 [HTTP 500]"),
    ],
)
def test_s3_refusals_say_what_went_wrong(status: int, body: bytes, expected: str) -> None:
    assert s3.describe_refusal(status, body) == expected


def test_refusals_mask_secrets_quoted_from_s3() -> None:
    body = error("KMS.NotFoundException", "key for AKIDSECRETISH very-secret-key not found")
    text = s3.describe_refusal(400, body, secrets=SECRETS)
    assert text == (
        "KMS error reading the object's encryption key: key for *** *** not found "
        "[KMS.NotFoundException]"
    )


def test_quoted_messages_are_bounded() -> None:
    text = s3.describe_refusal(400, error("KMS.NotFoundException", "x" * 5000))
    assert len(text) < s3.MAX_QUOTED_MESSAGE + 100


@pytest.fixture
def no_aws(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
    return monkeypatch


def test_no_credentials_is_refused_before_any_request(no_aws: pytest.MonkeyPatch) -> None:
    with pytest.raises(DownloadRefused, match=r"^missing credentials: no AWS credentials found"):
        s3.S3Download().prepare("https://b.s3.eu-west-1.amazonaws.com/k.mar")


def test_partial_credentials_name_the_missing_variable(no_aws: pytest.MonkeyPatch) -> None:
    no_aws.setenv("AWS_ACCESS_KEY_ID", "AKIDONLY")
    with pytest.raises(DownloadRefused, match="missing credentials") as info:
        s3.S3Download().prepare("https://b.s3.eu-west-1.amazonaws.com/k.mar")
    assert "AKIDONLY" not in str(info.value)


def test_prepare_signs_with_the_environment_credentials(no_aws: pytest.MonkeyPatch) -> None:
    no_aws.setenv("AWS_ACCESS_KEY_ID", "AKIDENV")
    no_aws.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    no_aws.setenv("AWS_SESSION_TOKEN", "env-token")
    no_aws.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    url, headers = s3.S3Download().prepare("https://b.s3.ap-south-1.amazonaws.com/k.mar")
    assert url == "https://b.s3.ap-south-1.amazonaws.com/k.mar"  # given URLs are used as is
    assert "Credential=AKIDENV/" in headers["Authorization"]
    assert "/ap-south-1/s3/" in headers["Authorization"]  # the host's region wins
    assert headers["X-Amz-Security-Token"] == "env-token"
    _, other = s3.S3Download().prepare("https://torchserve.pytorch.org/sse-test/m.mar")
    assert "/eu-west-1/s3/" in other["Authorization"]  # else AWS_DEFAULT_REGION


@pytest.mark.parametrize(
    ("env", "endpoint_url", "expected"),
    [
        ({}, None, "https://models.s3.us-east-1.amazonaws.com/a/e.mar"),
        ({"AWS_REGION": "eu-north-1"}, None, "https://models.s3.eu-north-1.amazonaws.com/a/e.mar"),
        ({"AWS_ENDPOINT_URL": "http://minio:9000"}, None, "http://minio:9000/models/a/e.mar"),
        (
            {"AWS_ENDPOINT_URL": "http://other:1", "AWS_ENDPOINT_URL_S3": "http://s3only:2"},
            None,
            "http://s3only:2/models/a/e.mar",
        ),
        (
            {"AWS_ENDPOINT_URL_S3": "http://from-env:2"},
            "http://from-config:3",
            "http://from-config:3/models/a/e.mar",
        ),
        (
            {
                "AWS_ENDPOINT_URL_S3": "http://from-env:2",
                "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS": "true",
            },
            None,
            "https://models.s3.us-east-1.amazonaws.com/a/e.mar",
        ),
    ],
)
def test_s3_urls_resolve_through_the_endpoint_settings(
    no_aws: pytest.MonkeyPatch, env: dict[str, str], endpoint_url: str | None, expected: str
) -> None:
    no_aws.setenv("AWS_ACCESS_KEY_ID", "AKIDENV")
    no_aws.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    for name, value in env.items():
        no_aws.setenv(name, value)
    url, _ = s3.S3Download(endpoint_url).prepare("s3://models/a/e.mar")
    assert url == expected


@pytest.mark.parametrize(
    "value", ["http://127.0.0.1:9000", "https://s3.example.com/prefix", "http://[::1]:9000/"]
)
def test_s3_endpoint_url_accepts_http_urls(value: str) -> None:
    assert parse_value("s3_endpoint_url", value, "config.properties") == value
    assert Config(s3_endpoint_url=value).s3_endpoint_url == value
    assert parse_value("s3_endpoint_url", "", "config.properties") is None


@pytest.mark.parametrize(
    "value", ["127.0.0.1:9000", "ftp://h", "http://user:pw@h", "http://h/?x=1", "http://h/#f"]
)
def test_s3_endpoint_url_refuses_other_values(value: str) -> None:
    with pytest.raises(ConfigError, match=r"invalid value for s3_endpoint_url: .*http\(s\)://"):
        parse_value("s3_endpoint_url", value, "config.properties")
    with pytest.raises(ConfigError, match="s3_endpoint_url"):
        Config(s3_endpoint_url=value)


def test_s3_endpoint_url_is_read_from_the_file_and_from_its_env_var(tmp_path: Path) -> None:
    (tmp_path / "config.properties").write_text("s3_endpoint_url=http://127.0.0.1:9000\n")
    from_file = load_config(environ={}, cwd=tmp_path)
    assert from_file.s3_endpoint_url == "http://127.0.0.1:9000"
    assert from_file.sources["s3_endpoint_url"] != "default"
    environ = {"TS_S3_ENDPOINT_URL": "https://s3.example"}
    (tmp_path / "config.properties").write_text("enable_envvars_config=true\n")
    from_env = load_config(environ=environ, cwd=tmp_path)
    assert from_env.s3_endpoint_url == "https://s3.example"
    assert "TS_S3_ENDPOINT_URL" in from_env.sources["s3_endpoint_url"]
    assert default_config().s3_endpoint_url is None
