"""Worker processes against a running server: handler entry points, Context, batching,
streaming, queue admission and every error path a worker can take (contract §0.5, §7, §8)."""

from __future__ import annotations

import json
import logging
import os
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import yaml

from backend.__main__ import TIMER_SLACK_NS
from tests.conftest import Server, make_config, wait_until
from tests.support.models import (
    BROKEN_INIT_HANDLER,
    CONTEXT_HANDLER,
    COUNTING_CLASS_HANDLER,
    CRASH_AT_LOAD_HANDLER,
    DEFAULT_FUNCTION_HANDLER,
    DYING_HANDLER,
    ECHO_HANDLER,
    FAILING_HANDLER,
    INSPECT_HANDLER,
    NAMED_FUNCTION_HANDLER,
    PRINTING_HANDLER,
    SIZED_RESPONSE_HANDLER,
    STREAM_THEN_FAIL_HANDLER,
    STREAMING_HANDLER,
    handler_archive,
    manifest,
    source_archive,
)

# How long a worker may take to die, be noticed and come back (back-off 1 s + spawn + load).
RECOVERY_S = 20.0
NO_WORKER_TAIL = (
    "has no worker to serve inference request. Please use scale workers API to add workers. "
    "If this is a sequence inference, please check if it is closed, or expired; or exceeds "
    "maxSequenceJobQueueSize"
)


# -- helpers ------------------------------------------------------------------------------------
async def register(server: Server, url: str, **params: str) -> httpx.Response:
    query = {"url": url, "initial_workers": "1", "synchronous": "true", **params}
    return await server.management.post("/models", params=query)


async def register_ok(server: Server, url: str, **params: str) -> None:
    response = await register(server, url, **params)
    assert response.status_code == 200, response.text


async def workers(server: Server, model: str) -> list[dict[str, Any]]:
    response = await server.management.get(f"/models/{model}")
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()[0]["workers"]
    return found


async def only_worker(server: Server, model: str) -> dict[str, Any]:
    found = await workers(server, model)
    assert len(found) == 1, found
    return found[0]


async def wait_replaced(server: Server, model: str, old_pid: int) -> dict[str, Any]:
    """Wait until the model's one worker is READY again in a new process; return it."""

    async def replaced() -> bool:
        found = await workers(server, model)
        return len(found) == 1 and found[0]["status"] == "READY" and found[0]["pid"] != old_pid

    await wait_until(replaced, RECOVERY_S)
    return await only_worker(server, model)


def worker_name(worker: dict[str, Any], model: str, version: str = "1.0") -> str:
    return f"W-{worker['id']}-{model}_{version}"


def backend_error(code: int, message: str) -> dict[str, Any]:
    return {"code": code, "type": "InternalServerException", "message": message}


def no_worker_error(model: str) -> dict[str, Any]:
    return {
        "code": 503,
        "type": "ServiceUnavailableException",
        "message": f'Model "{model}" {NO_WORKER_TAIL}',
    }


def log_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records]


async def wait_for_log(caplog: pytest.LogCaptureFixture, *needles: str) -> None:
    """Wait until one log record contains every needle (worker output arrives on its own pipe,
    so it may land after the HTTP response)."""

    async def logged() -> bool:
        return any(all(n in line for n in needles) for line in log_lines(caplog))

    try:
        await wait_until(logged, 10.0)
    except trio.TooSlowError:
        pytest.fail(f"no log record contains {needles!r}")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def post_into(
    result: list[httpx.Response], server: Server, model: str, sleep_s: str = ""
) -> None:
    """POST to a model, optionally asking INSPECT_HANDLER to sleep, and keep the response."""
    headers = {"x-sleep": sleep_s} if sleep_s else {}
    result.append(
        await server.inference.post(f"/predictions/{model}", content=b"x", headers=headers)
    )


async def echo_ok(server: Server) -> None:
    response = await server.inference.post("/predictions/echo", content=b"still here")
    assert response.status_code == 200
    assert response.content == b"still here"


