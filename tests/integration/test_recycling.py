"""Worker recycling against a running server: a worker past ``maxRequestsPerWorker`` or
``maxWorkerRssMb`` is replaced by a fresh process (same worker id) without failing or losing a
request (trioserve's own, beyond TorchServe)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.conftest import Server, make_config
from tests.support.models import INSPECT_HANDLER, handler_archive

# A generous bound on a whole load of requests, recycles (process start + load) included.
LOAD_LIMIT_S = 90.0


async def register_ok(server: Server, url: str, workers: int = 1) -> None:
    response = await server.management.post(
        "/models", params={"url": url, "initial_workers": str(workers), "synchronous": "true"}
    )
    assert response.status_code == 200, response.text


async def predict(server: Server, model: str, label: str, sleep_s: str = "") -> httpx.Response:
    headers = {"x-sleep": sleep_s} if sleep_s else {}
    return await server.inference.post(
        f"/predictions/{model}", content=label.encode(), headers=headers
    )


async def predict_pid(server: Server, model: str, label: str) -> int:
    with trio.fail_after(LOAD_LIMIT_S):
        response = await predict(server, model, label)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["values"] == {"body": label}
    return int(body["pid"])


async def concurrent_load(server: Server, model: str, count: int) -> list[httpx.Response]:
    responses: dict[int, httpx.Response] = {}

    async def one(i: int) -> None:
        responses[i] = await predict(server, model, f"request-{i}", "0.02")

    with trio.fail_after(LOAD_LIMIT_S):
        async with trio.open_nursery() as nursery:
            for i in range(count):
                nursery.start_soon(one, i)
    for i, response in responses.items():
        assert response.status_code == 200, (i, response.text)
        assert response.json()["values"] == {"body": f"request-{i}"}
    return [responses[i] for i in range(count)]


async def worker_ids(server: Server, model: str) -> list[str]:
    described: list[dict[str, Any]] = (await server.management.get(f"/models/{model}")).json()
    return [w["id"] for w in described[0]["workers"]]


async def test_worker_past_max_requests_is_replaced_by_a_fresh_process(
    server: Server, model_store: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    handler_archive(model_store, "capped", INSPECT_HANDLER, config_yaml="maxRequestsPerWorker: 3\n")
    await register_ok(server, "capped.mar")
    ids = await worker_ids(server, "capped")

    first = [await predict_pid(server, "capped", f"r{i}") for i in range(3)]
    assert len(set(first)) == 1
    fourth = await predict_pid(server, "capped", "r3")
    assert fourth != first[0]
    assert await worker_ids(server, "capped") == ids  # the same worker, in a new process
    messages = [r.getMessage() for r in caplog.records]
    assert any(
        "served 3 requests (maxRequestsPerWorker 3); replacing it with a fresh process" in m
        for m in messages
    )
    assert not any("worker process ended" in m for m in messages)


async def test_concurrent_load_through_recycled_workers_all_succeeds(
    server: Server, model_store: Path
) -> None:
    handler_archive(model_store, "capped", INSPECT_HANDLER, config_yaml="maxRequestsPerWorker: 3\n")
    await register_ok(server, "capped.mar", workers=2)
    responses = await concurrent_load(server, "capped", 24)
    pids = [r.json()["pid"] for r in responses]
    # No process served more than its three requests.
    assert max(pids.count(pid) for pid in set(pids)) <= 3
    assert len(set(pids)) >= 8
    assert len(await worker_ids(server, "capped")) == 2


async def test_worker_over_max_rss_is_recycled_after_each_batch(
    server: Server, model_store: Path
) -> None:
    handler_archive(model_store, "fat", INSPECT_HANDLER, config_yaml="maxWorkerRssMb: 1\n")
    await register_ok(server, "fat.mar", workers=2)
    sequential = [await predict_pid(server, "fat", f"r{i}") for i in range(3)]
    assert len(set(sequential)) == 3
    responses = await concurrent_load(server, "fat", 8)
    pids = [r.json()["pid"] for r in responses]
    assert len(set(pids)) == 8  # batch size 1: every request had a process of its own


async def test_server_wide_default_applies_unless_the_yaml_says_otherwise(
    server_factory: Any, model_store: Path
) -> None:
    server: Server = await server_factory(make_config(model_store, max_requests_per_worker=2))
    handler_archive(model_store, "plain", INSPECT_HANDLER)
    handler_archive(model_store, "exempt", INSPECT_HANDLER, config_yaml="maxRequestsPerWorker: 0\n")
    await register_ok(server, "plain.mar")
    await register_ok(server, "exempt.mar")
    plain = [await predict_pid(server, "plain", f"r{i}") for i in range(3)]
    assert plain[0] == plain[1] != plain[2]
    exempt = [await predict_pid(server, "exempt", f"r{i}") for i in range(3)]
    assert len(set(exempt)) == 1
