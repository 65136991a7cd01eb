"""Fault injection under load: every request sent gets exactly one answer.

Each test starts the real server with real workers, keeps a steady load of concurrent clients
running, applies one fault, then stops the load and checks the ledger: requests sent == requests
answered, every status is one the fault may cause, and the model serves again afterwards.
"""

from __future__ import annotations

import collections
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.conftest import Server, make_config, wait_until
from tests.support.models import handler_archive

FAULT_HANDLER = """
import os, time

def handle(data, context):
    if data is None:
        return None
    out = []
    for idx, row in enumerate(data):
        body = bytes(row.get("body") or b"")
        log = context.get_request_header(idx, "x-log-file")
        if log:
            with open(log, "a") as f:
                f.write(body.decode() + "\\n")
        if body == b"exit":
            os._exit(9)
        delay = context.get_request_header(idx, "x-sleep")
        if delay:
            time.sleep(float(delay))
        out.append(body)
    return out
"""

# A client gives up after this long; any request still unanswered then counts as hung.
CLIENT_LIMIT_S = 60.0


@dataclass
class Ledger:
    sent: int = 0
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    transport_errors: list[str] = field(default_factory=list)

    @property
    def answered(self) -> int:
        return sum(self.statuses.values())


@dataclass
class Load:
    """``clients`` tasks posting ``body`` back to back until ``stop`` is set."""

    server: Server
    model: str
    clients: int = 4
    body: bytes = b"ok"
    headers: dict[str, str] = field(default_factory=dict)
    ledger: Ledger = field(default_factory=Ledger)
    stop: trio.Event = field(default_factory=trio.Event)
    progress: trio.Event = field(default_factory=trio.Event)

    async def _client(self) -> None:
        while not self.stop.is_set():
            self.ledger.sent += 1
            try:
                with trio.fail_after(CLIENT_LIMIT_S):
                    reply = await self.server.inference.post(
                        f"/predictions/{self.model}", content=self.body, headers=self.headers
                    )
            except (httpx.HTTPError, trio.TooSlowError) as exc:
                self.ledger.transport_errors.append(repr(exc))
                continue
            self.ledger.statuses[reply.status_code] += 1
            if reply.status_code == 200:
                assert reply.content == self.body
                if self.ledger.statuses[200] >= 5:
                    self.progress.set()

    async def run(self, fault: Callable[[], Awaitable[None]]) -> Ledger:
        """Run the load, apply ``fault`` once it is flowing, then keep going until more
        requests have succeeded after the fault."""
        async with trio.open_nursery() as nursery:
            for _ in range(self.clients):
                nursery.start_soon(self._client)
            with trio.fail_after(CLIENT_LIMIT_S):
                await self.progress.wait()
            await fault()
            before = self.ledger.statuses[200]
            with trio.fail_after(CLIENT_LIMIT_S):
                while self.ledger.statuses[200] < before + 50:  # noqa: ASYNC110 - a ledger count
                    await trio.sleep(0.02)
            self.stop.set()
        return self.ledger


def check(ledger: Ledger, allowed: set[int]) -> None:
    # Shown with `pytest -s`: the figures a fault run reports.
    print(
        f"ledger: sent={ledger.sent} answered={ledger.answered} by status={dict(ledger.statuses)}"
    )
    assert ledger.transport_errors == []
    assert ledger.sent == ledger.answered, ledger
    assert set(ledger.statuses) <= allowed, ledger.statuses
    assert ledger.statuses[200] > 0


async def register(server: Server, name: str, **params: str) -> None:
    query = {"url": f"{name}.mar", "initial_workers": "2", "synchronous": "true", **params}
    response = await server.management.post("/models", params=query)
    assert response.status_code == 200, response.text


async def describe(server: Server, name: str) -> dict[str, Any]:
    return (await server.management.get(f"/models/{name}")).json()[0]  # type: ignore[no-any-return]


async def ready_pids(server: Server, name: str) -> list[int]:
    workers = (await describe(server, name))["workers"]
    return [w["pid"] for w in workers if w["status"] == "READY"]


@pytest.fixture
async def loaded(server: Server, model_store: Path) -> Server:
    handler_archive(model_store, "faulty", FAULT_HANDLER)
    await register(server, "faulty")
    return server


async def test_sigkill_of_a_worker_under_load(loaded: Server) -> None:
    server = loaded
    victims = await ready_pids(server, "faulty")

    async def fault() -> None:
        os.kill(victims[0], signal.SIGKILL)

    ledger = await Load(server, "faulty", headers={"x-sleep": "0.01"}).run(fault)
    # Requests in the killed worker's batch get 507 (SIGKILL); everything else succeeds.
    check(ledger, {200, 507})

    async def recovered() -> bool:
        pids = await ready_pids(server, "faulty")
        return len(pids) == 2 and victims[0] not in pids

    await wait_until(recovered)


