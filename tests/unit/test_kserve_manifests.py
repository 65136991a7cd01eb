"""The KServe deployment kit (deploy/kserve/): every manifest field is one that Kubernetes' or
KServe's schema defines, with a value of its type, and the runtimes, InferenceServices, sample
config and image agree on ports, paths, arguments and protocols."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client import models as k8s

from tests.support.kserve import (
    DEPLOY,
    MOUNT,
    ROOT,
    container_for,
    documents,
    inference_service,
    model_snapshot,
    render,
    runtimes,
    sample_properties,
)
from trioserve.cli import _parser
from trioserve.config_sources import load_config

REST_RUNTIME, GRPC_RUNTIME = "kserve-trioserve", "kserve-trioserve-grpc"
ISVCS = ("inferenceservice.yaml", "inferenceservice-grpc.yaml")
# KServe's protocolVersion values (pkg/constants: ProtocolV1, ProtocolV2, ProtocolGRPCV1/V2).
PROTOCOLS = {"v1", "v2", "grpc-v1", "grpc-v2"}

# -- schema ---------------------------------------------------------------------------------
# KServe's CRD fields, JSON name -> type, from the kserve 0.21 SDK's generated models
# (V1alpha1ServingRuntimeSpec, V1alpha1SupportedModelFormat, V1beta1InferenceServiceSpec,
# V1beta1PredictorSpec, V1beta1ModelSpec, V1beta1ModelFormat). The kserve package itself
# cannot be installed beside this project (it pins protobuf<7). Type names starting with V1
# and not listed here are Kubernetes types, looked up in the kubernetes client; "object" is a
# field whose contents are not checked.
_RUNTIME_SPEC = {
    "affinity": "V1Affinity",
    "annotations": "Dict[str, str]",
    "builtInAdapter": "object",
    "containers": "List[V1Container]",
    "disabled": "bool",
    "grpcDataEndpoint": "str",
    "grpcEndpoint": "str",
    "hostIPC": "bool",
    "httpDataEndpoint": "str",
    "imagePullSecrets": "List[V1LocalObjectReference]",
    "labels": "Dict[str, str]",
    "multiModel": "bool",
    "nodeSelector": "Dict[str, str]",
    "protocolVersions": "List[str]",
    "replicas": "int",
    "storageHelper": "object",
    "supportedModelFormats": "List[V1alpha1SupportedModelFormat]",
    "tolerations": "List[V1Toleration]",
    "volumes": "List[V1Volume]",
    "workerSpec": "object",
}
_PREDICTOR_OBJECTS = (
    "autoScaling batcher deploymentStrategy huggingface lightgbm logger onnx "
    "overhead paddle pmml pytorch sklearn storageUris tensorflow triton workerSpec xgboost"
)
_PREDICTOR_SPEC = {
    **dict.fromkeys(_PREDICTOR_OBJECTS.split(), "object"),
    "activeDeadlineSeconds": "int",
    "affinity": "V1Affinity",
    "annotations": "Dict[str, str]",
    "automountServiceAccountToken": "bool",
    "canaryTrafficPercent": "int",
    "containerConcurrency": "int",
    "containers": "List[V1Container]",
    "dnsConfig": "V1PodDNSConfig",
    "dnsPolicy": "str",
    "enableServiceLinks": "bool",
    "ephemeralContainers": "List[V1EphemeralContainer]",
    "hostAliases": "List[V1HostAlias]",
    "hostIPC": "bool",
    "hostNetwork": "bool",
    "hostPID": "bool",
    "hostUsers": "bool",
    "hostname": "str",
    "hostnameOverride": "str",
    "imagePullSecrets": "List[V1LocalObjectReference]",
    "initContainers": "List[V1Container]",
    "labels": "Dict[str, str]",
    "maxReplicas": "int",
    "minReplicas": "int",
    "model": "V1beta1ModelSpec",
    "nodeName": "str",
    "nodeSelector": "Dict[str, str]",
    "os": "V1PodOS",
    "preemptionPolicy": "str",
    "priority": "int",
    "priorityClassName": "str",
    "readinessGates": "List[V1PodReadinessGate]",
    "resourceClaims": "List[V1PodResourceClaim]",
    "resources": "V1ResourceRequirements",
    "restartPolicy": "str",
    "runtimeClassName": "str",
    "scaleMetric": "str",
    "scaleMetricType": "str",
    "scaleTarget": "int",
    "schedulerName": "str",
    "schedulingGates": "List[V1PodSchedulingGate]",
    "securityContext": "V1PodSecurityContext",
    "serviceAccount": "str",
    "serviceAccountName": "str",
    "setHostnameAsFQDN": "bool",
    "shareProcessNamespace": "bool",
    "subdomain": "str",
    "terminationGracePeriodSeconds": "int",
    "timeout": "int",
    "tolerations": "List[V1Toleration]",
    "topologySpreadConstraints": "List[V1TopologySpreadConstraint]",
    "volumes": "List[V1Volume]",
}


def _fields(cls: Any) -> dict[str, str]:
    """A kubernetes client model's fields, JSON name -> type."""
    return {cls.attribute_map[attr]: kind for attr, kind in cls.openapi_types.items()}


