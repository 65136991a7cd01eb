"""Management API (contract §2) against a running server with real worker processes."""

from __future__ import annotations

import dataclasses
import functools
import http.server
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import trio
from openapi_spec_validator import validate

from tests.conftest import LOCAL, Server, make_config, wait_until
from tests.support.models import (
    BROKEN_INIT_HANDLER,
    DESCRIBE_HANDLER,
    ECHO_HANDLER,
    INSPECT_HANDLER,
    SLOW_BROKEN_INIT_HANDLER,
    handler_archive,
    manifest,
    write_archive,
)
from trioserve.config import Address
from trioserve.errors import Conflict
from trioserve.models.archive import open_archive
from trioserve.models.model import ModelSettings, ModelVersion

DESCRIBE_KEYS = [
    "modelName",
    "modelVersion",
    "modelUrl",
    "runtime",
    "minWorkers",
    "maxWorkers",
    "batchSize",
    "maxBatchDelay",
    "responseTimeout",
    "startupTimeout",
    "maxRetryTimeoutInSec",
    "clientTimeoutInMills",
    "parallelType",
    "parallelLevel",
    "deviceType",
    "continuousBatching",
    "useJobTicket",
    "useVenv",
    "stateful",
    "sequenceMaxIdleMSec",
    "sequenceTimeoutMSec",
    "maxNumSequence",
    "maxSequenceJobQueueSize",
    "loadedAtStartup",
    "workers",
    "jobQueueStatus",
]
WORKER_KEYS = ["id", "startTime", "status", "memoryUsage", "pid", "gpu", "gpuUsage"]
START_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
NOT_FOUND_TEXT = "Requested resource is not found, please refer to API document."
NOT_ALLOWED_TEXT = "Requested method is not allowed, please refer to API document."


# -- helpers ------------------------------------------------------------------------------------
def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def status_text(text: str) -> str:
    """The exact bytes of a status body (contract §0.3)."""
    return '{\n  "status": ' + _quoted(text) + "\n}\n"


def error_text(code: int, type_name: str, message: str) -> str:
    """The exact bytes of an error body (contract §0.4)."""
    return f'{{\n  "code": {code},\n  "type": "{type_name}",\n  "message": {_quoted(message)}\n}}\n'


def assert_error(response: httpx.Response, code: int, type_name: str, message: str) -> None:
    assert response.status_code == code, response.text
    assert response.text == error_text(code, type_name, message)
    assert response.headers["content-type"] == "application/json"
    assert response.headers["connection"] == "close"


def assert_status(response: httpx.Response, code: int, text: str) -> None:
    assert response.status_code == code, response.text
    assert response.text == status_text(text)
    assert response.headers["content-type"] == "application/json"


async def register(server: Server, url: str, **params: str) -> httpx.Response:
    return await server.management.post("/models", params={"url": url, **params})


async def register_sync(server: Server, url: str, **params: str) -> httpx.Response:
    query = {"initial_workers": "1", "synchronous": "true", **params}
    return await register(server, url, **query)


async def describe(server: Server, path: str, **params: str) -> list[dict[str, Any]]:
    response = await server.management.get(path, params=params)
    assert response.status_code == 200, response.text
    body = response.json()
    assert isinstance(body, list)
    return body


async def workers(server: Server, path: str) -> list[dict[str, Any]]:
    body = await describe(server, path)
    found: list[dict[str, Any]] = body[0]["workers"]
    return found


async def wait_ready(server: Server, path: str, count: int) -> list[dict[str, Any]]:
    """Wait until describe shows exactly ``count`` workers, all READY."""

    async def ready() -> bool:
        found = await workers(server, path)
        return len(found) == count and all(w["status"] == "READY" for w in found)

    await wait_until(ready)
    return await workers(server, path)


def extractions(server: Server) -> list[Path]:
    root: Path = server.state.extract_root
    return sorted(root.iterdir()) if root.exists() else []


