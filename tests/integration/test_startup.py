"""Models loaded at startup: load_models forms, the `models` JSON, default workers."""

from __future__ import annotations

import dataclasses
import socket
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.conftest import LOCAL, make_config, wait_until
from tests.support.models import ECHO_HANDLER, INSPECT_HANDLER, handler_archive
from trioserve.config import Address
from trioserve.config_sources import load_config
from trioserve.server import Running, serve


async def _describe(server: Any, name: str) -> dict[str, Any]:
    response = await server.management.get(f"/models/{name}")
    assert response.status_code == 200, response.text
    return response.json()[0]  # type: ignore[no-any-return]


async def _all_ready(server: Any, name: str, count: int) -> bool:
    workers = (await _describe(server, name))["workers"]
    return len(workers) == count and all(w["status"] == "READY" for w in workers)


async def test_load_all_finds_archives_and_directories(
    server_factory: Any, model_store: Path
) -> None:
    handler_archive(model_store, "zipped", ECHO_HANDLER)
    handler_archive(model_store, "tarred", ECHO_HANDLER, fmt="tgz")
    handler_archive(model_store, "plain_dir", ECHO_HANDLER, fmt="dir")
    (model_store / ".hidden.mar").write_bytes(b"not an archive")
    (model_store / "notes.txt").write_text("ignored")
    config = make_config(model_store, load_models="all", default_workers_per_model=1)
    server = await server_factory(config)
    listed = (await server.management.get("/models")).json()["models"]
    assert [m["modelName"] for m in listed] == ["plain_dir", "tarred", "zipped"]
    for name in ("plain_dir", "tarred", "zipped"):
        await wait_until(lambda name=name: _all_ready(server, name, 1))
        reply = await server.inference.post(f"/predictions/{name}", content=name.encode())
        assert reply.content == name.encode()
        assert (await _describe(server, name))["loadedAtStartup"] is True


async def test_load_named_list_with_rename(server_factory: Any, model_store: Path) -> None:
    handler_archive(model_store, "first", ECHO_HANDLER)
    handler_archive(model_store, "second", ECHO_HANDLER)
    handler_archive(model_store, "third", ECHO_HANDLER)
    config = make_config(
        model_store, load_models="first.mar, renamed=second.mar", default_workers_per_model=1
    )
    server = await server_factory(config)
    listed = (await server.management.get("/models")).json()["models"]
    assert listed == [
        {"modelName": "first", "modelUrl": "first.mar"},
        {"modelName": "renamed", "modelUrl": "second.mar"},
    ]


async def test_standalone_loads_nothing(server_factory: Any, model_store: Path) -> None:
    handler_archive(model_store, "first", ECHO_HANDLER)
    server = await server_factory(make_config(model_store, load_models="standalone"))
    assert (await server.management.get("/models")).json() == {"models": []}


async def test_broken_startup_model_is_skipped(server_factory: Any, model_store: Path) -> None:
    handler_archive(model_store, "good", ECHO_HANDLER)
    (model_store / "bad.mar").write_bytes(b"this is not a zip")
    config = make_config(model_store, load_models="all", default_workers_per_model=1)
    server = await server_factory(config)
    listed = (await server.management.get("/models")).json()["models"]
    assert [m["modelName"] for m in listed] == ["good"]


