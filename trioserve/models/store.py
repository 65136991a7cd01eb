"""Resolving a register ``url`` to a local archive: the model store, paths and downloads."""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

import trio

from trioserve.errors import DownloadArchiveError, InternalServerError, ModelNotFound

logger = logging.getLogger(__name__)

# Downloads larger than this are refused: an archive is extracted next, and a runaway download
# would fill the model store's disk first.
MAX_DOWNLOAD_BYTES = 16 * 1024**3
DOWNLOAD_TIMEOUT_S = 600.0


def is_remote(url: str) -> bool:
    return url.lower().startswith(("http://", "https://", "file://"))


def check_allowed(url: str, allowed: tuple[str, ...]) -> None:
    if not any(re.fullmatch(p, url, flags=re.IGNORECASE) for p in allowed):
        raise ModelNotFound(f"Given URL {url} does not match any allowed URL(s)")


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


def _download(url: str, target: Path) -> None:
    tmp_fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=".download-")
    try:
        with (
            os.fdopen(tmp_fd, "wb") as out,
            urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response,
        ):
            total = 0
            while chunk := response.read(1 << 20):
                total += len(chunk)
                if total > MAX_DOWNLOAD_BYTES:
                    raise OSError(f"download larger than {MAX_DOWNLOAD_BYTES} bytes")
                out.write(chunk)
        os.replace(tmp_name, target)
    except BaseException:
        with _suppress():
            os.unlink(tmp_name)
        raise


class _suppress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return True


async def fetch(url: str, model_store: str | None, allowed: tuple[str, ...]) -> tuple[Path, bool]:
    """Resolve ``url`` to a local path; returns (path, downloaded).

    Remote archives land in the model store under the URL's basename.
    """
    if not url:
        raise ModelNotFound("empty url")
    if not is_remote(url):
        return resolve_local(url, model_store), False
    check_allowed(url, allowed)
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        path = Path(urllib.parse.unquote(parsed.path))
        if ".." in path.parts:
            raise ModelNotFound(f"Relative path is not allowed in url: {url}")
        if not await trio.Path(path).exists():
            raise ModelNotFound(f"Model not found at: {url}")
        return path, False
    if model_store is None:
        raise ModelNotFound("Model store has not been configured.")
    name = os.path.basename(parsed.path)
    if not name or name in (".", ".."):
        raise DownloadArchiveError(f"Failed to download archive from: {url}")
    target = Path(model_store) / name
    if target.exists():
        raise InternalServerError(f"Model file already exists {name}")
    try:
        await trio.to_thread.run_sync(_download, url, target)
    except Exception as exc:
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