def names_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def reaped(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# -- a real HTTP server for URL registrations ---------------------------------------------------
@dataclass
class Remote:
    root: Path
    base: str
    requests: list[str] = field(default_factory=list)


@pytest.fixture
def remote(tmp_path: Path) -> Iterator[Remote]:
    """Serves ``tmp_path/remote`` over HTTP on 127.0.0.1 from a thread, recording each path."""
    root = tmp_path / "remote"
    root.mkdir()
    seen: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            seen.append(self.path)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(
        (LOCAL, 0), functools.partial(Handler, directory=str(root))
    )
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield Remote(root, f"http://{LOCAL}:{httpd.server_address[1]}", seen)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.fixture
async def own_port_server(server_factory: Any, model_store: Path) -> Server:
    """A server whose management API has a listener of its own (the ``server`` fixture shares
    one listener between all APIs, where inference routes win)."""
    with socket.socket() as probe:
        probe.bind((LOCAL, 0))
        port = probe.getsockname()[1]
    config = make_config(model_store, management_address=Address("http", LOCAL, port))
    server: Server = await server_factory(config)
    assert server.running.ports["management"] != server.running.ports["inference"]
    return server


# -- register: where the archive comes from ---------------------------------------------------
async def test_register_mar_in_store_with_zero_workers(server: Server, model_store: Path) -> None:
    handler_archive(model_store, "echo", ECHO_HANDLER)
    response = await register(server, "echo.mar")
    assert_status(
        response,
        200,
        'Model "echo" Version: 1.0 registered with 0 initial workers. '
        "Use scale workers API to add workers for the model.",
    )
    assert response.headers["connection"] == "keep-alive"
    [body] = await describe(server, "/models/echo")
    assert body["modelUrl"] == "echo.mar"
    assert body["minWorkers"] == 0
    assert body["maxWorkers"] == 0
    assert body["workers"] == []
    assert len(extractions(server)) == 1


async def test_register_tar_gz_synchronously(server: Server, model_store: Path) -> None:
    handler_archive(model_store, "echo", ECHO_HANDLER, fmt="tgz")
    response = await register_sync(server, "echo.tar.gz")
    assert_status(response, 200, 'Model "echo" Version: 1.0 registered with 1 initial workers')
    [worker] = await workers(server, "/models/echo")
    assert worker["status"] == "READY"
    prediction = await server.inference.post("/predictions/echo", content=b"from tgz")
    assert prediction.content == b"from tgz"
    [body] = await describe(server, "/models/echo")
    assert body["modelUrl"] == "echo.tar.gz"


async def test_register_directory_absolute_and_in_store(
    server: Server, model_store: Path, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    absolute = handler_archive(elsewhere, "far", ECHO_HANDLER, fmt="dir")
    handler_archive(model_store, "near", ECHO_HANDLER, fmt="dir")
    response = await register_sync(server, str(absolute))
    assert_status(response, 200, 'Model "far" Version: 1.0 registered with 1 initial workers')
    response = await register_sync(server, "near")
    assert_status(response, 200, 'Model "near" Version: 1.0 registered with 1 initial workers')
    assert (await server.inference.post("/predictions/far", content=b"a")).content == b"a"
    assert (await server.inference.post("/predictions/near", content=b"b")).content == b"b"
    assert (await describe(server, "/models/far"))[0]["modelUrl"] == str(absolute)
    assert (await describe(server, "/models/near"))[0]["modelUrl"] == "near"
    # A directory is used in place: nothing is extracted, and unregister leaves it alone.
    assert extractions(server) == []
    assert_status(await server.management.delete("/models/far"), 200, 'Model "far" unregistered')
    assert (absolute / "handler.py").is_file()
    assert (model_store / "near" / "MAR-INF" / "MANIFEST.json").is_file()


async def test_register_file_url_copies_into_store(
    server: Server, model_store: Path, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    path = handler_archive(elsewhere, "echo", ECHO_HANDLER, filename="far-echo.mar")
    url = f"file://{path}"
    response = await register_sync(server, url)
    assert_status(response, 200, 'Model "echo" Version: 1.0 registered with 1 initial workers')
    assert (await describe(server, "/models/echo"))[0]["modelUrl"] == url
    assert (await server.inference.post("/predictions/echo", content=b"f")).content == b"f"
    # Like a download: copied into the store under its basename (contract §2.2) ...
    assert names_in(model_store) == ["far-echo.mar"]
    again = await register(server, url, model_name="other")
    assert_error(again, 500, "InternalServerException", "Model file already exists far-echo.mar")
    # ... and the copy, never the original, is deleted on unregister.
    assert_status(await server.management.delete("/models/echo"), 200, 'Model "echo" unregistered')
    assert names_in(model_store) == []
    assert path.is_file()
    missing = f"file://{elsewhere}/missing.mar"
    response = await register(server, missing)
    assert_error(
        response, 400, "DownloadArchiveException", f"Failed to download archive from: {missing}"
    )
    assert names_in(model_store) == []


async def test_register_http_url_downloads_into_store_and_unregister_deletes(
    server: Server, model_store: Path, remote: Remote
) -> None:
    handler_archive(remote.root, "echo", ECHO_HANDLER, filename="remote-echo.mar")
    url = f"{remote.base}/remote-echo.mar"
    response = await register_sync(server, url)
    assert_status(response, 200, 'Model "echo" Version: 1.0 registered with 1 initial workers')
    assert remote.requests == ["/remote-echo.mar"]
    assert names_in(model_store) == ["remote-echo.mar"]
    assert (await describe(server, "/models/echo"))[0]["modelUrl"] == url
    assert (await server.inference.post("/predictions/echo", content=b"h")).content == b"h"
    listing = await server.management.get("/models")
    assert listing.json() == {"models": [{"modelName": "echo", "modelUrl": url}]}
    assert_status(await server.management.delete("/models/echo"), 200, 'Model "echo" unregistered')
    assert names_in(model_store) == []
    assert extractions(server) == []


async def test_unregister_deletes_download_of_url_with_query(
    server: Server, model_store: Path, remote: Remote
) -> None:
    handler_archive(remote.root, "echo", ECHO_HANDLER)
    url = f"{remote.base}/echo.mar?signature=abc"
    assert (await register(server, url)).status_code == 200
    assert names_in(model_store) == ["echo.mar"]
    assert (await describe(server, "/models/echo"))[0]["modelUrl"] == url
    assert_status(await server.management.delete("/models/echo"), 200, 'Model "echo" unregistered')
    assert names_in(model_store) == []


async def test_reregister_same_http_url_is_file_exists(
    server: Server, model_store: Path, remote: Remote
) -> None:
    handler_archive(remote.root, "echo", ECHO_HANDLER)
    url = f"{remote.base}/echo.mar"
    assert (await register(server, url)).status_code == 200
    again = await register(server, url, model_name="other")
    assert_error(again, 500, "InternalServerException", "Model file already exists echo.mar")
    assert remote.requests == ["/echo.mar"]  # refused before downloading again
    assert names_in(model_store) == ["echo.mar"]
    # Once unregistered (and the download deleted) the URL registers again.
    assert (await server.management.delete("/models/echo")).status_code == 200
    assert (await register(server, url)).status_code == 200
    assert remote.requests == ["/echo.mar", "/echo.mar"]


async def test_concurrent_registers_of_one_url_download_once(
    server: Server, model_store: Path, remote: Remote
) -> None:
    handler_archive(remote.root, "echo", ECHO_HANDLER)
    url = f"{remote.base}/echo.mar"
    responses: list[httpx.Response] = []

    async def one(name: str) -> None:
        responses.append(await register(server, url, model_name=name))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one, "first")
        nursery.start_soon(one, "second")
    codes = sorted(r.status_code for r in responses)
    assert codes == [200, 500], [r.text for r in responses]
    [refused] = [r for r in responses if r.status_code == 500]
    assert_error(refused, 500, "InternalServerException", "Model file already exists echo.mar")
    assert remote.requests == ["/echo.mar"]
    # The winner's download stays in the store until it is unregistered.
    assert names_in(model_store) == ["echo.mar"]
    [listed] = (await server.management.get("/models")).json()["models"]
    assert_status(
        await server.management.delete(f"/models/{listed['modelName']}"),
        200,
        f'Model "{listed["modelName"]}" unregistered',
    )
    assert names_in(model_store) == []


async def test_download_failure_is_download_archive_exception(
    server: Server, model_store: Path, remote: Remote
) -> None:
    url = f"{remote.base}/missing.mar"
    response = await register(server, url)
    assert_error(
        response, 400, "DownloadArchiveException", f"Failed to download archive from: {url}"
    )
    assert remote.requests == ["/missing.mar"]
    assert names_in(model_store) == []


async def test_downloaded_invalid_archive_is_removed(
    server: Server, model_store: Path, remote: Remote
) -> None:
    (remote.root / "junk.mar").write_bytes(b"this is not a zip file")
    response = await register(server, f"{remote.base}/junk.mar")
    assert response.status_code == 400
    assert response.json()["type"] == "InvalidModelException"
    assert response.json()["message"].startswith("junk.mar is not a valid model archive")
    assert names_in(model_store) == []
    assert extractions(server) == []


async def test_downloaded_duplicate_version_is_removed(
    server: Server, model_store: Path, remote: Remote
) -> None:
    handler_archive(model_store, "echo", ECHO_HANDLER)
    handler_archive(remote.root, "echo", ECHO_HANDLER, filename="copy.mar")
    assert (await register(server, "echo.mar")).status_code == 200
    response = await register(server, f"{remote.base}/copy.mar")
    assert_error(
        response,
        409,
        "ConflictStatusException",
        "Model version 1.0 is already registered for model echo",
    )
    assert names_in(model_store) == ["echo.mar"]
    assert len(extractions(server)) == 1


async def test_allowed_urls_restrict_remote_urls(
    server_factory: Any, model_store: Path, remote: Remote, tmp_path: Path
) -> None:
    allowed = re.escape(remote.base) + r"/allowed/.*"
    server: Server = await server_factory(make_config(model_store, allowed_urls=(allowed,)))
    (remote.root / "allowed").mkdir()
    handler_archive(remote.root / "allowed", "good", ECHO_HANDLER)
    handler_archive(remote.root, "bad", ECHO_HANDLER)
    handler_archive(model_store, "local", ECHO_HANDLER)
    refused = [f"{remote.base}/bad.mar", f"file://{remote.root}/bad.mar"]
    for url in refused:
        response = await register(server, url)
        assert_error(
            response,
            404,
            "ModelNotFoundException",
            f"Given URL {url} does not match any allowed URL(s)",
        )
    assert remote.requests == []
    assert (await register(server, f"{remote.base}/allowed/good.mar")).status_code == 200
    # The patterns are matched case-insensitively.
    upper = f"{remote.base}/ALLOWED/good.mar".replace("http://", "HTTP://")
    response = await register(server, upper)
    assert_error(response, 500, "InternalServerException", "Model file already exists good.mar")
    # Model-store names are not URLs and are not restricted.
    assert (await register(server, "local.mar")).status_code == 200


@pytest.mark.parametrize(
    "url",
    ["../echo.mar", "sub/../echo.mar", "file:///tmp/../echo.mar", "http://127.0.0.1:1/a/../e.mar"],
)
async def test_relative_path_in_url_is_refused(server: Server, model_store: Path, url: str) -> None:
    handler_archive(model_store, "echo", ECHO_HANDLER)
    response = await register(server, url)
    assert_error(
        response, 404, "ModelNotFoundException", f"Relative path is not allowed in url: {url}"
    )
    assert names_in(model_store) == ["echo.mar"]


async def test_register_parameter_errors(server: Server, model_store: Path) -> None:
    handler_archive(model_store, "echo", ECHO_HANDLER)
    missing = await server.management.post("/models", params={"model_name": "echo"})
    assert_error(missing, 400, "BadRequestException", "Parameter url is required.")
    empty = await register(server, "")
    assert_error(empty, 404, "ModelNotFoundException", "empty url")
    absent = await register(server, "nope.mar")
    assert_error(absent, 404, "ModelNotFoundException", "Model not found at: nope.mar")
    runtime = await register(server, "echo.mar", runtime="x")
    assert_error(runtime, 400, "BadRequestException", "Invalid RuntimeType value: x")
    # Runtime names are case-sensitive.
    runtime = await register(server, "echo.mar", runtime="PYTHON")
    assert_error(runtime, 400, "BadRequestException", "Invalid RuntimeType value: PYTHON")
    listing = await server.management.get("/models")
    assert listing.text == '{\n  "models": []\n}\n'
    assert extractions(server) == []


async def test_register_duplicate_version_is_conflict(server: Server, model_store: Path) -> None:
    handler_archive(model_store, "echo", ECHO_HANDLER)
    handler_archive(model_store, "echo", ECHO_HANDLER, filename="again.mar")
    assert (await register(server, "echo.mar")).status_code == 200
    response = await register(server, "again.mar")
    assert_error(
        response,
        409,
        "ConflictStatusException",
        "Model version 1.0 is already registered for model echo",
    )
    assert (await describe(server, "/models/echo"))[0]["modelUrl"] == "echo.mar"
    assert len(extractions(server)) == 1


async def test_concurrent_adds_of_one_version_admit_one(server: Server, model_store: Path) -> None:
    """Two registers of one name and version racing into the registry: one wins, the other is
    a conflict, and the winner stays reachable (none is overwritten and leaked)."""
    state = server.state
    directory = handler_archive(model_store, "echo", ECHO_HANDLER, fmt="dir")

    def version() -> ModelVersion:
        archive = open_archive(directory, state.extract_root)
        return ModelVersion(
            "echo",
            "1.0",
            "echo",
            archive,
            ModelSettings(),
            next_worker_id=state.registry.next_worker_id,
        )

    first, second = version(), version()
    outcomes: list[str] = []

    async def add(model: ModelVersion) -> None:
        try:
            await state.registry.add(model)
            outcomes.append("added")
        except Conflict as exc:
            outcomes.append(str(exc.message))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(add, first)
        nursery.start_soon(add, second)
    assert sorted(outcomes) == ["Model version 1.0 is already registered for model echo", "added"]
    winner = state.registry.resolve("echo", "1.0")
    loser = second if winner is first else first
    assert winner in (first, second)
    assert loser._nursery is None  # the loser was refused before it started
    assert_status(await server.management.delete("/models/echo"), 200, 'Model "echo" unregistered')
    assert winner.stopped.is_set()
    assert "echo" not in state.registry.models


async def test_register_model_name_and_runtime_override(server: Server, model_store: Path) -> None:
    handler_archive(model_store, "echo", ECHO_HANDLER)
    response = await register_sync(server, "echo.mar", model_name="renamed", runtime="python3")
    assert_status(response, 200, 'Model "renamed" Version: 1.0 registered with 1 initial workers')
    [body] = await describe(server, "/models/renamed")
    assert body["modelName"] == "renamed"
    assert body["runtime"] == "python3"
    assert (await server.inference.post("/predictions/renamed", content=b"r")).content == b"r"
    assert (await server.management.get("/models/echo")).status_code == 404


async def test_register_handler_override(server: Server, model_store: Path) -> None:
    write_archive(
        model_store,
        "two.mar",
        {
            "handler.py": ECHO_HANDLER,
            "reporter.py": INSPECT_HANDLER,
            "MAR-INF/MANIFEST.json": manifest("two", "handler.py"),
        },
    )
    assert (await register_sync(server, "two.mar")).status_code == 200
    assert (await server.inference.post("/predictions/two", content=b"plain")).content == b"plain"
    assert (await server.management.delete("/models/two")).status_code == 200
    response = await register_sync(server, "two.mar", handler="reporter:handle")
    assert response.status_code == 200, response.text
    reported = await server.inference.post("/predictions/two", content=b"plain")
    assert reported.json()["values"] == {"body": "plain"}


async def test_register_archive_without_model_name(server: Server, model_store: Path) -> None:
    write_archive(
        model_store,
        "nameless.mar",
        {"handler.py": ECHO_HANDLER, "MAR-INF/MANIFEST.json": manifest(None, "handler.py")},
    )
    response = await register(server, "nameless.mar")
    assert_error(response, 400, "BadRequestException", "Model name is not defined.")
    assert extractions(server) == []
    response = await register_sync(server, "nameless.mar", model_name="named")
    assert_status(response, 200, 'Model "named" Version: 1.0 registered with 1 initial workers')


async def test_register_directory_without_manifest(server: Server, model_store: Path) -> None:
    write_archive(model_store, "bare", {"handler.py": ECHO_HANDLER}, fmt="dir")
    response = await register_sync(server, "bare", model_name="bare", handler="handler:handle")
    assert_status(response, 200, 'Model "bare" Version: 1.0 registered with 1 initial workers')
    assert (await server.inference.post("/predictions/bare", content=b"b")).content == b"b"


async def test_register_invalid_manifest(server: Server, model_store: Path) -> None:
    write_archive(model_store, "bad.mar", {"MAR-INF/MANIFEST.json": '{"runtime": "python"}'})
    response = await register(server, "bad.mar")
    assert_error(response, 400, "InvalidModelException", "Missing Model entry in manifest file.")
    assert extractions(server) == []


async def test_register_without_model_store(
    server_factory: Any, model_store: Path, remote: Remote
) -> None:
    config = dataclasses.replace(make_config(model_store), model_store=None)
    server: Server = await server_factory(config)
    handler_archive(remote.root, "echo", ECHO_HANDLER)
    for url in ("echo.mar", f"{remote.base}/echo.mar"):
        response = await register(server, url)
        assert_error(
            response, 404, "ModelNotFoundException", "Model store has not been configured."
        )
    assert remote.requests == []


# -- register: settings and worker start ---------------------------------------------------------
async def test_register_settings_show_in_describe(server: Server, model_store: Path) -> None:
    handler_archive(model_store, "echo", ECHO_HANDLER)
    response = await register_sync(
        server,
        "echo.mar",
        batch_size="4",
        max_batch_delay="250",
        response_timeout="7",
        startup_timeout="9",
        initial_workers="2",
    )
    assert_status(response, 200, 'Model "echo" Version: 1.0 registered with 2 initial workers')
    [body] = await describe(server, "/models/echo")
    assert body["minWorkers"] == 2
    assert body["maxWorkers"] == 2
    assert body["batchSize"] == 4
    assert body["maxBatchDelay"] == 250
    assert body["responseTimeout"] == 7
    assert body["startupTimeout"] == 9
    assert [w["status"] for w in body["workers"]] == ["READY", "READY"]
    assert len({w["pid"] for w in body["workers"]}) == 2


async def test_non_integer_parameters_fall_back_to_defaults(
    server: Server, model_store: Path
) -> None:
    handler_archive(model_store, "echo", ECHO_HANDLER)
    response = await register(
        server,
        "echo.mar",
        batch_size="four",
        max_batch_delay="1.5",
        response_timeout="soon",
        initial_workers="x",
    )
    assert_status(
        response,
        200,
        'Model "echo" Version: 1.0 registered with 0 initial workers. '
        "Use scale workers API to add workers for the model.",
    )
    [body] = await describe(server, "/models/echo")
    assert body["batchSize"] == 1
    assert body["maxBatchDelay"] == 100
    assert body["responseTimeout"] == 30  # the test config's default_response_timeout
    assert body["startupTimeout"] == 60
    assert body["minWorkers"] == 0


async def test_register_is_asynchronous_by_default(server: Server, model_store: Path) -> None:
    handler_archive(model_store, "echo", ECHO_HANDLER)
    response = await register(server, "echo.mar", initial_workers="1")
    assert_status(response, 202, "Processing worker updates...")
    assert response.headers["connection"] == "keep-alive"
    # Registered at once; the worker becomes READY in the background.
    [body] = await describe(server, "/models/echo")
    assert body["minWorkers"] == 1
    await wait_ready(server, "/models/echo", 1)
    assert (await server.inference.post("/predictions/echo", content=b"late")).content == b"late"


async def test_synchronous_other_than_true_is_asynchronous(
    server: Server, model_store: Path
) -> None:
    handler_archive(model_store, "echo", ECHO_HANDLER)
    response = await register(server, "echo.mar", initial_workers="1", synchronous="-1")
    assert_status(response, 202, "Processing worker updates...")
    await wait_ready(server, "/models/echo", 1)


async def test_zero_workers_regardless_of_synchronous(server: Server, model_store: Path) -> None:
    handler_archive(model_store, "a", ECHO_HANDLER)
    handler_archive(model_store, "b", ECHO_HANDLER)
    zero = " registered with 0 initial workers. Use scale workers API to add workers for the model."
    response = await register(server, "a.mar", initial_workers="0", synchronous="true")
    assert_status(response, 200, 'Model "a" Version: 1.0' + zero)
    response = await register(server, "b.mar", initial_workers="-1")
    assert_status(response, 200, 'Model "b" Version: 1.0' + zero)
    no_worker = await server.inference.post("/predictions/a", content=b"x")
    assert no_worker.status_code == 503


async def test_sync_register_with_failing_initialize_unregisters(
    server: Server, model_store: Path
) -> None:
    handler_archive(model_store, "broken", BROKEN_INIT_HANDLER)
    response = await register_sync(server, "broken.mar")
    assert_error(
        response,
        500,
        "InternalServerException",
        "Failed to start workers for model broken version: 1.0",
    )
    gone = await server.management.get("/models/broken")
    assert_error(gone, 404, "ModelNotFoundException", "Model not found: broken")
    assert (await server.management.get("/models")).json() == {"models": []}
    assert extractions(server) == []
    # The name is free again.
    assert (await register(server, "broken.mar")).status_code == 200


async def test_failed_sync_register_of_default_hands_default_on(
    server: Server, model_store: Path
) -> None:
    handler_archive(model_store, "m", SLOW_BROKEN_INIT_HANDLER, filename="m1.mar")
    handler_archive(model_store, "m", ECHO_HANDLER, version="2.0", filename="m2.mar")
    failed: list[httpx.Response] = []

    async def first() -> None:
        failed.append(await register_sync(server, "m1.mar"))

    async def registered() -> bool:
        return (await server.management.get("/models/m")).status_code == 200

    async with trio.open_nursery() as nursery:
        nursery.start_soon(first)
        await wait_until(registered, limit_s=10)
        # 1.0 is the default while its worker is still loading; 2.0 arrives meanwhile.
        assert (await register(server, "m2.mar")).status_code == 200
        assert failed == []
    [response] = failed
    assert_error(
        response, 500, "InternalServerException", "Failed to start workers for model m version: 1.0"
    )
    assert [b["modelVersion"] for b in await describe(server, "/models/m")] == ["2.0"]
    listing = (await server.management.get("/models")).json()
    assert listing == {"models": [{"modelName": "m", "modelUrl": "m2.mar"}]}
    gone = await server.management.get("/models/m/1.0")
    assert_error(
        gone, 404, "ModelVersionNotFoundException", "Model version: 1.0 does not exist for model: m"
    )


async def test_register_with_json_body(server: Server, model_store: Path) -> None:
    handler_archive(model_store, "echo", ECHO_HANDLER)
    body = {
        "url": "echo.mar",
        "model_name": "jsoned",
        "initial_workers": 1,
        "synchronous": True,
        "batch_size": 2,
        "response_timeout": 11,
    }
    response = await server.management.post("/models", json=body)
    assert_status(response, 200, 'Model "jsoned" Version: 1.0 registered with 1 initial workers')
    [described] = await describe(server, "/models/jsoned")
    assert described["batchSize"] == 2
    assert described["maxBatchDelay"] == 100  # not TorchServe's -10000 (quirk 9)
    assert described["responseTimeout"] == 11
    assert [w["status"] for w in described["workers"]] == ["READY"]
    missing = await server.management.post("/models", json={"model_name": "x"})
    assert_error(missing, 400, "BadRequestException", "Parameter url is required.")


async def test_model_api_disabled_refuses_register_and_unregister(
    server_factory: Any, model_store: Path
) -> None:
    server: Server = await server_factory(make_config(model_store, enable_model_api=False))
    handler_archive(model_store, "echo", ECHO_HANDLER)
    assert_error(
        await register(server, "echo.mar"), 405, "MethodNotAllowedException", NOT_ALLOWED_TEXT
    )
    for path in ("/models/echo", "/models/echo/1.0"):
        response = await server.management.delete(path)
        assert_error(response, 405, "MethodNotAllowedException", NOT_ALLOWED_TEXT)
    listing = await server.management.get("/models")
    assert listing.status_code == 200
    assert listing.json() == {"models": []}


# -- scale ----------------------------------------------------------------------------------------
async def test_scale_asynchronously_then_up_and_down(server: Server, model_store: Path) -> None:
    handler_archive(model_store, "echo", ECHO_HANDLER)
    assert (await register_sync(server, "echo.mar")).status_code == 200
    [first] = await workers(server, "/models/echo")
    response = await server.management.put("/models/echo", params={"min_worker": "3"})
    assert_status(response, 202, "Processing worker updates...")
    three = await wait_ready(server, "/models/echo", 3)
    assert len({w["pid"] for w in three}) == 3
    assert [w["id"] for w in three] == ["9000", "9001", "9002"]
    assert three[0]["pid"] == first["pid"]
    [body] = await describe(server, "/models/echo")
    assert (body["minWorkers"], body["maxWorkers"]) == (3, 3)

    response = await server.management.put(
        "/models/echo", params={"min_worker": "1", "synchronous": "true"}
    )
    assert_status(response, 200, "Workers scaled to 1 for model: echo")
    # The newest workers go; the first one stays and keeps serving.
    [kept] = await workers(server, "/models/echo")
    assert kept["pid"] == first["pid"]
    # A synchronous scale-down answers once the retired processes are gone.
    assert all(reaped(w["pid"]) for w in three[1:])
    assert (await server.inference.post("/predictions/echo", content=b"1")).content == b"1"

    # An asynchronous scale-down drops the retired worker from describe at once.
    response = await server.management.put("/models/echo", params={"min_worker": "2"})
    assert response.status_code == 202
    [kept, added] = await wait_ready(server, "/models/echo", 2)
    response = await server.management.put("/models/echo", params={"min_worker": "1"})
    assert_status(response, 202, "Processing worker updates...")
    assert [w["pid"] for w in await workers(server, "/models/echo")] == [kept["pid"]]
    await wait_until(lambda: _reaped_async(added["pid"]))


async def _reaped_async(pid: int) -> bool:
    return reaped(pid)


async def test_scale_synchronously_with_version(server: Server, model_store: Path) -> None:
    handler_archive(model_store, "echo", ECHO_HANDLER)
    assert (await register(server, "echo.mar")).status_code == 200
    # A non-integer min_worker counts as 1.
    response = await server.management.put(
        "/models/echo/1.0", params={"min_worker": "two", "synchronous": "true"}
    )
    assert_status(response, 200, "Workers scaled to 1 for model: echo, version: 1.0")
    response = await server.management.put(
        "/models/echo/1.0", params={"min_worker": "2", "synchronous": "true"}
    )
    assert_status(response, 200, "Workers scaled to 2 for model: echo, version: 1.0")
    found = await workers(server, "/models/echo/1.0")
    assert [w["status"] for w in found] == ["READY", "READY"]
    [body] = await describe(server, "/models/echo")
    assert (body["minWorkers"], body["maxWorkers"]) == (2, 2)


async def test_scale_to_zero(server: Server, model_store: Path) -> None:
    handler_archive(model_store, "echo", ECHO_HANDLER)
    assert (await register_sync(server, "echo.mar")).status_code == 200
    [worker] = await workers(server, "/models/echo")
    response = await server.management.put(
        "/models/echo", params={"min_worker": "0", "synchronous": "true"}
    )
    assert_status(response, 200, "Workers scaled to 0 for model: echo")
    assert await workers(server, "/models/echo") == []
    assert reaped(worker["pid"])
    prediction = await server.inference.post("/predictions/echo", content=b"x")
    assert prediction.status_code == 503
    assert prediction.json()["type"] == "ServiceUnavailableException"


async def test_scale_parameter_errors(server: Server, model_store: Path) -> None:
    handler_archive(model_store, "echo", ECHO_HANDLER)
    assert (await register(server, "echo.mar")).status_code == 200
    bad = "max_worker cannot be less than min_worker."
    for params in ({"min_worker": "2", "max_worker": "1"}, {"max_worker": "-1"}):
        response = await server.management.put("/models/echo", params=params)
        assert_error(response, 400, "BadRequestException", bad)
    negative = await server.management.put("/models/echo", params={"min_worker": "-1"})
    assert negative.status_code == 500
    assert negative.json()["type"] == "InternalServerException"
    unknown = await server.management.put("/models/nope", params={"min_worker": "1"})
    assert_error(unknown, 404, "ModelNotFoundException", "Model not found: nope")
    version = await server.management.put("/models/echo/9.9", params={"min_worker": "1"})
    assert_error(
        version,
        404,
        "ModelVersionNotFoundException",
        "Model version: 9.9 does not exist for model: echo",
    )
    query = await server.management.put("/models/echo", params={"model_version": "9.9"})
    assert_error(
        query,
        404,
        "ModelVersionNotFoundException",
        "Model version: 9.9 does not exist for model: echo",
    )
    # Nothing was scaled by the refused requests.
    [body] = await describe(server, "/models/echo")
    assert (body["minWorkers"], body["maxWorkers"], body["workers"]) == (0, 0, [])


async def test_scale_model_version_query_fallback(server: Server, model_store: Path) -> None:
    handler_archive(model_store, "echo", ECHO_HANDLER, filename="echo1.mar")
    handler_archive(model_store, "echo", ECHO_HANDLER, version="2.0", filename="echo2.mar")
    assert (await register(server, "echo1.mar")).status_code == 200
    assert (await register(server, "echo2.mar")).status_code == 200
    response = await server.management.put(
        "/models/echo", params={"model_version": "2.0", "min_worker": "1", "synchronous": "true"}
    )
    assert_status(response, 200, "Workers scaled to 1 for model: echo, version: 2.0")
    assert len(await workers(server, "/models/echo/2.0")) == 1
    assert await workers(server, "/models/echo/1.0") == []


async def test_sync_scale_failure_names_null_version(server: Server, model_store: Path) -> None:
    handler_archive(model_store, "broken", BROKEN_INIT_HANDLER)
    assert (await register(server, "broken.mar")).status_code == 200
    response = await server.management.put(
        "/models/broken", params={"min_worker": "1", "synchronous": "true"}
    )
    assert_error(
        response,
        500,
        "InternalServerException",
        "Failed to start workers for model broken version: null",
    )
    response = await server.management.put(
        "/models/broken/1.0", params={"min_worker": "1", "synchronous": "true"}
    )
    assert_error(
        response,
        500,
        "InternalServerException",
        "Failed to start workers for model broken version: 1.0",
    )


# -- describe -------------------------------------------------------------------------------------
async def test_describe_keys_values_and_workers(server: Server, model_store: Path) -> None:
    handler_archive(model_store, "echo", ECHO_HANDLER)
    assert (await register_sync(server, "echo.mar")).status_code == 200
    response = await server.management.get("/models/echo")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.text.startswith('[\n  {\n    "modelName": "echo",\n')
    assert response.text.endswith("\n]\n")
    [body] = response.json()
    assert list(body.keys()) == DESCRIBE_KEYS
    [worker] = body.pop("workers")
    assert body == {
        "modelName": "echo",
        "modelVersion": "1.0",
        "modelUrl": "echo.mar",
        "runtime": "python",
        "minWorkers": 1,
        "maxWorkers": 1,
        "batchSize": 1,
        "maxBatchDelay": 100,
        "responseTimeout": 30,
        "startupTimeout": 60,
        "maxRetryTimeoutInSec": 300,
        "clientTimeoutInMills": 0,
        "parallelType": "",
        "parallelLevel": 0,
        "deviceType": "cpu",
        "continuousBatching": False,
        "useJobTicket": False,
        "useVenv": False,
        "stateful": False,
        "sequenceMaxIdleMSec": 0,
        "sequenceTimeoutMSec": 0,
        "maxNumSequence": 0,
        "maxSequenceJobQueueSize": 0,
        "loadedAtStartup": False,
        "jobQueueStatus": {"remainingCapacity": 100, "pendingRequests": 0},
    }
    assert list(worker.keys()) == WORKER_KEYS
    assert worker["id"] == "9000"
    assert START_TIME.fullmatch(worker["startTime"])
    assert worker["status"] == "READY"
    assert isinstance(worker["memoryUsage"], int)
    assert worker["memoryUsage"] >= 0
    assert psutil.Process(worker["pid"]).is_running()
    assert worker["gpu"] is False
    assert worker["gpuUsage"] == "N/A"


async def test_describe_versions_and_all(server: Server, model_store: Path) -> None:
    handler_archive(model_store, "echo", ECHO_HANDLER, version="10.0", filename="echo10.mar")
    handler_archive(model_store, "echo", ECHO_HANDLER, version="2.0", filename="echo2.mar")
    assert (await register(server, "echo10.mar")).status_code == 200
    assert (await register(server, "echo2.mar")).status_code == 200
    default = await describe(server, "/models/echo")
    assert [b["modelVersion"] for b in default] == ["10.0"]
    one = await describe(server, "/models/echo/2.0")
    assert [(b["modelVersion"], b["modelUrl"]) for b in one] == [("2.0", "echo2.mar")]
    every = await describe(server, "/models/echo/all")
    assert [b["modelVersion"] for b in every] == ["2.0", "10.0"]
    assert all(list(b.keys()) == DESCRIBE_KEYS for b in every)
    # A trailing slash is dropped (contract §0.1).
    assert [b["modelVersion"] for b in await describe(server, "/models/echo/")] == ["10.0"]
    unknown = await server.management.get("/models/nope")
    assert_error(unknown, 404, "ModelNotFoundException", "Model not found: nope")
    unknown_all = await server.management.get("/models/nope/all")
    assert_error(unknown_all, 404, "ModelNotFoundException", "Model not found: nope")
    version = await server.management.get("/models/echo/9.9")
    assert_error(
        version,
        404,
        "ModelVersionNotFoundException",
        "Model version: 9.9 does not exist for model: echo",
    )


async def test_describe_customized_metadata_is_a_json_string(
    server: Server, model_store: Path
) -> None:
    handler_archive(model_store, "desc", DESCRIBE_HANDLER)
    assert (await register_sync(server, "desc.mar")).status_code == 200
    [body] = await describe(server, "/models/desc", customized="true")
    assert list(body.keys()) == [*DESCRIBE_KEYS, "customizedMetadata"]
    # As the docs show it: the handler's output as a JSON string, not an object.
    assert body["customizedMetadata"] == '{\n  "data1": "1",\n  "data2": "2"\n}'
    versioned = await describe(server, "/models/desc/1.0", customized="true")
    assert versioned[0]["customizedMetadata"] == body["customizedMetadata"]
    # Not with /all, and not without customized=true.
    every = await describe(server, "/models/desc/all", customized="true")
    assert "customizedMetadata" not in every[0]
    plain = await describe(server, "/models/desc", customized="false")
    assert "customizedMetadata" not in plain[0]


async def test_describe_customized_without_metadata_omits_key(
    server: Server, model_store: Path
) -> None:
    handler_archive(model_store, "echo", ECHO_HANDLER)
    assert (await register_sync(server, "echo.mar")).status_code == 200
    [body] = await describe(server, "/models/echo", customized="true")
    assert list(body.keys()) == DESCRIBE_KEYS


async def test_describe_customized_without_workers_is_503(
    server: Server, model_store: Path
) -> None:
    handler_archive(model_store, "desc", DESCRIBE_HANDLER)
    assert (await register(server, "desc.mar")).status_code == 200
    response = await server.management.get("/models/desc", params={"customized": "true"})
    assert_error(
        response,
        503,
        "ServiceUnavailableException",
        'Model "desc" has no worker to serve describe request. '
        "Please use scale workers API to add workers.",
    )


async def test_describe_job_queue_status(server_factory: Any, model_store: Path) -> None:
    server: Server = await server_factory(make_config(model_store, job_queue_size=7))
    handler_archive(model_store, "slow", INSPECT_HANDLER)
    assert (await register_sync(server, "slow.mar", max_batch_delay="1")).status_code == 200
    [body] = await describe(server, "/models/slow")
    assert body["jobQueueStatus"] == {"remainingCapacity": 7, "pendingRequests": 0}

    async def predict() -> None:
        r = await server.inference.post("/predictions/slow", content=b"z", headers={"x-sleep": "1"})
        assert r.status_code == 200

    async def two_pending() -> bool:
        [b] = await describe(server, "/models/slow")
        return bool(b["jobQueueStatus"]["pendingRequests"] == 2)

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(predict)
        # One request is in the worker; two wait in the queue.
        await wait_until(two_pending, limit_s=10)
        [body] = await describe(server, "/models/slow")
        assert body["jobQueueStatus"] == {"remainingCapacity": 5, "pendingRequests": 2}
    [body] = await describe(server, "/models/slow")
    assert body["jobQueueStatus"] == {"remainingCapacity": 7, "pendingRequests": 0}


# -- list -----------------------------------------------------------------------------------------
def list_text(names: list[str], token: str | None) -> str:
    """The exact list body (contract §2.5) for models registered from ``{name}.mar``."""
    head = f'{{\n  "nextPageToken": "{token}",\n' if token is not None else "{\n"
    if not names:
        return head + '  "models": []\n}\n'
    items = ",\n".join(
        f'    {{\n      "modelName": "{n}",\n      "modelUrl": "{n}.mar"\n    }}' for n in names
    )
    return head + '  "models": [\n' + items + "\n  ]\n}\n"


@pytest.mark.parametrize(
    ("params", "names", "token"),
    [
        ({}, ["a", "b", "c"], None),
        ({"limit": "2"}, ["a", "b"], "2"),
        ({"limit": "2", "next_page_token": "2"}, ["c"], None),
        ({"limit": "3"}, ["a", "b", "c"], "3"),
        ({"limit": "1", "next_page_token": "2"}, ["c"], "3"),
        ({"limit": "0"}, [], "0"),
        ({"limit": "101"}, ["a", "b", "c"], None),
        ({"limit": "-1"}, ["a", "b", "c"], None),
        ({"limit": "x", "next_page_token": "y"}, ["a", "b", "c"], None),
        ({"limit": "1", "next_page_token": "-5"}, ["a"], "1"),
        ({"next_page_token": "3"}, [], None),
        ({"next_page_token": "10"}, [], None),
    ],
)
async def test_list_paging(
    server: Server,
    model_store: Path,
    params: dict[str, str],
    names: list[str],
    token: str | None,
) -> None:
    for name in ("c", "a", "b"):  # registered out of order; listed by name
        handler_archive(model_store, name, ECHO_HANDLER)
        assert (await register(server, f"{name}.mar")).status_code == 200
    response = await server.management.get("/models", params=params)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.text == list_text(names, token)


async def test_list_shows_default_versions_only(server: Server, model_store: Path) -> None:
    handler_archive(model_store, "m", ECHO_HANDLER, filename="m1.mar")
    handler_archive(model_store, "m", ECHO_HANDLER, version="2.0", filename="m2.mar")
    handler_archive(model_store, "k", ECHO_HANDLER)
    for url in ("m1.mar", "m2.mar", "k.mar"):
        assert (await register(server, url)).status_code == 200
    listing = (await server.management.get("/models")).json()
    assert listing == {
        "models": [
            {"modelName": "k", "modelUrl": "k.mar"},
            {"modelName": "m", "modelUrl": "m1.mar"},
        ]
    }
    assert (await server.management.put("/models/m/2.0/set-default")).status_code == 200
    listing = (await server.management.get("/models")).json()
    assert listing["models"][1] == {"modelName": "m", "modelUrl": "m2.mar"}


# -- unregister -----------------------------------------------------------------------------------
async def test_unregister_stops_workers_and_frees_everything(
    server: Server, model_store: Path
) -> None:
    handler_archive(model_store, "echo", ECHO_HANDLER)
    assert (await register_sync(server, "echo.mar")).status_code == 200
    [worker] = await workers(server, "/models/echo")
    response = await server.management.delete("/models/echo")
    assert_status(response, 200, 'Model "echo" unregistered')
    assert reaped(worker["pid"])
    prediction = await server.inference.post("/predictions/echo", content=b"x")
    assert_error(prediction, 404, "ModelNotFoundException", "Model not found: echo")
    assert (await server.management.get("/models/echo")).status_code == 404
    assert (await server.management.get("/models")).json() == {"models": []}
    assert extractions(server) == []
    assert (model_store / "echo.mar").is_file()  # a store archive is not deleted
    again = await server.management.delete("/models/echo")
    assert_error(again, 404, "ModelNotFoundException", "Model not found: echo")


async def test_unregister_versions_and_default(server: Server, model_store: Path) -> None:
    handler_archive(model_store, "echo", ECHO_HANDLER, filename="echo1.mar")
    handler_archive(model_store, "echo", ECHO_HANDLER, version="2.0", filename="echo2.mar")
    assert (await register(server, "echo1.mar")).status_code == 200
    assert (await register(server, "echo2.mar")).status_code == 200
    for path in ("/models/echo/1.0", "/models/echo"):
        refused = await server.management.delete(path)
        assert_error(
            refused,
            403,
            "InvalidModelVersionException",
            "Cannot remove default version for model echo",
        )
    unknown = await server.management.delete("/models/echo/9.9")
    assert_error(
        unknown,
        404,
        "ModelVersionNotFoundException",
        "Model version: 9.9 does not exist for model: echo",
    )
    assert_status(
        await server.management.delete("/models/echo/2.0"), 200, 'Model "echo" unregistered'
    )
    gone = await server.management.get("/models/echo/2.0")
    assert_error(
        gone,
        404,
        "ModelVersionNotFoundException",
        "Model version: 2.0 does not exist for model: echo",
    )
    assert [b["modelVersion"] for b in await describe(server, "/models/echo/all")] == ["1.0"]
    assert_status(await server.management.delete("/models/echo"), 200, 'Model "echo" unregistered')
    assert (await server.management.get("/models/echo")).status_code == 404
    unknown_model = await server.management.delete("/models/nope")
    assert_error(unknown_model, 404, "ModelNotFoundException", "Model not found: nope")


async def test_unregister_drains_in_flight_requests(server: Server, model_store: Path) -> None:
    handler_archive(model_store, "slow", INSPECT_HANDLER)
    assert (await register_sync(server, "slow.mar")).status_code == 200
    results: list[int] = []

    async def predict() -> None:
        r = await server.inference.post("/predictions/slow", content=b"z", headers={"x-sleep": "1"})
        results.append(r.status_code)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(predict)
        nursery.start_soon(predict)
        await trio.sleep(0.3)
        response = await server.management.delete("/models/slow")
        assert_status(response, 200, 'Model "slow" unregistered')
        # Both requests were answered before the unregister was.
        assert results == [200, 200]


async def test_unregister_timeout_is_408_and_frees_the_waiter(
    server_factory: Any, model_store: Path
) -> None:
    server: Server = await server_factory(make_config(model_store, unregister_model_timeout=1))
    handler_archive(model_store, "slow", INSPECT_HANDLER)
    assert (await register_sync(server, "slow.mar")).status_code == 200
    results: list[httpx.Response] = []

    async def predict() -> None:
        headers = {"x-sleep": "5"}
        results.append(
            await server.inference.post("/predictions/slow", content=b"z", headers=headers)
        )

    with trio.fail_after(4):  # well before the handler's 5 s sleep ends
        async with trio.open_nursery() as nursery:
            nursery.start_soon(predict)
            await trio.sleep(0.3)
            response = await server.management.delete("/models/slow")
            assert_error(
                response, 408, "RequestTimeoutException", "Timed out while cleaning resources: slow"
            )
    [waiter] = results
    assert_error(waiter, 500, "InternalServerException", "Worker died.")
    assert (await server.management.get("/models/slow")).status_code == 404
    assert extractions(server) == []


# -- set-default ----------------------------------------------------------------------------------
async def test_set_default_moves_predictions(server: Server, model_store: Path) -> None:
    handler_archive(model_store, "echo", ECHO_HANDLER, filename="echo1.mar")
    handler_archive(model_store, "echo", INSPECT_HANDLER, version="2.0", filename="echo2.mar")
    assert (await register_sync(server, "echo1.mar")).status_code == 200
    assert (await register_sync(server, "echo2.mar")).status_code == 200
    assert (await server.inference.post("/predictions/echo", content=b"hi")).content == b"hi"
    response = await server.management.put("/models/echo/2.0/set-default")
    assert_status(response, 200, 'Default version successfully updated for model "echo" to "2.0"')
    moved = await server.inference.post("/predictions/echo", content=b"hi")
    assert moved.json()["values"] == {"body": "hi"}
    assert (await describe(server, "/models/echo"))[0]["modelVersion"] == "2.0"
    # The old default can go now; the new one cannot while 1.0 exists.
    assert (await server.management.delete("/models/echo")).status_code == 403
    assert (await server.management.delete("/models/echo/1.0")).status_code == 200


async def test_set_default_errors(server: Server, model_store: Path) -> None:
    handler_archive(model_store, "echo", ECHO_HANDLER)
    assert (await register(server, "echo.mar")).status_code == 200
    version = await server.management.put("/models/echo/9.9/set-default")
    assert_error(
        version,
        404,
        "ModelVersionNotFoundException",
        "Model version 9.9 does not exist for model echo",
    )
    model = await server.management.put("/models/nope/1.0/set-default")
    assert_error(model, 404, "ModelNotFoundException", "Model not found: nope")
    method = await server.management.get("/models/echo/1.0/set-default")
    assert_error(method, 405, "MethodNotAllowedException", NOT_ALLOWED_TEXT)
    assert (await describe(server, "/models/echo"))[0]["modelVersion"] == "1.0"


# -- API descriptions and routing -----------------------------------------------------------------
async def test_management_api_description(own_port_server: Server) -> None:
    server = own_port_server
    response = await server.management.options("/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    doc = response.json()
    assert doc["openapi"] == "3.0.1"
    assert doc["info"]["title"] == "TorchServe APIs"
    validate(doc)
    paths = doc["paths"]
    assert set(paths["/models"]) >= {"get", "post"}
    assert set(paths["/models/{model_name}"]) >= {"get", "put", "delete"}
    assert set(paths["/models/{model_name}/{model_version}"]) >= {"get", "put", "delete"}
    assert "put" in paths["/models/{model_name}/{model_version}/set-default"]
    assert "/api-description" in paths
    described = await server.management.get("/api-description")
    assert described.json() == doc


async def test_model_management_description(server: Server, model_store: Path) -> None:
    handler_archive(model_store, "echo", ECHO_HANDLER)
    assert (await register(server, "echo.mar")).status_code == 200
    for path in ("/models/echo", "/models/echo/1.0"):
        response = await server.management.options(path)
        assert response.status_code == 200
        doc = response.json()
        assert doc["openapi"] == "3.0.1"
        validate(doc)
    unknown = await server.management.options("/models/nope")
    assert_error(unknown, 404, "ModelNotFoundException", "Model not found: nope")
    version = await server.management.options("/models/echo/9.9")
    assert_error(
        version,
        404,
        "ModelVersionNotFoundException",
        "Model version: 9.9 does not exist for model: echo",
    )


async def test_wrong_method_and_unknown_path(own_port_server: Server) -> None:
    server = own_port_server
    for method, path in (("PATCH", "/models"), ("PATCH", "/models/x"), ("POST", "/")):
        response = await server.management.request(method, path)
        assert_error(response, 405, "MethodNotAllowedException", NOT_ALLOWED_TEXT)
    for path in ("/nothing", "/models/a/b/c/d", "/predictions/x"):
        response = await server.management.get(path)
        assert_error(response, 404, "ResourceNotFoundException", NOT_FOUND_TEXT)
