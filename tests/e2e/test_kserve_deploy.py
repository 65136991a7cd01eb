"""The KServe runtime container as a pod would run it: exactly the args and env of
deploy/kserve/servingruntime.yaml, rendered for the sample InferenceService, on a /mnt/models
laid out from deploy/kserve/config/ (ports moved to free ones, paths to a temporary directory)
with a real model archive. It answers KServe's protocols and the metrics scrape, then drains
and exits 0 on SIGTERM as the kubelet stops it."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import psutil
import pytest

from tests.support.kserve import (
    MOUNT,
    container_for,
    inference_service,
    lay_out_models,
    model_snapshot,
    runtimes,
)
from tests.support.models import expected_probs
from tests.support.spawn import env_for, free_port
from trioserve.grpc._proto import open_inference_pb2 as oip

START_LIMIT_S = 120.0
VALUES = [0.5, -1.0, 2.0, 0.25]  # one row for the archive's 4 -> 3 TorchScript net


@dataclass
class Pod:
    process: subprocess.Popen[bytes]
    ports: dict[int, int]  # the container's port -> the free port it was moved to
    model: str
    log: Path

    def url(self, port: int, path: str) -> str:
        return f"http://127.0.0.1:{self.ports[port]}{path}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def pod(tmp_path: Path, isvc_name: str) -> Iterator[Pod]:
    """Start the runtime container of ``isvc_name``'s runtime; kill it if the test did not
    stop it."""
    isvc = inference_service(isvc_name)
    runtime = runtimes()[isvc["spec"]["predictor"]["model"]["runtime"]]
    container = container_for(runtime, isvc)
    ports = {port: free_port() for port in (8080, 8081, 8082, 7070, 7071)}
    mount = tmp_path / "mnt" / "models"
    properties = lay_out_models(mount, ports)
    (model,) = model_snapshot(properties)["models"]
    program, *args = (arg.replace(MOUNT, str(mount)) for arg in container["args"])
    # The console script, as it is on the image's PATH (the image's tini is left out).
    command = [str(Path(sys.executable).parent / program), *args]
    home = tmp_path / "home"  # the image's writable WORKDIR
    home.mkdir()
    (home / "tmp").mkdir()
    env = env_for(home) | {e["name"]: e["value"] for e in container["env"]}
    log = tmp_path / "pod.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=home, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield Pod(process, ports, model, log)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def wait_for(pod: Pod, ready: Any, what: str) -> None:
    deadline = time.monotonic() + START_LIMIT_S
    while time.monotonic() < deadline:
        assert pod.process.poll() is None, f"server exited:\n{pod.output()}"
        try:
            if ready():
                return
        except httpx.HTTPError:
            pass
        except grpc.RpcError as exc:
            if exc.code() is grpc.StatusCode.UNIMPLEMENTED:  # waiting would not help
                raise AssertionError(f"{what}: {exc.details()}") from None
        time.sleep(0.1)
    raise AssertionError(f"{what} not ready in time:\n{pod.output()}")


def stop(pod: Pod) -> None:
    """SIGTERM, as the kubelet sends it: exit 0, and no worker process left."""
    described = httpx.get(pod.url(8081, f"/models/{pod.model}"), timeout=10).json()
    workers = [w["pid"] for w in described[0]["workers"]]
    assert workers
    pod.process.send_signal(signal.SIGTERM)
    assert pod.process.wait(timeout=60) == 0, pod.output()
    deadline = time.monotonic() + 10
    while any(psutil.pid_exists(pid) for pid in workers):
        assert time.monotonic() < deadline, f"workers {workers} outlived the server"
        time.sleep(0.05)


def approx(values: list[float]) -> Any:
    return pytest.approx(values, rel=1e-5, abs=1e-6)


def test_the_rest_runtime_serves_kserve_v1_v2_and_metrics_then_drains(tmp_path: Path) -> None:
    with pod(tmp_path, "inferenceservice.yaml") as p:
        probe = runtimes()["kserve-trioserve"]["spec"]["containers"][0]["readinessProbe"]
        wait_for(
            p,
            lambda: httpx.get(p.url(8080, probe["httpGet"]["path"]), timeout=5).status_code == 200,
            "readiness probe",
        )
        m = p.model
        expected = expected_probs(VALUES)

        assert httpx.get(p.url(8080, "/v1/models")).json() == {"models": [m]}
        assert httpx.get(p.url(8080, f"/v1/models/{m}")).json() == {"name": m, "ready": True}
        v1 = httpx.post(p.url(8080, f"/v1/models/{m}:predict"), json={"instances": [VALUES]})
        assert v1.status_code == 200, v1.text
        (row,) = v1.json()["predictions"]
        assert row == approx(expected)

        assert httpx.get(p.url(8080, "/v2/health/live")).json() == {"live": True}
        assert httpx.get(p.url(8080, "/v2/health/ready")).json() == {"ready": True}
        assert httpx.get(p.url(8080, f"/v2/models/{m}/ready")).status_code == 200
        request = {
            "id": "req-1",
            "inputs": [{"name": "input-0", "shape": [4], "datatype": "FP32", "data": VALUES}],
        }
        v2 = httpx.post(p.url(8080, f"/v2/models/{m}/infer"), json=request)
        assert v2.status_code == 200, v2.text
        reply = v2.json()
        assert (reply["id"], reply["model_name"], reply["model_version"]) == ("req-1", m, "1.0")
        (output,) = reply["outputs"]
        assert output["shape"] == [3]
        assert output["data"] == approx(expected)

        scrape = httpx.get(p.url(8082, "/metrics"))
        assert scrape.status_code == 200
        assert scrape.headers["content-type"].startswith("text/plain")
        counted = [
            line
            for line in scrape.text.splitlines()
            if line.startswith("ts_inference_requests_total{") and f'model_name="{m}"' in line
        ]
        assert counted, scrape.text
        assert float(counted[0].rsplit(" ", 1)[1]) >= 2  # the v1 and the v2 request

        stop(p)


def _rpc(channel: grpc.Channel, method: str, request: Any, reply: Any) -> Any:
    call = channel.unary_unary(
        f"/inference.GRPCInferenceService/{method}",
        request_serializer=type(request).SerializeToString,
        response_deserializer=reply.FromString,
    )
    return call(request, timeout=30)


def test_the_grpc_runtime_serves_the_open_inference_protocol_then_drains(tmp_path: Path) -> None:
    with pod(tmp_path, "inferenceservice-grpc.yaml") as p:
        (port,) = runtimes()["kserve-trioserve-grpc"]["spec"]["containers"][0]["ports"]
        assert port["name"] == "h2c"
        m = p.model
        with grpc.insecure_channel(f"127.0.0.1:{p.ports[port['containerPort']]}") as channel:
            ready = oip.ModelReadyRequest(name=m)
            wait_for(
                p,
                lambda: _rpc(channel, "ModelReady", ready, oip.ModelReadyResponse).ready,
                "gRPC ModelReady",
            )
            live = _rpc(channel, "ServerLive", oip.ServerLiveRequest(), oip.ServerLiveResponse)
            assert live.live
            server = _rpc(channel, "ServerReady", oip.ServerReadyRequest(), oip.ServerReadyResponse)
            assert server.ready
            request = oip.ModelInferRequest(
                model_name=m,
                id="req-2",
                inputs=[
                    oip.ModelInferRequest.InferInputTensor(
                        name="input-0",
                        datatype="FP32",
                        shape=[4],
                        contents=oip.InferTensorContents(fp32_contents=VALUES),
                    )
                ],
            )
            reply = _rpc(channel, "ModelInfer", request, oip.ModelInferResponse)
        assert (reply.model_name, reply.id) == (m, "req-2")
        (output,) = reply.outputs
        assert list(output.shape) == [3]
        data = list(output.contents.fp64_contents) or list(output.contents.fp32_contents)
        assert data == approx(expected_probs(VALUES))
        stop(p)