async def test_handler_exit_under_load(loaded: Server) -> None:
    server = loaded

    async def fault() -> None:
        reply = await server.inference.post("/predictions/faulty", content=b"exit")
        assert reply.status_code == 500
        body = reply.json()
        assert body["type"] == "InternalServerException"
        assert body["message"].startswith("Worker died.")

    ledger = await Load(server, "faulty").run(fault)
    check(ledger, {200, 500})


async def test_response_timeout_under_load(server: Server, model_store: Path) -> None:
    handler_archive(model_store, "faulty", FAULT_HANDLER)
    await register(server, "faulty", response_timeout="1")

    async def fault() -> None:
        with trio.fail_after(10):
            reply = await server.inference.post(
                "/predictions/faulty", content=b"ok", headers={"x-sleep": "30"}
            )
        assert reply.status_code == 500

    ledger = await Load(server, "faulty").run(fault)
    check(ledger, {200, 500})


async def test_scale_down_and_up_under_load_fails_nothing(loaded: Server) -> None:
    server = loaded

    async def fault() -> None:
        down = await server.management.put(
            "/models/faulty", params={"min_worker": "1", "synchronous": "true"}
        )
        assert down.status_code == 200, down.text
        up = await server.management.put(
            "/models/faulty", params={"min_worker": "3", "synchronous": "true"}
        )
        assert up.status_code == 200, up.text

    ledger = await Load(server, "faulty", headers={"x-sleep": "0.02"}).run(fault)
    check(ledger, {200})
    assert len(await ready_pids(server, "faulty")) == 3


async def test_queued_job_times_out_with_503_and_is_never_run(
    server_factory: Any, model_store: Path, tmp_path: Path
) -> None:
    handler_archive(model_store, "slow", FAULT_HANDLER, config_yaml="clientTimeoutInMills: 500\n")
    server = await server_factory(make_config(model_store))
    await register(server, "slow", initial_workers="1")
    log = tmp_path / "ran.log"
    results: dict[str, httpx.Response] = {}

    async def send(tag: str, sleep: str) -> None:
        results[tag] = await server.inference.post(
            "/predictions/slow",
            content=tag.encode(),
            headers={"x-sleep": sleep, "x-log-file": str(log)},
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send, "first", "2")
        await wait_until(lambda: _logged(log, "first"))
        with trio.fail_after(2):
            await send("queued", "0")
    assert results["queued"].status_code == 503
    assert results["queued"].json()["type"] == "ServiceUnavailableException"
    assert "within 0.5 s" in results["queued"].json()["message"]
    assert results["first"].status_code == 200
    await send("after", "0")
    assert results["after"].status_code == 200
    assert log.read_text().split() == ["first", "after"]


async def _logged(log: Path, tag: str) -> bool:
    path = trio.Path(log)
    return await path.exists() and tag in (await path.read_text()).split()


async def test_client_disconnect_drops_the_queued_job_without_restarting_a_worker(
    server: Server, model_store: Path, tmp_path: Path
) -> None:
    handler_archive(model_store, "slow", FAULT_HANDLER)
    await register(server, "slow", initial_workers="1")
    [pid] = await ready_pids(server, "slow")
    log = tmp_path / "ran.log"
    headers = {"x-log-file": str(log)}
    async with trio.open_nursery() as nursery:

        async def busy() -> None:
            reply = await server.inference.post(
                "/predictions/slow", content=b"busy", headers={**headers, "x-sleep": "1.5"}
            )
            assert reply.status_code == 200

        nursery.start_soon(busy)
        await wait_until(lambda: _logged(log, "busy"))
        with trio.move_on_after(0.3) as gave_up:
            await server.inference.post("/predictions/slow", content=b"abandoned", headers=headers)
        assert gave_up.cancelled_caught
    reply = await server.inference.post("/predictions/slow", content=b"later", headers=headers)
    assert reply.status_code == 200
    assert log.read_text().split() == ["busy", "later"]
    assert await ready_pids(server, "slow") == [pid]


async def test_full_queue_is_refused_from_the_head_without_reading_the_body(
    server_factory: Any, model_store: Path, tmp_path: Path
) -> None:
    handler_archive(model_store, "slow", FAULT_HANDLER, config_yaml="jobQueueSize: 1\n")
    server = await server_factory(make_config(model_store))
    await register(server, "slow", initial_workers="1")
    log = tmp_path / "ran.log"
    headers = {"x-log-file": str(log), "x-sleep": "1"}
    port = server.running.ports["inference"]
    async with trio.open_nursery() as nursery:

        async def post(tag: str) -> None:
            reply = await server.inference.post(
                "/predictions/slow", content=tag.encode(), headers=headers
            )
            assert reply.status_code == 200

        nursery.start_soon(post, "running")
        await wait_until(lambda: _logged(log, "running"))
        nursery.start_soon(post, "queued")
        await wait_until(lambda: _queued(server, "slow", 1))
        # Announce a big body and send none of it: the 503 must come back from the head alone.
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        head = "POST /predictions/slow HTTP/1.1\r\nHost: t\r\nContent-Length: 5000000\r\n\r\n"
        with trio.fail_after(5):
            await stream.send_all(head.encode())
            data = b""
            while b"\r\n\r\n" not in data:
                data += await stream.receive_some(65536)
        await stream.aclose()
        assert data.startswith(b"HTTP/1.1 503 ")
        assert b"connection: close" in data


