"""Downloads from S3 for ``s3_sse_kms`` (contract §2.2) and ``s3://`` URLs: SigV4-signed GETs.

An object encrypted with SSE-KMS can only be read by a request signed with AWS Signature
Version 4, so the plain download is not enough. The pieces here are pure functions of their
inputs (resolve an ``s3://`` URL, sign a GET, put S3's XML error into words); :class:`S3Download`
is the ``store.DownloadAuth`` hook that feeds them botocore's credential chain, region and
endpoint settings, read afresh for each download so that rotated credentials are picked up.

botocore is imported where it is used: it costs a noticeable part of a second, which a server
that never downloads from S3 should not pay at start.
"""

from __future__ import annotations

import html
import logging
import os
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from trioserve.models.store import DownloadRefused

if TYPE_CHECKING:
    from botocore.session import Session

logger = logging.getLogger(__name__)
# botocore's signer logs the canonical request at debug, session token included: keep those
# lines out of a server log set to debug.
logging.getLogger("botocore.auth").setLevel(logging.INFO)

# Signing region when neither the URL's host nor the environment names one: S3's own default.
DEFAULT_REGION = "us-east-1"
# A refusal quotes at most this much of S3's message (the XML body is read within a bound too).
MAX_QUOTED_MESSAGE = 300
# S3's bucket naming rules (lower case, digits, dots, hyphens; 3 to 63 characters). Checked
# strictly because a virtual-hosted URL puts the bucket into the host name.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
# <bucket>.s3.<region>.amazonaws.com, s3.<region>.amazonaws.com, the legacy s3-<region> form
# and the dualstack names; a bare s3.amazonaws.com is us-east-1.
_AWS_HOST = re.compile(
    r"(?:.+\.)?s3[.-](?:dualstack\.)?(?P<region>[a-z]{2}(?:-[a-z]+)+-[0-9]+)\.amazonaws\.com"
    r"(?:\.cn)?"
)
_XML_FIELD = re.compile(r"<(Code|Message|BucketName|Key|Endpoint)>([^<]{0,2000})</\1>")


@dataclass(frozen=True)
class S3Object:
    bucket: str
    key: str


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str
    token: str | None = None

    def secrets(self) -> tuple[str, ...]:
        """What a message shown to a client must never contain."""
        return tuple(s for s in (self.access_key, self.secret_key, self.token) if s)


def is_s3_url(url: str) -> bool:
    return url[:5].lower() == "s3://"


def parse_s3_url(url: str) -> S3Object:
    """``s3://bucket/key`` as its parts.

    Raises:
        DownloadRefused: not of that form, or the bucket breaks S3's naming rules.
    """
    parsed = urllib.parse.urlsplit(url)
    key = urllib.parse.unquote(parsed.path.lstrip("/"))
    if parsed.scheme.lower() != "s3" or not key or parsed.query or parsed.fragment:
        raise DownloadRefused("expected s3://bucket/key")
    if not _BUCKET.fullmatch(parsed.netloc) or ".." in parsed.netloc:
        raise DownloadRefused("the bucket name is not a valid S3 bucket name")
    return S3Object(parsed.netloc, key)


def object_url(obj: S3Object, *, endpoint: str | None, region: str) -> str:
    """The http(s) URL of ``obj``.

    A configured endpoint (an S3-compatible store, a local test server) is addressed
    path-style, which every such store understands; AWS itself virtual-hosted, except for a
    bucket with dots, whose host name the wildcard certificate would not cover.
    """
    key = urllib.parse.quote(obj.key, safe="/~")
    if endpoint:
        return f"{endpoint.rstrip('/')}/{obj.bucket}/{key}"
    if "." in obj.bucket:
        return f"https://s3.{region}.amazonaws.com/{obj.bucket}/{key}"
    return f"https://{obj.bucket}.s3.{region}.amazonaws.com/{key}"


def region_in_url(url: str) -> str | None:
    """The region an AWS S3 URL's host names; None for another host."""
    host = (urllib.parse.urlsplit(url).hostname or "").lower()
    if host in ("s3.amazonaws.com",) or host.endswith(".s3.amazonaws.com"):
        return DEFAULT_REGION
    match = _AWS_HOST.fullmatch(host)
    return match["region"] if match else None


def _host_header(url: str) -> str:
    # What SigV4 signs as ``host`` and what must then be sent: the default port left out.
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    default = {"http": 80, "https": 443}.get(parts.scheme.lower())
    return host if parts.port in (None, default) else f"{host}:{parts.port}"


