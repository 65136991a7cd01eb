"""GPU assignment against a running server (contract §2.4, §7.3, §8.4). Runs on CPU machines:
the plain case is this machine's own (no GPU), and ``CUDA_VISIBLE_DEVICES`` stands in for GPUs
elsewhere, since the frontend counts with it and never touches a device to assign ids."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.conftest import Server, make_config
from tests.support.models import handler_archive
from trioserve.models.gpu import USAGE_FAILED, count_visible_gpus

# What a worker's handler sees of its device: the Context's gpu_id and the environment.
DEVICE_HANDLER = """
import os, time


def handle(data, context):
    if data is None:
        return None
    out = []
    for idx, _ in enumerate(data):
        delay = context.get_request_header(idx, "x-sleep")
        if delay:
            time.sleep(float(delay))
        out.append({
            "pid": os.getpid(),
            "gpu_id": context.system_properties["gpu_id"],
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        })
    return out
"""
USAGE = re.compile(
    r"gpuId::\d+ utilization\.gpu \[%\]::\d+ % utilization\.memory \[%\]::\d+ % "
    r"memory\.used \[MiB\]::\d+ MiB"
)


async def register_ok(server: Server, url: str, workers: int = 1) -> None:
    response = await server.management.post(
        "/models", params={"url": url, "initial_workers": str(workers), "synchronous": "true"}
    )
    assert response.status_code == 200, response.text


async def describe(server: Server, model: str) -> dict[str, Any]:
    response = await server.management.get(f"/models/{model}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()[0]
    return body


async def handler_views(server: Server, model: str, workers: int) -> dict[int, dict[str, Any]]:
    """What each of the model's workers' handler sees, by pid: ``workers`` concurrent requests
    that each hold their worker for a moment, so every worker takes one."""
    seen: dict[int, dict[str, Any]] = {}

    async def one() -> None:
        response: httpx.Response = await server.inference.post(
            f"/predictions/{model}", content=b"x", headers={"x-sleep": "0.5"}
        )
        assert response.status_code == 200, response.text
        body = response.json()
        seen[body["pid"]] = body

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for _ in range(workers):
                nursery.start_soon(one)
    assert len(seen) == workers
    return seen


async def test_cpu_machine_describes_cpu_workers_and_handler_sees_no_gpu(
    server_factory: Any, model_store: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if count_visible_gpus(os.environ) > 0:
        pytest.skip("this machine has a GPU")
    caplog.set_level(logging.INFO)
    server: Server = await server_factory(make_config(model_store))
    handler_archive(model_store, "device", DEVICE_HANDLER)
    handler_archive(model_store, "other", DEVICE_HANDLER)
    await register_ok(server, "device.mar", workers=2)
    await register_ok(server, "other.mar")

    body = await describe(server, "device")
    assert body["deviceType"] == "cpu"
    assert "deviceIds" not in body
    assert [(w["gpu"], w["gpuUsage"]) for w in body["workers"]] == [(False, "N/A")] * 2
    views = await handler_views(server, "device", 2)
    assert [v["gpu_id"] for v in views.values()] == [None, None]
    expected_env = os.environ.get("CUDA_VISIBLE_DEVICES")
    assert [v["cuda_visible_devices"] for v in views.values()] == [expected_env] * 2
    said = [r.getMessage() for r in caplog.records if r.name == "trioserve.models.gpu"]
    assert said == ["no GPU found: workers run on CPU"]  # once, however many models


async def test_visible_gpus_are_assigned_round_robin_across_models(
    server_factory: Any, model_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,3")  # two GPUs, seen as cuda:0 and cuda:1
    server: Server = await server_factory(make_config(model_store))
    handler_archive(model_store, "first", DEVICE_HANDLER)
    handler_archive(model_store, "second", DEVICE_HANDLER)
    handler_archive(model_store, "pinned", DEVICE_HANDLER, config_yaml="deviceIds: [1]\n")
    handler_archive(model_store, "forced", DEVICE_HANDLER, config_yaml="deviceType: cpu\n")
    handler_archive(model_store, "bad_ids", DEVICE_HANDLER, config_yaml="deviceIds: [0, 2]\n")
    await register_ok(server, "first.mar", workers=2)
    await register_ok(server, "pinned.mar", workers=2)
    await register_ok(server, "forced.mar")
    await register_ok(server, "second.mar")
    await register_ok(server, "bad_ids.mar")

    assigned = {
        name: [w.gpu_id for w in server.state.registry.resolve(name).workers]
        for name in ("first", "pinned", "forced", "second", "bad_ids")
    }
    # One server-wide counter, pre-incremented: 1 % 2 first; deviceIds and cpu models apart.
    assert assigned == {
        "first": [1, 0],
        "pinned": [1, 1],
        "forced": [-1],
        "second": [1],
        "bad_ids": [0],
    }

    first = await describe(server, "first")
    assert first["deviceType"] == "gpu"
    assert "deviceIds" not in first
    for worker in first["workers"]:
        assert worker["gpu"] is True
        # No NVML device behind these ids on a CPU machine: TorchServe's failure text.
        assert worker["gpuUsage"] == USAGE_FAILED or USAGE.fullmatch(worker["gpuUsage"])
    pinned = await describe(server, "pinned")
    assert (pinned["deviceType"], pinned["deviceIds"]) == ("gpu", [1])
    keys = list(pinned)
    assert keys.index("deviceIds") == keys.index("deviceType") + 1
    assert "deviceIds" not in await describe(server, "bad_ids")  # an invalid id voids the list
    forced = await describe(server, "forced")
    assert forced["deviceType"] == "cpu"
    assert [(w["gpu"], w["gpuUsage"]) for w in forced["workers"]] == [(False, "N/A")]

    # Each handler gets its worker's gpu_id, and CUDA_VISIBLE_DEVICES as the frontend has it.
    by_pid = {w.pid: w.gpu_id for w in server.state.registry.resolve("first").workers}
    views = await handler_views(server, "first", 2)
    assert {pid: v["gpu_id"] for pid, v in views.items()} == by_pid
    assert {v["cuda_visible_devices"] for v in views.values()} == {"1,3"}
    (forced_view,) = (await handler_views(server, "forced", 1)).values()
    assert forced_view["gpu_id"] is None


async def test_restarted_worker_keeps_its_gpu(
    server_factory: Any, model_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    server: Server = await server_factory(make_config(model_store))
    handler_archive(
        model_store, "recycled", DEVICE_HANDLER, config_yaml="maxRequestsPerWorker: 1\n"
    )
    await register_ok(server, "recycled.mar")
    views = []
    for _ in range(3):
        with trio.fail_after(30):
            response = await server.inference.post("/predictions/recycled", content=b"x")
        views.append(response.json())
    assert len({v["pid"] for v in views}) == 3
    assert [v["gpu_id"] for v in views] == [1, 1, 1]


@pytest.mark.parametrize(
    ("visible", "number_of_gpu", "device_type"),
    [
        pytest.param("0,1", 0, "cpu", id="number_of_gpu-0"),
        pytest.param("0,1", 1, "gpu", id="capped"),
        pytest.param("", None, "cpu", id="empty-visible-devices"),
    ],
)
async def test_number_of_gpu_and_visible_devices_decide_the_device(
    server_factory: Any,
    model_store: Path,
    monkeypatch: pytest.MonkeyPatch,
    visible: str,
    number_of_gpu: int | None,
    device_type: str,
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    server: Server = await server_factory(make_config(model_store, number_of_gpu=number_of_gpu))
    handler_archive(model_store, "device", DEVICE_HANDLER)
    await register_ok(server, "device.mar", workers=0)
    assert (await describe(server, "device"))["deviceType"] == device_type
    assigner = server.state.registry.gpus(number_of_gpu)
    assert assigner.number_of_gpu == (number_of_gpu if device_type == "gpu" else 0)