_TOP = {"apiVersion": "str", "kind": "str", "metadata": "V1ObjectMeta", "status": "object"}
KSERVE_TYPES: dict[str, dict[str, str]] = {
    "ClusterServingRuntime": {**_TOP, "spec": "V1alpha1ServingRuntimeSpec"},
    "ServingRuntime": {**_TOP, "spec": "V1alpha1ServingRuntimeSpec"},
    "V1alpha1ServingRuntimeSpec": _RUNTIME_SPEC,
    "V1alpha1SupportedModelFormat": {
        "autoSelect": "bool",
        "name": "str",
        "priority": "int",
        "version": "str",
    },
    "InferenceService": {**_TOP, "spec": "V1beta1InferenceServiceSpec"},
    "V1beta1InferenceServiceSpec": {
        "explainer": "object",
        "predictor": "V1beta1PredictorSpec",
        "transformer": "object",
    },
    "V1beta1PredictorSpec": _PREDICTOR_SPEC,
    # A container's fields plus the model's own (KServe generates it from v1.Container).
    "V1beta1ModelSpec": {
        **_fields(k8s.V1Container),
        "modelFormat": "V1beta1ModelFormat",
        "protocolVersion": "str",
        "runtime": "str",
        "runtimeVersion": "str",
        "storage": "object",
        "storageUri": "str",
    },
    "V1beta1ModelFormat": {"name": "str", "version": "str"},
}
_PRIMITIVES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "bool": (bool,),
    "float": (int, float),
}


def schema_errors(value: object, kind: str, path: str = "") -> list[str]:
    """Each place where ``value`` is not of ``kind``: an unknown field (a misspelling is one),
    or a value of the wrong type. ``kind`` is a KServe type above, a kubernetes client model
    name, ``List[...]``, ``Dict[str, ...]``, a primitive, or ``object`` (anything)."""
    if kind in ("object", "datetime", "bytes"):
        return []
    if inner := re.fullmatch(r"List\[(.+)\]", kind):
        if not isinstance(value, list):
            return [f"{path}: expected a list, got {value!r}"]
        return [e for i, v in enumerate(value) for e in schema_errors(v, inner[1], f"{path}[{i}]")]
    if inner := re.fullmatch(r"Dict\[str, (.+)\]", kind):
        if not isinstance(value, dict):
            return [f"{path}: expected a mapping, got {value!r}"]
        return [e for k, v in value.items() for e in schema_errors(v, inner[1], f"{path}.{k}")]
    if kind in _PRIMITIVES:
        wrong = not isinstance(value, _PRIMITIVES[kind]) or (
            isinstance(value, bool) and kind != "bool"
        )
        return [f"{path}: expected {kind}, got {value!r}"] if wrong else []
    fields = KSERVE_TYPES[kind] if kind in KSERVE_TYPES else _fields(getattr(k8s, kind))
    if not isinstance(value, dict):
        return [f"{path}: expected a {kind} mapping, got {value!r}"]
    errors = []
    for key, item in value.items():
        if key not in fields:
            errors.append(f"{path}.{key}: not a field of {kind}")
        else:
            errors.extend(schema_errors(item, fields[key], f"{path}.{key}"))
    return errors