async def test_models_json_sets_workers_and_batching(
    server_factory: Any, model_store: Path, tmp_path: Path
) -> None:
    handler_archive(model_store, "noop", INSPECT_HANDLER)
    # The docs' own example shape: continuation lines and a trailing comma.
    properties = tmp_path / "config.properties"
    properties.write_text(
        "load_models=noop.mar\n"
        "models={\\\n"
        '  "noop": {\\\n'
        '    "1.0": {\\\n'
        '      "defaultVersion": true,\\\n'
        '      "marName": "noop.mar",\\\n'
        '      "minWorkers": 2,\\\n'
        '      "maxWorkers": 3,\\\n'
        '      "batchSize": 4,\\\n'
        '      "maxBatchDelay": 150,\\\n'
        '      "responseTimeout": 77\\\n'
        "    }\\\n"
        "  },\\\n"
        "}\n"
    )
    loaded = load_config(environ={}, cwd=tmp_path, ts_config=str(properties))
    base = make_config(model_store)
    config = dataclasses.replace(base, load_models=loaded.load_models, models=loaded.models)
    server = await server_factory(config)
    described = await _describe(server, "noop")
    assert (described["minWorkers"], described["maxWorkers"]) == (2, 3)
    assert (described["batchSize"], described["maxBatchDelay"]) == (4, 150)
    assert described["responseTimeout"] == 77
    await wait_until(lambda: _all_ready(server, "noop", 2))


async def test_model_config_yaml_overrides_startup_workers(
    server_factory: Any, model_store: Path
) -> None:
    handler_archive(
        model_store,
        "yamlcfg",
        ECHO_HANDLER,
        config_yaml="minWorkers: 2\nmaxWorkers: 2\nbatchSize: 3\n",
    )
    config = make_config(model_store, load_models="yamlcfg.mar", default_workers_per_model=1)
    server = await server_factory(config)
    described = await _describe(server, "yamlcfg")
    assert (described["minWorkers"], described["batchSize"]) == (2, 3)


@pytest.mark.parametrize("workers", [1, 2])
async def test_default_workers_per_model(
    server_factory: Any, model_store: Path, workers: int
) -> None:
    handler_archive(model_store, "echo", ECHO_HANDLER)
    config = make_config(model_store, load_models="echo.mar", default_workers_per_model=workers)
    server = await server_factory(config)
    await wait_until(lambda: _all_ready(server, "echo", workers))


SLOW_LOAD_HANDLER = """
import time

def handle(data, context):
    if data is None:
        time.sleep(1.5)
        return None
    return [b"up"] * len(data)
"""


async def test_ping_is_unhealthy_until_startup_models_are_loaded(
    server_factory: Any, model_store: Path
) -> None:
    handler_archive(model_store, "slowload", SLOW_LOAD_HANDLER)
    config = make_config(model_store, load_models="slowload.mar", default_workers_per_model=1)
    server = await server_factory(config)
    first = await server.inference.get("/ping")
    assert first.status_code == 500
    assert first.json() == {"status": "Unhealthy"}

    async def healthy() -> bool:
        return (await server.inference.get("/ping")).status_code == 200  # type: ignore[no-any-return]

    await wait_until(healthy)
    assert (await server.inference.post("/predictions/slowload", content=b"x")).content == b"up"


async def test_ping_is_unhealthy_from_the_first_connection_the_listener_accepts(
    nursery: trio.Nursery, model_store: Path
) -> None:
    """The listeners accept before gRPC has started and the startup models are registered;
    a /ping answered in that window must not say Healthy either."""
    handler_archive(model_store, "slowload", SLOW_LOAD_HANDLER)
    with socket.socket() as probe:
        probe.bind((LOCAL, 0))
        port = probe.getsockname()[1]
    config = make_config(
        model_store,
        load_models="slowload.mar",
        default_workers_per_model=1,
        inference_address=Address("http", LOCAL, port),
    )
    started: list[Running] = []

    async def boot() -> None:
        started.append(await nursery.start(partial(serve, config, handle_signals=False)))

    nursery.start_soon(boot)
    answers: list[int] = []
    async with httpx.AsyncClient(base_url=f"http://{LOCAL}:{port}", timeout=30) as client:
        with trio.fail_after(60):
            while not answers or answers[-1] != 200:
                try:
                    answers.append((await client.get("/ping")).status_code)
                except httpx.ConnectError:
                    await trio.sleep(0.002)  # not listening yet
        assert answers[0] == 500
        [described] = (
            await client.get(f"http://{LOCAL}:{started[0].ports['management']}/models/slowload")
        ).json()
    assert [w["status"] for w in described["workers"]] == ["READY"]
    started[0].shutdown()
