"""Config snapshots through the real `trioserve run` command: written after each change, restored
on a restart without a config file, neither read nor written with --ncs (contract §5.4)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.models import ECHO_HANDLER, INSPECT_HANDLER, handler_archive
from tests.support.spawn import START_LIMIT_S, free_ports, spawned, stop, trioserve
from trioserve.config import Address, default_config
from trioserve.config_sources import parse_properties
from trioserve.models import snapshot
from trioserve.models.snapshot import VersionState

# What describe says about a version that a restart must bring back.
KEPT = (
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
)


@dataclasses.dataclass
class Site:
    """One user's working directory: cwd, LOG_LOCATION, TMPDIR, a model store and ports."""

    root: Path
    ports: dict[str, int]

    @property
    def store(self) -> Path:
        return self.root / "store"

    @property
    def snapshots(self) -> Path:
        return self.root / "logs" / "config"

    @property
    def management(self) -> str:
        return f"http://127.0.0.1:{self.ports['management']}"

    @property
    def inference(self) -> str:
        return f"http://127.0.0.1:{self.ports['inference']}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("TS_CONFIG_FILE", None)
        env["TMPDIR"] = str(self.root / "tmp")
        env["LOG_LOCATION"] = "logs"  # relative: the snapshot dir follows the cwd
        return env

    def write_properties(self, extra: str = "") -> None:
        (self.root / "config.properties").write_text(
            f"inference_address=http://127.0.0.1:{self.ports['inference']}\n"
            f"management_address=http://127.0.0.1:{self.ports['management']}\n"
            f"metrics_address=http://127.0.0.1:{self.ports['metrics']}\n" + extra
        )

    def snapshot_names(self) -> list[str]:
        return sorted(os.listdir(self.snapshots)) if self.snapshots.is_dir() else []

    def plant_snapshot(self, models: dict[str, dict[str, VersionState]]) -> Path:
        """A snapshot as a previous run would have left it."""
        address = Address("http", "127.0.0.1", 0)
        config = dataclasses.replace(
            default_config(),
            inference_address=dataclasses.replace(address, port=self.ports["inference"]),
            management_address=dataclasses.replace(address, port=self.ports["management"]),
            metrics_address=dataclasses.replace(address, port=self.ports["metrics"]),
            model_store=str(self.store),
        )
        return snapshot.write_snapshot(self.snapshots, "shutdown", 1768215600123, config, models)


@pytest.fixture
def site(tmp_path: Path) -> Site:
    (tmp_path / "tmp").mkdir()
    (tmp_path / "store").mkdir()
    return Site(tmp_path, free_ports())


@pytest.fixture
def servers() -> Iterator[ExitStack]:
    """Where ``start`` leaves the servers of a test: each is killed after it, if still running."""
    with ExitStack() as started:
        yield started


def start(servers: ExitStack, site: Site, *args: str) -> subprocess.Popen[bytes]:
    """`trioserve run ARGS…` in the site's directory, once it has started."""
    return servers.enter_context(spawned(list(args), site.root, env=site.env()))


def ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    return response.json()


def describe(site: Site, name: str) -> list[dict[str, Any]]:
    return ok(httpx.get(f"{site.management}/models/{name}/all", timeout=30))  # type: ignore[no-any-return]


def kept(site: Site) -> dict[str, Any]:
    """Every model version's restorable settings and the default version of each model."""
    names = [m["modelName"] for m in ok(httpx.get(f"{site.management}/models"))["models"]]
    versions = {
        (v["modelName"], v["modelVersion"]): {key: v[key] for key in KEPT}
        for name in names
        for v in describe(site, name)
    }
    defaults = {
        name: ok(httpx.get(f"{site.management}/models/{name}"))[0]["modelVersion"] for name in names
    }
    return {"versions": versions, "defaults": defaults}


def wait_workers(site: Site, name: str, version: str, count: int) -> None:
    deadline = time.monotonic() + START_LIMIT_S
    workers: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        workers = ok(httpx.get(f"{site.management}/models/{name}/{version}"))[0]["workers"]
        if len(workers) == count and all(w["status"] == "READY" for w in workers):
            return
        time.sleep(0.1)
    raise AssertionError(f"{name} {version}: wanted {count} ready workers, have {workers}")


def models_in(path: Path) -> dict[str, dict[str, VersionState]]:
    text = parse_properties(path.read_text(encoding="utf-8"))["model_snapshot"]
    return snapshot.restore_plan(json.loads(text), str(path))