def signed_headers(url: str, credentials: Credentials, region: str) -> dict[str, str]:
    """The headers that make a GET of ``url`` a SigV4-signed S3 request (``Host``,
    ``X-Amz-Date``, ``X-Amz-Content-SHA256``, ``Authorization`` and, for temporary
    credentials, ``X-Amz-Security-Token``). Sent with exactly this URL, unchanged."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials as BotoCredentials

    request = AWSRequest(method="GET", url=url, headers={"Host": _host_header(url)})
    boto = BotoCredentials(credentials.access_key, credentials.secret_key, credentials.token)
    S3SigV4Auth(boto, "s3", region).add_auth(request)
    return {name: str(value) for name, value in request.headers.items()}


def _scrub(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def _fields(body: bytes) -> dict[str, str]:
    # S3's error document is flat (<Error><Code>…</Code>…); a bounded regex over a bounded
    # body reads it without an XML parser's exposure to entity tricks.
    text = body.decode("utf-8", "replace")
    return {name: html.unescape(value).strip() for name, value in _XML_FIELD.findall(text)}


def describe_refusal(status: int, body: bytes, *, secrets: Iterable[str] = ()) -> str:
    """Why S3 refused a signed GET, in words a client may see: what went wrong and what to
    check, then S3's error code. ``secrets`` are masked out of anything quoted from S3."""
    fields = _fields(body)
    code = fields.get("Code", "")
    message = _scrub(fields.get("Message", ""), secrets)[:MAX_QUOTED_MESSAGE]
    tag = f" [{code}]" if code else f" [HTTP {status}]"
    quoted = f": {message}" if message else ""
    about_kms = re.search(r"kms|ciphertext|customer master key", message, re.IGNORECASE)
    if code.startswith("KMS."):
        return f"KMS error reading the object's encryption key{quoted}{tag}"
    if code == "AccessDenied" and about_kms:
        return (
            "KMS access denied: the credentials may not use the object's KMS key "
            f"(kms:Decrypt){quoted}{tag}"
        )
    if code in ("InvalidArgument", "InvalidRequest") and re.search(
        r"encryption|kms|sse|signature version", message, re.IGNORECASE
    ):
        return f"S3 refused the SSE-KMS request{quoted}{tag}"
    if code == "SignatureDoesNotMatch":
        return (
            "access denied: the request signature does not match "
            f"(check AWS_SECRET_ACCESS_KEY){tag}"
        )
    if code == "InvalidAccessKeyId":
        return f"access denied: S3 does not know the access key id (check AWS_ACCESS_KEY_ID){tag}"
    if code in ("ExpiredToken", "InvalidToken", "TokenRefreshRequired"):
        return f"access denied: the session token is expired or invalid{tag}"
    if code == "AuthorizationHeaderMalformed":
        return f"access denied: the request was signed for the wrong region{quoted}{tag}"
    if code == "AccessDenied" or (status == 403 and not code):
        return f"access denied: the credentials may not read this object (s3:GetObject){tag}"
    if code == "NoSuchBucket":
        bucket = fields.get("BucketName")
        return f"unknown bucket: {bucket or 'the bucket'} does not exist{tag}"
    if code == "NoSuchKey":
        key = fields.get("Key")
        return f"unknown key: no object {key} in the bucket{tag}" if key else f"unknown key{tag}"
    if code in ("PermanentRedirect", "TemporaryRedirect") or 300 <= status < 400:
        endpoint = fields.get("Endpoint")
        where = f" (S3 names {endpoint})" if endpoint else ""
        return f"the bucket is served by another endpoint or region{where}{tag}"
    return f"S3 answered HTTP {status}{quoted}{tag}"


class S3Download:
    """The ``store.DownloadAuth`` hook for ``s3_sse_kms`` and ``s3://`` URLs.

    ``endpoint_url`` is trioserve's ``s3_endpoint_url``; without it, an ``s3://`` URL goes to
    boto3's configured endpoint (``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``, a profile's
    ``services`` section), else to AWS. Both methods run in the download thread: the
    credential chain may read files or ask the instance metadata service.
    """

    def __init__(self, endpoint_url: str | None = None) -> None:
        self.endpoint_url = endpoint_url
        self._secrets: tuple[str, ...] = ()

    def prepare(self, url: str) -> tuple[str, Mapping[str, str]]:
        session = _session()
        configured_region = _configured_region(session)
        if is_s3_url(url):
            obj = parse_s3_url(url)
            endpoint = self.endpoint_url or _configured_endpoint(session)
            get_url = object_url(obj, endpoint=endpoint, region=configured_region)
        else:
            get_url = url
        region = region_in_url(get_url) or configured_region
        credentials = _credentials(session)
        self._secrets = credentials.secrets()
        logger.info("signed S3 download of %s (region %s)", get_url, region)
        return get_url, signed_headers(get_url, credentials, region)

    def refusal(self, status: int, body: bytes) -> str:
        return describe_refusal(status, body, secrets=self._secrets)


def _session() -> Session:
    import botocore.session

    return botocore.session.Session()


def _configured_region(session: Session) -> str:
    from botocore.exceptions import BotoCoreError

    try:
        region = session.get_config_variable("region")
    except BotoCoreError:
        region = None
    return str(region or os.environ.get("AWS_REGION") or DEFAULT_REGION)


def _configured_endpoint(session: Session) -> str | None:
    from botocore.configprovider import ConfiguredEndpointProvider
    from botocore.exceptions import BotoCoreError

    try:
        if session.get_config_variable("ignore_configured_endpoint_urls"):
            return None
        provider = ConfiguredEndpointProvider(
            full_config=session.full_config,
            scoped_config=session.get_scoped_config(),
            client_name="s3",
        )
        endpoint = provider.provide()
    except BotoCoreError as exc:
        raise DownloadRefused(
            f"could not read the AWS configuration ({type(exc).__name__})"
        ) from None
    return str(endpoint) if endpoint else None


def _credentials(session: Session) -> Credentials:
    """Credentials from botocore's chain: environment, shared files and profiles, container
    and instance metadata.

    Raises:
        DownloadRefused: none found, or incomplete; the text names no value.
    """
    from botocore.exceptions import BotoCoreError, PartialCredentialsError, ProfileNotFound

    try:
        found = session.get_credentials()
    except (PartialCredentialsError, ProfileNotFound) as exc:
        raise DownloadRefused(f"missing credentials: {exc}") from None
    except BotoCoreError as exc:
        raise DownloadRefused(
            f"missing credentials: the AWS credential chain failed ({type(exc).__name__})"
        ) from None
    if found is None:
        raise DownloadRefused(
            "missing credentials: no AWS credentials found (set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or an AWS profile)"
        )
    frozen = found.get_frozen_credentials()
    if not frozen.access_key or not frozen.secret_key:
        raise DownloadRefused("missing credentials: the AWS access key or secret key is empty")
    return Credentials(frozen.access_key, frozen.secret_key, frozen.token or None)