def all_documents() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{name}#{i}", doc)
        for name in ("servingruntime.yaml", *ISVCS)
        for i, doc in enumerate(documents(name))
    ]


def test_the_schema_check_catches_a_misspelt_field_and_a_wrong_type() -> None:
    runtime = runtimes()[REST_RUNTIME]
    container = dict(runtime["spec"]["containers"][0])
    container["securityContex"] = container.pop("securityContext")
    container["ports"] = [{"containerPort": "8080", "name": "http1"}]
    broken = {**runtime, "spec": {**runtime["spec"], "containers": [container]}}
    errors = schema_errors(broken, "ClusterServingRuntime")
    assert ".spec.containers[0].securityContex: not a field of V1Container" in errors
    assert ".spec.containers[0].ports[0].containerPort: expected int, got '8080'" in errors
    isvc = inference_service("inferenceservice.yaml")
    model = isvc["spec"]["predictor"]["model"]
    bad_isvc = {**isvc, "spec": {"predictor": {"model": {**model, "storageURI": "pvc://x"}}}}
    assert schema_errors(bad_isvc, "InferenceService") == [
        ".spec.predictor.model.storageURI: not a field of V1beta1ModelSpec"
    ]


@pytest.mark.parametrize(("where", "doc"), all_documents(), ids=lambda v: str(v)[:40])
def test_every_manifest_field_is_in_the_kserve_and_kubernetes_schemas(
    where: str, doc: dict[str, Any]
) -> None:
    assert doc["kind"] in KSERVE_TYPES, where
    assert schema_errors(doc, doc["kind"]) == []


@pytest.mark.parametrize(("where", "doc"), all_documents(), ids=lambda v: str(v)[:40])
def test_every_container_loads_as_a_kubernetes_container(where: str, doc: dict[str, Any]) -> None:
    """The kubernetes client's own (strict) models accept each container as it is."""
    spec = doc["spec"]
    containers = spec.get("containers") or [spec["predictor"]["model"] | {"name": "model"}]
    for container in containers:
        plain = {k: v for k, v in container.items() if k in _fields(k8s.V1Container)}
        assert k8s.V1Container.from_dict(plain) is not None


def test_runtimes_are_kserve_cluster_serving_runtimes_for_pytorch() -> None:
    found = runtimes()
    assert set(found) == {REST_RUNTIME, GRPC_RUNTIME}
    protocols: set[str] = set()
    for runtime in found.values():
        assert runtime["apiVersion"] == "serving.kserve.io/v1alpha1"
        assert runtime["kind"] == "ClusterServingRuntime"
        spec = runtime["spec"]
        assert {f["name"] for f in spec["supportedModelFormats"]} == {"pytorch"}
        assert set(spec["protocolVersions"]) <= PROTOCOLS
        protocols |= set(spec["protocolVersions"])
        assert spec["annotations"] == {
            "prometheus.kserve.io/port": "8082",
            "prometheus.kserve.io/path": "/metrics",
        }
    assert found[REST_RUNTIME]["spec"]["protocolVersions"] == ["v1", "v2"]
    assert found[GRPC_RUNTIME]["spec"]["protocolVersions"] == ["grpc-v2"]
    assert protocols == {"v1", "v2", "grpc-v2"}


def _container(name: str) -> dict[str, Any]:
    container: dict[str, Any] = runtimes()[name]["spec"]["containers"][0]
    return container


@pytest.mark.parametrize("name", [REST_RUNTIME, GRPC_RUNTIME])
def test_the_container_runs_trioserve_in_the_foreground_on_mnt_models(name: str) -> None:
    container = _container(name)
    assert container["name"] == "kserve-container"
    assert "command" not in container  # the image's entrypoint (tini) stays PID 1
    args = container["args"]
    assert args == [
        "trioserve",
        "run",
        f"--model-store={MOUNT}/model-store",
        f"--ts-config={MOUNT}/config/config.properties",
    ]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert args[0] in scripts
    parsed = _parser().parse_args(args[1:])
    assert parsed.command == "run"  # `start` would fork and leave the container
    assert parsed.model_store == f"{MOUNT}/model-store"
    assert parsed.ts_config == f"{MOUNT}/config/config.properties"