async def _queued(server: Server, name: str, count: int) -> bool:
    status = (await describe(server, name))["jobQueueStatus"]
    return status["pendingRequests"] == count  # type: ignore[no-any-return]


@pytest.mark.parametrize("grace", ["0", "1"])
async def test_scale_down_timeout_requeues_the_busy_workers_batch(
    server: Server, model_store: Path, tmp_path: Path, grace: str
) -> None:
    handler_archive(model_store, "slow", FAULT_HANDLER)
    await register(server, "slow", initial_workers="2")
    log = tmp_path / "ran.log"
    replies: dict[str, httpx.Response] = {}
    oldest = (await describe(server, "slow"))["workers"][0]["id"]
    async with trio.open_nursery() as nursery:

        async def slow(tag: str) -> None:
            replies[tag] = await server.inference.post(
                "/predictions/slow",
                content=tag.encode(),
                headers={"x-log-file": str(log), "x-sleep": "2"},
            )

        nursery.start_soon(slow, "a")
        nursery.start_soon(slow, "b")
        await wait_until(lambda: _logged(log, "a"))
        await wait_until(lambda: _logged(log, "b"))  # both workers are busy now
        scaled = await server.management.put(
            "/models/slow",
            params={
                "min_worker": "1",
                "max_worker": "1",
                "timeout": grace,
                "synchronous": "true",
            },
        )
        assert scaled.status_code == 200, scaled.text
    # The retired (newest) worker's batch was taken from it and run again on the remaining
    # worker: both requests are answered 200, and one body was run twice.
    assert {k: (r.status_code, r.content) for k, r in replies.items()} == {
        "a": (200, b"a"),
        "b": (200, b"b"),
    }
    ran = (await trio.Path(log).read_text()).split()
    assert sorted(ran) in (["a", "a", "b"], ["a", "b", "b"])
    remaining = (await describe(server, "slow"))["workers"]
    assert [w["id"] for w in remaining] == [oldest]


SEGFAULT_HANDLER = """
import ctypes

def handle(data, context):
    if data is None:
        return None
    if bytes(data[0].get("body") or b"") == b"segv":
        ctypes.string_at(0)
    return [bytes(row.get("body") or b"") for row in data]
"""


async def test_segfault_mid_batch_under_load(server: Server, model_store: Path) -> None:
    handler_archive(model_store, "faulty", SEGFAULT_HANDLER)
    await register(server, "faulty")

    async def fault() -> None:
        with trio.fail_after(5):
            reply = await server.inference.post("/predictions/faulty", content=b"segv")
        assert reply.status_code == 500
        assert reply.json()["message"].startswith("Worker died. (killed by signal SIGSEGV")

    ledger = await Load(server, "faulty").run(fault)
    check(ledger, {200, 500})


async def test_unregister_under_load_answers_everything(server: Server, model_store: Path) -> None:
    handler_archive(model_store, "faulty", FAULT_HANDLER)
    handler_archive(model_store, "other", FAULT_HANDLER)
    await register(server, "faulty")
    await register(server, "other", initial_workers="1")
    other = Load(server, "other", clients=2)
    doomed = Load(server, "faulty", clients=3, headers={"x-sleep": "0.01"})
    async with trio.open_nursery() as nursery:
        nursery.start_soon(other.run, _noop)

        async def unregister() -> None:
            deleted = await server.management.delete("/models/faulty")
            assert deleted.status_code == 200, deleted.text

        async def until_gone() -> None:
            # The doomed load ends once the model is gone: keep the ledger, stop sending.
            with trio.fail_after(CLIENT_LIMIT_S):
                await doomed.progress.wait()
            await unregister()
            doomed.stop.set()

        async with trio.open_nursery() as inner:
            for _ in range(doomed.clients):
                inner.start_soon(doomed._client)
            inner.start_soon(until_gone)
    # Requests in flight during the unregister drain are answered 200; later ones 404 (model
    # gone) or 503 (stopping): never a hang or a dropped connection.
    check(doomed.ledger, {200, 404, 503})
    check(other.ledger, {200})


async def _noop() -> None:
    return None


STARTUP_HANDLER = """
import time

def handle(data, context):
    if data is None:
        time.sleep(30)
    return data
"""


async def test_startup_timeout_bounds_the_model_load(server: Server, model_store: Path) -> None:
    handler_archive(model_store, "slowstart", STARTUP_HANDLER)
    with trio.fail_after(15):
        response = await server.management.post(
            "/models",
            params={
                "url": "slowstart.mar",
                "initial_workers": "1",
                "synchronous": "true",
                "startup_timeout": "1",
            },
        )
    assert response.status_code == 500
    assert response.json()["message"] == "Failed to start workers for model slowstart version: 1.0"