# -- handler failures ---------------------------------------------------------------------------
FAILURES = [
    pytest.param("raise", 503, "Prediction failed", "ValueError: handler blew up", id="raise"),
    pytest.param("oom", 507, "Out of resources", "MemoryError", id="memory-error"),
    pytest.param("custom", 418, "custom failure", "PredictionException", id="prediction-exc"),
    pytest.param("notlist", 503, "Invalid model predict output", None, id="not-a-list"),
    pytest.param("short", 503, "number of batch response mismatched", None, id="wrong-length"),
    pytest.param(
        "badtype", 503, "Unsupported model output data type.", "not JSON serializable", id="type"
    ),
]


@pytest.mark.parametrize(("body", "code", "message", "raised"), FAILURES)
async def test_handler_failure_gives_contract_error_and_worker_keeps_serving(
    server: Server,
    model_store: Path,
    caplog: pytest.LogCaptureFixture,
    body: str,
    code: int,
    message: str,
    raised: str | None,
) -> None:
    caplog.set_level(logging.INFO)
    handler_archive(model_store, "failing", FAILING_HANDLER)
    handler_archive(model_store, "echo", ECHO_HANDLER)
    await register_ok(server, "failing.mar")
    await register_ok(server, "echo.mar")
    before = await only_worker(server, "failing")
    await echo_ok(server)

    response = await server.inference.post("/predictions/failing", content=body.encode())
    assert response.status_code == code
    assert response.headers["content-type"] == "application/json"
    assert response.json() == backend_error(code, message)

    await echo_ok(server)
    good = await server.inference.post("/predictions/failing", content=b"fine")
    assert good.status_code == 200
    assert good.content == b"ok"
    after = await only_worker(server, "failing")
    assert after["pid"] == before["pid"]
    assert after["status"] == "READY"

    name = worker_name(before, "failing")
    await wait_for_log(caplog, name, "failing", str(code), message)
    if raised is not None:
        await wait_for_log(caplog, name, "Traceback (most recent call last)")
        await wait_for_log(caplog, name, raised)
        if body != "badtype":  # the others raise inside the handler itself
            await wait_for_log(caplog, name, "handler.py", "in handle")


