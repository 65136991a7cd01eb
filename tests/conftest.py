from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from trioserve.config import Address, Config, default_config
from trioserve.server import Running, serve

LOCAL = "127.0.0.1"


@dataclasses.dataclass
class Server:
    running: Running
    config: Config
    inference: httpx.AsyncClient
    management: httpx.AsyncClient

    @property
    def state(self) -> Any:
        return self.running.state


def make_config(model_store: Path, **overrides: Any) -> Config:
    base = dataclasses.replace(
        default_config(),
        inference_address=Address("http", LOCAL, 0),
        management_address=Address("http", LOCAL, 0),
        metrics_address=Address("http", LOCAL, 0),
        model_store=str(model_store),
        grpc_inference_port=0,
        grpc_management_port=0,
        default_response_timeout=30,
        default_startup_timeout=60,
    )
    return dataclasses.replace(base, **overrides)


@pytest.fixture
def model_store(tmp_path: Path) -> Path:
    store = tmp_path / "model_store"
    store.mkdir()
    return store


async def start_server(nursery: trio.Nursery, config: Config) -> Server:
    running: Running = await nursery.start(
        lambda task_status: serve(config, handle_signals=False, task_status=task_status)
    )
    mgmt_port = running.ports["management"]
    timeout = httpx.Timeout(60.0)
    return Server(
        running,
        config,
        httpx.AsyncClient(base_url=f"http://{LOCAL}:{running.ports['inference']}", timeout=timeout),
        httpx.AsyncClient(base_url=f"http://{LOCAL}:{mgmt_port}", timeout=timeout),
    )


@pytest.fixture
async def server_factory(nursery: trio.Nursery) -> AsyncIterator[Any]:
    servers: list[Server] = []

    async def factory(config: Config) -> Server:
        server = await start_server(nursery, config)
        servers.append(server)
        return server

    yield factory
    for server in servers:
        await server.inference.aclose()
        await server.management.aclose()
        server.running.shutdown()


@pytest.fixture
async def server(server_factory: Any, model_store: Path) -> Server:
    return await server_factory(make_config(model_store))  # type: ignore[no-any-return]


async def wait_until(predicate: Any, limit_s: float = 60.0, interval: float = 0.05) -> None:
    """Poll a condition the server exposes only by query (a status, a worker state), with a
    hard deadline so a missed condition fails instead of hanging."""
    with trio.fail_after(limit_s):
        while not await predicate():  # noqa: ASYNC110 - the condition lives in another process
            await trio.sleep(interval)