@pytest.mark.parametrize(
    ("name", "port", "port_name"), [(REST_RUNTIME, 8080, "http1"), (GRPC_RUNTIME, 7070, "h2c")]
)
def test_each_runtime_exposes_the_one_port_knative_routes_to(
    name: str, port: int, port_name: str
) -> None:
    assert _container(name)["ports"] == [
        {"name": port_name, "containerPort": port, "protocol": "TCP"}
    ]


def test_readiness_is_probed_on_the_served_port_with_v2_ready() -> None:
    container = _container(REST_RUNTIME)
    probe = container["readinessProbe"]["httpGet"]
    assert probe == {"path": "/v2/health/ready", "port": container["ports"][0]["containerPort"]}


@pytest.mark.parametrize("name", [REST_RUNTIME, GRPC_RUNTIME])
def test_the_container_runs_as_a_non_root_user_without_privileges(name: str) -> None:
    container = _container(name)
    assert container["securityContext"] == {
        "runAsUser": 1000,
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    resources = container["resources"]
    assert resources["requests"] == resources["limits"] == {"cpu": "1", "memory": "2Gi"}


@pytest.mark.parametrize("name", [REST_RUNTIME, GRPC_RUNTIME])
def test_the_service_envelope_comes_from_the_inference_service_label(name: str) -> None:
    env = {e["name"]: e["value"] for e in _container(name)["env"]}
    assert env == {"TS_SERVICE_ENVELOPE": "{{index .Labels `serviceEnvelope`}}"}
    value = env["TS_SERVICE_ENVELOPE"]
    assert render(value, {"serviceEnvelope": "kservev2"}) == "kservev2"
    assert render(value, {}) == ""  # unset, where `.Labels.serviceEnvelope` gives "<no value>"
    assert render("{{.Labels.serviceEnvelope}}", {}) == "<no value>"


def test_the_renderer_refuses_template_actions_it_does_not_know() -> None:
    with pytest.raises(ValueError, match="unsupported template action"):
        render("{{.Name}}", {})


# -- InferenceServices ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "runtime", "protocol"),
    [
        ("inferenceservice.yaml", REST_RUNTIME, "v1"),
        ("inferenceservice-grpc.yaml", GRPC_RUNTIME, "grpc-v2"),
    ],
)
def test_inference_services_select_a_runtime_that_serves_their_protocol(
    name: str, runtime: str, protocol: str
) -> None:
    isvc = inference_service(name)
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    assert isvc["kind"] == "InferenceService"
    model = isvc["spec"]["predictor"]["model"]
    assert model["modelFormat"] == {"name": "pytorch"}
    assert model["runtime"] == runtime
    assert model["protocolVersion"] == protocol
    assert model["storageUri"].startswith("pvc://")
    spec = runtimes()[runtime]["spec"]
    assert protocol in spec["protocolVersions"]
    assert "pytorch" in {f["name"] for f in spec["supportedModelFormats"]}
    assert "ports" not in model  # the runtime's one port stays the only one


@pytest.mark.parametrize("name", ISVCS)
def test_the_rendered_container_has_a_config_trioserve_accepts(name: str, tmp_path: Path) -> None:
    """The runtime container as KServe renders it for this InferenceService, with the sample
    config: trioserve reads both without an error."""
    isvc = inference_service(name)
    container = container_for(runtimes()[isvc["spec"]["predictor"]["model"]["runtime"]], isvc)
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["TS_SERVICE_ENVELOPE"] in ("kserve", "kservev2")
    config_path = tmp_path / "config.properties"
    config_path.write_text((DEPLOY / "config" / "config.properties").read_text())
    config = load_config(environ=env, cwd=tmp_path, ts_config=str(config_path))
    assert config.service_envelope == env["TS_SERVICE_ENVELOPE"]
    assert config.sources["service_envelope"] == "env:TS_SERVICE_ENVELOPE"


