"""Resolving a register ``url`` to a local archive: the model store, paths and downloads."""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from http.client import HTTPMessage
from pathlib import Path
from typing import IO, Protocol

import trio

from trioserve.errors import DownloadArchiveError, InternalServerError, ModelNotFound, ServeError

logger = logging.getLogger(__name__)

# Downloads larger than this are refused: an archive is extracted next, and a runaway download
# would fill the model store's disk first.
MAX_DOWNLOAD_BYTES = 16 * 1024**3
# The whole download, however the server paces it; each socket read also times out after
# READ_TIMEOUT_S, so a silent server is given up on sooner.
DOWNLOAD_TIMEOUT_S = 600.0
READ_TIMEOUT_S = 60.0
_READ_SIZE = 1 << 20
# How much of a refused download's error body a DownloadAuth hook is shown (S3's XML error
# documents are well under 1 KiB; the rest is not read).
MAX_ERROR_BODY_BYTES = 64 * 1024
# TorchServe's default allowed_urls lets register fetch any URL the server can reach (SSRF:
# cloud metadata, services bound to localhost, any local file). A list that admits either of
# these is warned about at start.
_SSRF_PROBES = ("http://169.254.169.254/latest/meta-data/", "file:///etc/shadow")


def is_remote(url: str) -> bool:
    return url.lower().startswith(("http://", "https://", "file://", "s3://"))


class DownloadRefused(Exception):
    """Raised by a DownloadAuth hook that cannot authenticate a download (no credentials); its
    text is shown to the client after the contract's download-failure message, so it never
    holds a secret."""


class DownloadAuth(Protocol):
    """Authenticates one download (``s3_sse_kms``: models/s3.py). Both methods run in the
    download thread, so they may block (credential files, instance metadata)."""

    def prepare(self, url: str) -> tuple[str, Mapping[str, str]]:
        """The http(s) URL to GET for ``url`` and the headers that authenticate the GET.

        Raises:
            DownloadRefused: the download cannot be authenticated.
        """
        ...

    def refusal(self, status: int, body: bytes) -> str:
        """Why the server refused the GET (status, start of the error body), safe to show."""
        ...


def check_allowed(url: str, allowed: tuple[str, ...]) -> None:
    """Raises ModelNotFound (contract text) unless a pattern matches the whole of ``url``,
    ignoring case, and it has no ``..`` path segment."""
    if not any(re.fullmatch(p, url, flags=re.IGNORECASE) for p in allowed):
        raise ModelNotFound(f"Given URL {url} does not match any allowed URL(s)")
    if ".." in urllib.parse.unquote(urllib.parse.urlparse(url).path).split("/"):
        raise ModelNotFound(f"Relative path is not allowed in url: {url}")