# -- worker death -------------------------------------------------------------------------------
async def test_worker_exit_mid_batch_fails_request_and_worker_restarts(
    server: Server, model_store: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    handler_archive(model_store, "failing", FAILING_HANDLER)
    handler_archive(model_store, "echo", ECHO_HANDLER)
    await register_ok(server, "failing.mar")
    await register_ok(server, "echo.mar")
    before = await only_worker(server, "failing")

    with trio.fail_after(5):
        response = await server.inference.post("/predictions/failing", content=b"exit")
    assert response.status_code == 500
    assert response.json() == backend_error(
        500, "Worker died. (exit code 3; last stderr: about to exit)"
    )
    await echo_ok(server)

    after = await wait_replaced(server, "failing", before["pid"])
    assert after["id"] == before["id"]  # a restarted worker keeps its id (contract §8.1)
    good = await server.inference.post("/predictions/failing", content=b"fine")
    assert good.status_code == 200
    assert good.content == b"ok"
    name = worker_name(before, "failing")
    # The last words on stderr before the exit still reach the log.
    await wait_for_log(caplog, name, "about to exit")
    await wait_for_log(caplog, name, "exit code 3")


async def test_dying_words_without_newline_are_logged_and_explain_the_death(
    server: Server, model_store: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    handler_archive(model_store, "dying", DYING_HANDLER)
    await register_ok(server, "dying.mar")
    name = worker_name(await only_worker(server, "dying"), "dying")
    response = await server.inference.post("/predictions/dying", content=b"x")
    assert response.json() == backend_error(
        500, "Worker died. (exit code 4; last stderr: last words without a newline)"
    )
    await wait_for_log(caplog, f"[{name}] last words without a newline")
    await wait_for_log(caplog, name, "exit code 4", "Last stderr: last words without a newline")


@pytest.mark.skipif(not Path("/proc/self/timerslack_ns").exists(), reason="Linux >= 4.6")
async def test_worker_fires_its_timers_without_linux_default_slack(
    server: Server, model_store: Path
) -> None:
    handler_archive(model_store, "echo", ECHO_HANDLER)
    await register_ok(server, "echo.mar")
    worker = await only_worker(server, "echo")
    slack = await trio.Path(f"/proc/{worker['pid']}/timerslack_ns").read_text()
    assert int(slack) == TIMER_SLACK_NS < 50_000


GC_HANDLER = """
import gc


def handle(data, context):
    if data is None:
        return None
    return [{"frozen": gc.get_freeze_count()} for _ in data]
"""


async def test_worker_freezes_what_the_load_left_out_of_the_collectors_way(
    server: Server, model_store: Path
) -> None:
    handler_archive(model_store, "gc", GC_HANDLER)
    await register_ok(server, "gc.mar")
    response = await server.inference.post("/predictions/gc", content=b"x")
    assert response.status_code == 200
    assert response.json()["frozen"] > 1000  # the handler's module, the backend, protobuf


async def test_worker_ignores_sigint_meant_for_the_frontend(
    server: Server, model_store: Path
) -> None:
    """Ctrl-C signals the terminal's whole process group; the frontend decides what stops."""
    handler_archive(model_store, "echo", ECHO_HANDLER)
    await register_ok(server, "echo.mar")
    before = await only_worker(server, "echo")
    os.kill(before["pid"], signal.SIGINT)
    await echo_ok(server)  # answered after the signal was delivered to an idle worker
    after = await only_worker(server, "echo")
    assert (after["pid"], after["status"]) == (before["pid"], "READY")


async def test_killed_idle_worker_is_replaced_without_losing_a_request(
    server: Server, model_store: Path
) -> None:
    handler_archive(model_store, "echo", ECHO_HANDLER)
    await register_ok(server, "echo.mar")
    await echo_ok(server)
    before = await only_worker(server, "echo")

    os.kill(before["pid"], signal.SIGKILL)

    async def death_noticed() -> bool:
        found = await workers(server, "echo")
        return not (found and found[0]["status"] == "READY" and found[0]["pid"] == before["pid"])

    # A batch written to a process that is dying but not yet reaped cannot be told apart from
    # a death mid-batch (contract: "Worker died."), so wait until the server has noticed.
    await wait_until(death_noticed, RECOVERY_S)
    # Sent while the worker restarts (back-off): it waits in the queue for the replacement.
    with trio.fail_after(RECOVERY_S):
        response = await server.inference.post("/predictions/echo", content=b"after kill")
    assert response.status_code == 200
    assert response.content == b"after kill"
    await wait_replaced(server, "echo", before["pid"])
    await echo_ok(server)


async def test_busy_worker_killed_by_sigkill_answers_507(server: Server, model_store: Path) -> None:
    """SIGKILL is what the OOM killer sends; TorchServe sees exit code 137 and answers 507."""
    handler_archive(model_store, "slow", INSPECT_HANDLER)
    await register_ok(server, "slow.mar")
    model = server.state.registry.resolve("slow")
    before = await only_worker(server, "slow")
    result: list[httpx.Response] = []

    async def busy() -> bool:
        return bool(model.statistics().in_flight == 1)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(post_into, result, server, "slow", "30")
            await wait_until(busy, 10.0)
            os.kill(before["pid"], signal.SIGKILL)
    assert result[0].status_code == 507
    assert result[0].json() == backend_error(507, "Worker died. (killed by signal SIGKILL)")
    await wait_replaced(server, "slow", before["pid"])
    good = await server.inference.post("/predictions/slow", content=b"quick")
    assert good.json()["values"] == {"body": "quick"}


async def test_response_timeout_fails_request_and_replaces_worker(
    server: Server, model_store: Path
) -> None:
    handler_archive(model_store, "slow", INSPECT_HANDLER)
    await register_ok(server, "slow.mar", response_timeout="1")
    before = await only_worker(server, "slow")

    start = trio.current_time()
    with trio.fail_after(4):
        response = await server.inference.post(
            "/predictions/slow", content=b"x", headers={"x-sleep": "5"}
        )
    assert response.status_code == 500
    assert response.json() == backend_error(
        500, "Worker died. (killed after exceeding response_timeout of 1 s)"
    )
    assert 1.0 <= trio.current_time() - start < 2.5

    await wait_replaced(server, "slow", before["pid"])

    async def old_process_gone() -> bool:
        return not pid_alive(before["pid"])

    await wait_until(old_process_gone, 10.0)
    good = await server.inference.post("/predictions/slow", content=b"quick")
    assert good.status_code == 200
    assert good.json()["values"] == {"body": "quick"}


async def test_unregister_timeout_answers_the_request_in_flight(
    server_factory: Any, model_store: Path
) -> None:
    server: Server = await server_factory(make_config(model_store, unregister_model_timeout=1))
    handler_archive(model_store, "slow", INSPECT_HANDLER)
    await register_ok(server, "slow.mar")
    model = server.state.registry.resolve("slow")
    result: list[httpx.Response] = []

    async def busy() -> bool:
        return bool(model.statistics().in_flight == 1)

    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(post_into, result, server, "slow", "30")
            await wait_until(busy, 10.0)
            deleted = await server.management.delete("/models/slow")
            assert deleted.status_code == 408
            assert deleted.json()["message"] == "Timed out while cleaning resources: slow"
    assert result[0].status_code == 500
    assert result[0].json() == backend_error(500, "Worker died.")


@pytest.mark.parametrize(
    "size",
    [
        pytest.param(1001, id="body-over-limit"),
        # Over the whole frame's limit too: refused by its length prefix, before it is read.
        pytest.param(2 << 20, id="frame-over-limit"),
    ],
)
async def test_response_over_max_response_size_is_worker_died_and_worker_restarts(
    server_factory: Any, model_store: Path, caplog: pytest.LogCaptureFixture, size: int
) -> None:
    """Contract §5.2: a response over the limit drops the worker's connection."""
    caplog.set_level(logging.INFO)
    server: Server = await server_factory(make_config(model_store, max_response_size=1000))
    handler_archive(model_store, "sized", SIZED_RESPONSE_HANDLER)
    handler_archive(model_store, "echo", ECHO_HANDLER)
    await register_ok(server, "sized.mar")
    await register_ok(server, "echo.mar")
    before = await only_worker(server, "sized")
    at_limit = await server.inference.post("/predictions/sized", content=b"1000")
    assert at_limit.status_code == 200
    assert at_limit.content == b"x" * 1000

    with trio.fail_after(10):
        response = await server.inference.post("/predictions/sized", content=b"%d" % size)
    assert response.status_code == 500
    assert response.json() == backend_error(500, "Worker died.")
    await echo_ok(server)

    after = await wait_replaced(server, "sized", before["pid"])
    assert after["id"] == before["id"]
    good = await server.inference.post("/predictions/sized", content=b"10")
    assert good.status_code == 200
    assert good.content == b"x" * 10
    await wait_for_log(caplog, worker_name(before, "sized"), "process ended", "exceeds")


# -- load failure and health --------------------------------------------------------------------
async def test_failed_initialize_is_reported_unhealthy_and_not_retried_in_a_loop(
    server: Server, model_store: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    handler_archive(model_store, "echo", ECHO_HANDLER)
    handler_archive(model_store, "broken", BROKEN_INIT_HANDLER)
    await register_ok(server, "echo.mar")
    accepted = await register(server, "broken.mar", synchronous="false")
    assert accepted.status_code == 202

    async def unhealthy() -> bool:
        return (await server.inference.get("/ping")).status_code == 500

    await wait_until(unhealthy, RECOVERY_S)
    ping = await server.inference.get("/ping")
    assert ping.json() == {"status": "Unhealthy"}
    worker = await only_worker(server, "broken")
    assert worker["status"] != "READY"
    name = worker_name(worker, "broken")
    await wait_for_log(caplog, name, "cannot load weights")

    rejected = await server.inference.post("/predictions/broken", content=b"x")
    assert rejected.status_code == 503
    assert rejected.json() == no_worker_error("broken")
    await echo_ok(server)

    # An observation window, not synchronisation: a tight restart loop would load many times.
    await trio.sleep(2.5)
    attempts = [line for line in log_lines(caplog) if name in line and "load failed" in line]
    assert 1 <= len(attempts) <= 3, attempts
    assert (await only_worker(server, "broken"))["status"] != "READY"

    assert (await server.management.delete("/models/broken")).status_code == 200
    healthy = await server.inference.get("/ping")
    assert healthy.status_code == 200
    assert healthy.json() == {"status": "Healthy"}


async def test_sync_register_of_worker_dying_while_loading_fails_instead_of_hanging(
    server: Server, model_store: Path
) -> None:
    handler_archive(model_store, "crashy", CRASH_AT_LOAD_HANDLER)
    with trio.fail_after(RECOVERY_S):
        response = await register(server, "crashy.mar")
    assert response.status_code == 500
    assert response.json() == {
        "code": 500,
        "type": "InternalServerException",
        "message": "Failed to start workers for model crashy version: 1.0",
    }
    assert (await server.management.get("/models/crashy")).status_code == 404


async def test_rescaling_a_model_whose_workers_failed_replaces_them(
    server: Server, model_store: Path
) -> None:
    handler_archive(model_store, "broken", BROKEN_INIT_HANDLER)
    await register_ok(server, "broken.mar", initial_workers="0")
    seen: list[set[str]] = []
    for _ in range(2):
        scaled = await server.management.put(
            "/models/broken", params={"min_worker": "2", "synchronous": "true"}
        )
        assert scaled.status_code == 500
        found = await workers(server, "broken")
        assert len(found) <= 2, found
        seen.append({w["id"] for w in found})
    assert seen[0].isdisjoint(seen[1])  # the second scale's workers replaced the first's
    assert len(server.state.registry.resolve("broken").workers) == 2


async def test_worker_failing_past_max_retry_timeout_is_given_up(
    server: Server, model_store: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    handler_archive(
        model_store, "crashy", CRASH_AT_LOAD_HANDLER, config_yaml="maxRetryTimeoutInSec: 2\n"
    )
    accepted = await register(server, "crashy.mar", synchronous="false")
    assert accepted.status_code == 202

    # A worker that never loaded does not count as healthy (so /ping says so at once).
    assert (await server.inference.get("/ping")).status_code == 500
    name = worker_name(await only_worker(server, "crashy"), "crashy")
    # Restarted with back-off (1 s, 1 s, ...) until it has failed for over 2 s, then given up.
    with trio.fail_after(RECOVERY_S):
        await wait_for_log(caplog, name, "maxRetryTimeoutInSec")
    deaths = [line for line in log_lines(caplog) if name in line and "process ended" in line]
    assert len(deaths) >= 2
    for line in deaths:  # each death is explained by its own process's last words only
        assert line.endswith("Last stderr: crashing during load"), line
    assert (await only_worker(server, "crashy"))["status"] != "READY"
    rejected = await server.inference.post("/predictions/crashy", content=b"x")
    assert rejected.json() == no_worker_error("crashy")


# -- entry points (contract §7.1) ---------------------------------------------------------------
@pytest.mark.parametrize("handler", ["custom_entry:serve", "custom_entry.py:serve"])
async def test_module_function_handler_string_uses_that_function(
    server: Server, model_store: Path, handler: str
) -> None:
    source_archive(model_store, "named", {"custom_entry.py": NAMED_FUNCTION_HANDLER}, handler)
    await register_ok(server, "named.mar")
    await server.inference.post("/predictions/named", content=b"1")
    response = await server.inference.post("/predictions/named", content=b"2")
    assert response.status_code == 200
    assert response.json() == {
        "calls": [
            {"data": None, "context": "Context"},
            {"data": 1, "context": "Context"},
            {"data": 1, "context": "Context"},
        ]
    }


async def test_function_entry_is_called_once_with_none_at_load(
    server: Server, model_store: Path
) -> None:
    handler_archive(model_store, "func", DEFAULT_FUNCTION_HANDLER)
    await register_ok(server, "func.mar")
    first = await server.inference.post("/predictions/func", content=b"1")
    assert first.json()["calls"] == [
        {"data": None, "context": "Context"},
        {"data": 1, "context": "Context"},
    ]
    second = await server.inference.post("/predictions/func", content=b"2")
    assert [c["data"] for c in second.json()["calls"]] == [None, 1, 1]


async def test_handler_class_is_initialized_once_per_worker(
    server: Server, model_store: Path
) -> None:
    handler_archive(model_store, "counting", COUNTING_CLASS_HANDLER)
    await register_ok(server, "counting.mar")
    bodies = [
        (await server.inference.post("/predictions/counting", content=b"x")).json()
        for _ in range(3)
    ]
    assert [b["inits"] for b in bodies] == [1, 1, 1]
    assert [b["handled"] for b in bodies] == [1, 2, 3]
    assert {b["pid"] for b in bodies} == {(await only_worker(server, "counting"))["pid"]}
    assert bodies[0]["model"] == "counting"


# -- Context (contract §7.3) --------------------------------------------------------------------
CONTEXT_YAML = """\
batchSize: 2
maxBatchDelay: 5000
handler:
  threshold: 0.5
  labels: [cat, dog]
"""


async def test_context_properties_request_ids_and_response_headers(
    server: Server, model_store: Path
) -> None:
    handler_archive(model_store, "ctx", CONTEXT_HANDLER, config_yaml=CONTEXT_YAML)
    await register_ok(server, "ctx.mar")
    responses: list[httpx.Response] = []

    async def one(i: int) -> None:
        responses.append(await server.inference.post("/predictions/ctx", content=b"%d" % i))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for i in range(2):
                nursery.start_soon(one, i)

    bodies = [r.json() for r in responses]
    model_dir = server.state.registry.resolve("ctx").model_dir
    by_index: dict[str, str] = {}
    for response, body in zip(responses, bodies, strict=True):
        assert response.status_code == 200
        request_id = response.headers["x-request-id"]
        assert body["request_id"] == request_id
        assert response.headers["x-seen-request-id"] == request_id
        assert response.headers["x-handler"] == "context"
        by_index[str(body["index"])] = request_id
        assert body["model_name"] == "ctx"
        assert body["system_properties"] == {
            "model_dir": model_dir,
            "gpu_id": None,
            "batch_size": 2,
            "server_name": "MMS",
            "server_version": "0.12.0",
            "limit_max_image_pixels": True,
        }
        assert body["cwd"] == model_dir
        assert body["manifest"] == json.loads(
            manifest("ctx", "handler.py", "1.0", configFile="model-config.yaml")
        )
        assert body["model_yaml_config"] == yaml.safe_load(CONTEXT_YAML)
    # One batch of two: each request saw the same id map and found itself at its own index.
    assert sorted(by_index) == ["0", "1"]
    assert [b["request_ids"] for b in bodies] == [by_index, by_index]
    assert (Path(model_dir) / "MAR-INF" / "MANIFEST.json").is_file()


async def test_worker_output_is_logged_naming_model_and_worker(
    server: Server,
    model_store: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.INFO)
    # The worker must not rely on the operator's environment to flush what it prints.
    monkeypatch.delenv("PYTHONUNBUFFERED", raising=False)
    handler_archive(model_store, "printer", PRINTING_HANDLER)
    await register_ok(server, "printer.mar")
    name = worker_name(await only_worker(server, "printer"), "printer")
    # Printed at import time, before any batch: output must not sit in a pipe buffer.
    await wait_for_log(caplog, name, "stdout line at load")
    await wait_for_log(caplog, name, "stderr line at load")
    response = await server.inference.post("/predictions/printer", content=b"x")
    assert response.content == b"printed"
    await wait_for_log(caplog, name, "stdout line in batch")
    await wait_for_log(caplog, name, "stderr line in batch")
    worker_records = [r for r in caplog.records if "stdout line in batch" in r.getMessage()]
    assert all("printer" in r.name for r in worker_records)


# -- queue and admission (contract §8.2) --------------------------------------------------------
async def test_full_job_queue_rejects_extra_requests_at_once(
    server: Server, model_store: Path
) -> None:
    handler_archive(model_store, "queued", INSPECT_HANDLER, config_yaml="jobQueueSize: 2\n")
    await register_ok(server, "queued.mar")
    model = server.state.registry.resolve("queued")
    results: dict[str, httpx.Response] = {}

    async def request(label: str, sleep: str) -> None:
        headers = {"x-sleep": sleep} if sleep else {}
        results[label] = await server.inference.post(
            "/predictions/queued", content=label.encode(), headers=headers
        )

    async def in_flight() -> bool:
        return bool(model.statistics().in_flight == 1)

    async def queue_full() -> bool:
        response = await server.management.get("/models/queued")
        status: dict[str, int] = response.json()[0]["jobQueueStatus"]
        return status == {"remainingCapacity": 0, "pendingRequests": 2}

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(request, "a", "3")
            await wait_until(in_flight, 10.0)
            nursery.start_soon(request, "b", "")
            nursery.start_soon(request, "c", "")
            await wait_until(queue_full, 10.0)
            start = trio.current_time()
            rejected = await server.inference.post("/predictions/queued", content=b"d")
            assert trio.current_time() - start < 1.0
            assert rejected.status_code == 503
            assert rejected.json() == no_worker_error("queued")
    for label in "abc":
        assert results[label].status_code == 200
        assert results[label].json()["values"] == {"body": label}


async def test_model_scaled_to_zero_workers_rejects_with_503(
    server: Server, model_store: Path
) -> None:
    handler_archive(model_store, "echo", ECHO_HANDLER)
    await register_ok(server, "echo.mar")
    await echo_ok(server)
    scaled = await server.management.put(
        "/models/echo", params={"min_worker": "0", "max_worker": "0", "synchronous": "true"}
    )
    assert scaled.status_code == 200

    async def no_workers() -> bool:
        return await workers(server, "echo") == []

    await wait_until(no_workers, RECOVERY_S)
    response = await server.inference.post("/predictions/echo", content=b"x")
    assert response.status_code == 503
    assert response.json() == no_worker_error("echo")
    assert (await server.inference.get("/ping")).status_code == 200


# -- batching and streaming ---------------------------------------------------------------------
async def test_concurrent_requests_share_a_batch_and_get_their_own_outputs(
    server: Server, model_store: Path
) -> None:
    handler_archive(model_store, "inspect", INSPECT_HANDLER)
    await register_ok(server, "inspect.mar", batch_size="4", max_batch_delay="5000")
    responses: dict[str, httpx.Response] = {}

    async def one(label: str) -> None:
        responses[label] = await server.inference.post(
            "/predictions/inspect", content=label.encode()
        )

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for i in range(4):
                nursery.start_soon(one, f"request-{i}")

    pids = set()
    for label, response in responses.items():
        body = response.json()
        assert body["batch_size"] == 4
        assert body["values"] == {"body": label}
        assert body["request_id"] == response.headers["x-request-id"]
        pids.add(body["pid"])
    assert len(pids) == 1
    assert len({r.headers["x-request-id"] for r in responses.values()}) == 4


async def test_streaming_handler_sends_a_chunked_response(
    server: Server, model_store: Path
) -> None:
    handler_archive(model_store, "stream", STREAMING_HANDLER)
    await register_ok(server, "stream.mar")
    response = await server.inference.post("/predictions/stream", content=b"x")
    assert response.status_code == 200
    assert response.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in response.headers
    assert response.headers["ts_stream_next"] == "true"
    assert response.content == b"hello hello world"


async def test_stream_cut_short_by_a_handler_error_is_not_a_complete_response(
    server: Server, model_store: Path
) -> None:
    handler_archive(model_store, "cutoff", STREAM_THEN_FAIL_HANDLER)
    await register_ok(server, "cutoff.mar")
    with pytest.raises(httpx.RemoteProtocolError):
        await server.inference.post("/predictions/cutoff", content=b"x")