# -- the sample config ----------------------------------------------------------------------
def test_the_sample_config_serves_kserve_ports_on_all_interfaces(tmp_path: Path) -> None:
    config = load_config(
        environ={}, cwd=tmp_path, ts_config=str(DEPLOY / "config" / "config.properties")
    )
    inference, metrics = config.inference_address, config.metrics_address
    assert (inference.scheme, inference.host, inference.port) == ("http", "0.0.0.0", 8080)
    assert (metrics.scheme, metrics.host, metrics.port) == ("http", "0.0.0.0", 8082)
    assert (config.grpc_inference_address, config.grpc_inference_port) == ("0.0.0.0", 7070)
    assert config.management_address.host == "127.0.0.1"  # not reachable from outside the pod
    assert config.model_store == f"{MOUNT}/model-store"
    assert config.metrics_mode == "prometheus"
    assert config.enable_envvars_config is True
    assert config.unknown == {}
    runtime_ports = {
        _container(REST_RUNTIME)["ports"][0]["containerPort"]: inference.port,
        _container(GRPC_RUNTIME)["ports"][0]["containerPort"]: config.grpc_inference_port,
    }
    assert all(a == b for a, b in runtime_ports.items())
    annotation = runtimes()[REST_RUNTIME]["spec"]["annotations"]["prometheus.kserve.io/port"]
    assert int(annotation) == metrics.port


def test_no_listener_takes_a_port_of_knatives_queue_proxy(tmp_path: Path) -> None:
    config = load_config(
        environ={}, cwd=tmp_path, ts_config=str(DEPLOY / "config" / "config.properties")
    )
    listeners = {
        config.inference_address.port,
        config.management_address.port,
        config.metrics_address.port,
        config.grpc_inference_port,
        config.grpc_management_port,
    }
    # The queue-proxy sidecar's ports (Knative rejects them as container ports).
    assert not listeners & {8012, 8013, 8022, 9090, 9091}


def test_the_sample_config_has_no_proxy_port_left() -> None:
    """KServe's TorchServe sample serves 8085 behind its proxy; nothing listens there here."""
    assert not [value for value in sample_properties().values() if ":8085" in value]


def test_the_model_snapshot_names_an_archive_in_the_model_store() -> None:
    snapshot = model_snapshot(sample_properties())
    assert snapshot["modelCount"] == len(snapshot["models"]) == 1
    for versions in snapshot["models"].values():
        for entry in versions.values():
            assert entry["marName"].endswith(".mar")
            assert "/" not in entry["marName"]
            assert entry["minWorkers"] >= 1


# -- the image ------------------------------------------------------------------------------
def _dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) of each Dockerfile line, continuations joined."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def _last(instruction: str) -> str:
    return [args for name, args in _dockerfile() if name == instruction][-1]


def test_the_image_runs_the_runtime_arguments_as_uid_1000_under_tini() -> None:
    assert json.loads(_last("CMD")) == _container(REST_RUNTIME)["args"]
    assert json.loads(_last("ENTRYPOINT")) == ["/usr/bin/tini", "--"]
    assert _last("USER") == "1000"
    exposed = {int(p) for name, args in _dockerfile() if name == "EXPOSE" for p in args.split()}
    assert exposed == {8080, 7070, 8082}
    build_args = {
        shlex.split(args)[0].split("=")[0] for name, args in _dockerfile() if name == "ARG"
    }
    assert {"TORCH_VERSION", "TORCH_INDEX_URL"} <= build_args
    assert "useradd --uid 1000" in " ".join(args for name, args in _dockerfile() if name == "RUN")


def test_the_image_build_context_keeps_only_the_package() -> None:
    text = (DEPLOY / "Dockerfile.dockerignore").read_text()
    patterns = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert patterns[0] == "*"
    kept = {p.removeprefix("!") for p in patterns if p.startswith("!")}
    assert kept == {"pyproject.toml", "README.md", "trioserve/", "backend/"}
    copied = {
        args.split()[0] for name, args in _dockerfile() if name == "COPY" and "--from" not in args
    }
    assert copied <= {"pyproject.toml", "trioserve", "backend"}