def warn_if_permissive(allowed: tuple[str, ...]) -> None:
    """Log a warning at start when ``allowed_urls`` would let register fetch anything."""
    open_to = [u for u in _SSRF_PROBES if any(re.fullmatch(p, u, re.IGNORECASE) for p in allowed)]
    if open_to:
        logger.warning(
            "allowed_urls (%s) lets model registration fetch any URL this server can reach, "
            "e.g. %s; set allowed_urls to the model sources you trust",
            ",".join(allowed),
            " and ".join(open_to),
        )


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to a URL ``allowed_urls`` admits, checked like the first one
    (urllib would otherwise follow any Location, to an internal host as readily as not)."""

    def __init__(self, allowed: tuple[str, ...], *, follow: bool = True) -> None:
        super().__init__()
        self.allowed = allowed
        self.follow = follow

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        if not self.follow:
            return None  # urllib then raises the 3xx as an HTTPError
        try:
            check_allowed(newurl, self.allowed)
        except ModelNotFound:
            fp.close()  # urllib closes the redirect's response only when it follows it
            raise
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def resolve_local(url: str, model_store: str | None) -> Path:
    """A local archive file or directory named by ``url``.

    Raises ModelNotFound with the contract's texts.
    """
    if ".." in Path(url).parts or "/../" in url or url.startswith("../"):
        raise ModelNotFound(f"Relative path is not allowed in url: {url}")
    candidate = Path(url)
    if candidate.is_absolute() and candidate.exists():
        return candidate
    if model_store is None:
        raise ModelNotFound("Model store has not been configured.")
    in_store = Path(model_store) / url
    if in_store.exists():
        return in_store
    if candidate.is_dir():
        return candidate.resolve()
    raise ModelNotFound(f"Model not found at: {url}")


def _download(
    url: str, target: Path, allowed: tuple[str, ...], auth: DownloadAuth | None = None
) -> None:
    """Fetch ``url`` into a temporary file beside ``target``, then move it over ``target``;
    streamed, within MAX_DOWNLOAD_BYTES and DOWNLOAD_TIMEOUT_S, redirects checked. With
    ``auth``, the GET carries its headers and a refusal is explained in the error."""
    request: str | urllib.request.Request = url
    if auth is not None:
        try:
            get_url, headers = auth.prepare(url)
        except DownloadRefused as exc:
            raise DownloadArchiveError(f"Failed to download archive from: {url}: {exc}") from None
        request = urllib.request.Request(get_url, headers=dict(headers))
    tmp_fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=".download-")
    # A signed request is never redirected: urllib would resend its Authorization and session
    # token to whatever host the Location names.
    opener = urllib.request.build_opener(_CheckedRedirects(allowed, follow=auth is None))
    deadline = time.monotonic() + DOWNLOAD_TIMEOUT_S
    try:
        with (
            os.fdopen(tmp_fd, "wb") as out,
            opener.open(request, timeout=READ_TIMEOUT_S) as response,
        ):
            # read1: one socket read at a time, so the deadline is checked while data trickles.
            read = getattr(response, "read1", response.read)
            total = 0
            while chunk := read(_READ_SIZE):
                total += len(chunk)
                if total > MAX_DOWNLOAD_BYTES:
                    raise OSError(f"download larger than {MAX_DOWNLOAD_BYTES} bytes")
                if time.monotonic() > deadline:
                    raise OSError(f"download took longer than {DOWNLOAD_TIMEOUT_S:.0f} s")
                out.write(chunk)
        os.replace(tmp_name, target)
    except urllib.error.HTTPError as exc:
        detail = auth.refusal(exc.code, _error_body(exc)) if auth is not None else None
        # An HTTP error carries the open response; close it rather than leak its socket.
        exc.close()
        with _suppress():
            os.unlink(tmp_name)
        if detail is not None:
            logger.warning("download of %s refused: %s", url, detail)
            raise DownloadArchiveError(
                f"Failed to download archive from: {url}: {detail}"
            ) from None
        raise
    except BaseException:
        with _suppress():
            os.unlink(tmp_name)
        raise


def _error_body(exc: urllib.error.HTTPError) -> bytes:
    try:
        return exc.read(MAX_ERROR_BODY_BYTES) or b""
    except (OSError, ValueError, AttributeError):  # no body, or the connection broke
        return b""


class _suppress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return True


async def fetch(
    url: str,
    model_store: str | None,
    allowed: tuple[str, ...],
    *,
    auth: DownloadAuth | None = None,
) -> tuple[Path, bool]:
    """Resolve ``url`` to a local path; returns (path, downloaded).

    Remote (http, https, file and, with ``auth``, s3) archives land in the model store under
    the basename of the URL's path. ``auth`` authenticates http(s) and s3 downloads; an s3://
    URL is checked against ``allowed`` as given, its http(s) form comes from server config.
    """
    if not url:
        raise ModelNotFound("empty url")
    if not is_remote(url):
        return resolve_local(url, model_store), False
    check_allowed(url, allowed)
    if url[:5].lower() == "file:":
        auth = None  # nothing to sign (TorchServe, too, signs only http(s) downloads)
    elif url[:3].lower() == "s3:" and auth is None:
        raise DownloadArchiveError(f"Failed to download archive from: {url}")
    parsed = urllib.parse.urlparse(url)
    if model_store is None:
        raise ModelNotFound("Model store has not been configured.")
    # file:// URLs are copied into the store like downloads (contract §2.2), so re-registering
    # one is "already exists" and unregister deletes the copy, never the original.
    name = os.path.basename(urllib.parse.unquote(parsed.path))
    if not name or name in (".", "..") or "\x00" in name:
        raise DownloadArchiveError(f"Failed to download archive from: {url}")
    target = Path(model_store) / name
    try:
        # Claim the name before downloading, atomically: two registers of one URL must not
        # both download it and then share (and delete) one file.
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    except FileExistsError:
        raise InternalServerError(f"Model file already exists {name}") from None
    except OSError as exc:
        raise DownloadArchiveError(f"Failed to download archive from: {url}") from exc
    try:
        await trio.to_thread.run_sync(_download, url, target, allowed, auth)
    except BaseException as exc:
        remove_download(target)
        if not isinstance(exc, Exception) or isinstance(exc, ServeError):
            raise  # a redirect allowed_urls refuses is answered like the URL it names
        logger.warning("download of %s failed: %s", url, exc)
        raise DownloadArchiveError(f"Failed to download archive from: {url}") from exc
    return target, True


def remove_download(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with _suppress():
            path.unlink()


def store_entries(model_store: str) -> list[Path]:
    """What ``load_models=all`` loads: non-hidden archives and directories, sorted."""
    out = []
    for entry in sorted(Path(model_store).iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir() or entry.name.endswith((".mar", ".model", ".tar.gz")):
            out.append(entry)
    return out