def test_restart_restores_models_versions_default_and_workers(
    site: Site, servers: ExitStack
) -> None:
    handler_archive(site.store, "echo", ECHO_HANDLER, filename="echo_v1.mar")
    handler_archive(site.store, "echo", ECHO_HANDLER, version="2.0", filename="echo_v2.mar")
    inspect = handler_archive(site.store, "inspect", INSPECT_HANDLER)
    elsewhere = site.root / "elsewhere"
    elsewhere.mkdir()
    fetched = handler_archive(elsewhere, "fetched", ECHO_HANDLER).as_uri()
    site.write_properties("job_queue_size=9\n")

    first = start(servers, site, "--model-store", "store")
    assert [name.split("-", 1)[1] for name in site.snapshot_names()] == ["startup.cfg"]
    mgmt = site.management
    ok(httpx.post(f"{mgmt}/models?url=echo_v1.mar&initial_workers=1&synchronous=true", timeout=90))
    ok(httpx.post(f"{mgmt}/models?url=echo_v2.mar"))  # 0 initial workers
    ok(
        httpx.post(
            f"{mgmt}/models",
            params={
                "url": str(inspect),  # an absolute path is kept as given
                "model_name": "renamed",
                "batch_size": "3",
                "max_batch_delay": "70",
                "response_timeout": "33",
            },
        )
    )
    ok(httpx.post(f"{mgmt}/models", params={"url": fetched}))  # copied into the store
    ok(httpx.put(f"{mgmt}/models/echo/2.0?min_worker=1&max_worker=2&synchronous=true", timeout=90))
    ok(httpx.put(f"{mgmt}/models/echo/2.0/set-default"))
    assert len(site.snapshot_names()) == 7  # startup + one per change
    # A call that changes nothing writes nothing.
    assert httpx.put(f"{mgmt}/models/nope?min_worker=1").status_code == 404
    assert httpx.put(f"{mgmt}/models/echo/2.0/set-default").status_code == 200
    assert len(site.snapshot_names()) == 7
    before = kept(site)
    assert before["defaults"] == {"echo": "2.0", "fetched": "1.0", "renamed": "1.0"}
    assert before["versions"][("renamed", "1.0")]["modelUrl"] == str(inspect)
    assert stop(first) == 0

    names = site.snapshot_names()
    kinds = [name.split("-", 1)[1] for name in names]  # sorted by stamp = order written
    assert kinds == ["startup.cfg", *["snapshot.cfg"] * 6, "shutdown.cfg"]
    assert snapshot.latest(names) == names[-1]
    shutdown = models_in(site.snapshots / names[-1])
    assert shutdown["echo"]["2.0"] == VersionState(
        "echo_v2.mar", True, 1, 2, 1, 100, 120, 120, "python"
    )
    assert shutdown["renamed"]["1.0"].mar_name == str(inspect)
    assert shutdown["fetched"]["1.0"].mar_name == fetched  # the URL, not the store's copy

    # If ./config.properties were read now, the start would fail on it: the snapshot wins.
    (site.root / "config.properties").write_text("job_queue_size=lots\n")
    second = start(servers, site)
    assert kept(site) == before
    wait_workers(site, "echo", "1.0", 1)
    wait_workers(site, "echo", "2.0", 1)
    described = ok(httpx.get(f"{mgmt}/models/renamed"))[0]
    assert described["workers"] == []
    assert described["jobQueueStatus"]["remainingCapacity"] == 9  # config restored too
    reply = httpx.post(f"{site.inference}/predictions/echo", content=b"back again", timeout=60)
    assert reply.content == b"back again"
    restarted = site.snapshot_names()[-1]
    assert restarted.endswith("-startup.cfg")
    assert models_in(site.snapshots / restarted) == shutdown
    # The URL's copy in the store was reused, and still belongs to the model: unregister
    # deletes it as it deletes any download.
    assert (site.store / "fetched.mar").is_file()
    ok(httpx.delete(f"{mgmt}/models/fetched"))
    assert not (site.store / "fetched.mar").exists()
    assert (elsewhere / "fetched.mar").is_file()
    assert "fetched" not in models_in(site.snapshots / site.snapshot_names()[-1])
    assert stop(second) == 0


def test_ncs_neither_restores_nor_writes_snapshots(site: Site, servers: ExitStack) -> None:
    handler_archive(site.store, "echo", ECHO_HANDLER)
    planted = site.plant_snapshot({"echo": {"1.0": VersionState("echo.mar", True, 0, 0)}})
    site.write_properties()
    server = start(servers, site, "--ncs", "--model-store", "store")
    assert ok(httpx.get(f"{site.management}/models")) == {"models": []}
    ok(httpx.post(f"{site.management}/models?url=echo.mar"))
    ok(httpx.put(f"{site.management}/models/echo?min_worker=0&synchronous=true"))
    assert stop(server) == 0
    assert site.snapshot_names() == [planted.name]


def test_snapshot_naming_a_missing_archive_stops_the_start(site: Site) -> None:
    handler_archive(site.store, "echo", ECHO_HANDLER)
    site.plant_snapshot(
        {
            "echo": {"1.0": VersionState("echo.mar", True, 0, 0)},
            "gone": {"1.0": VersionState("gone.mar", True, 1, 1)},
        }
    )
    before = site.snapshot_names()
    result = subprocess.run(
        trioserve("run"),
        cwd=site.root,
        env=site.env(),
        capture_output=True,
        text=True,
        timeout=START_LIMIT_S,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"archive not found: {site.store / 'gone.mar'}" in result.stderr
    assert "model gone version 1.0" in result.stderr
    assert "Model server started." not in result.stdout
    assert site.snapshot_names() == before  # no startup snapshot without the model
