"""Handlers end to end through the real server (contract §7.3-§7.6): a handler written against
TorchServe's ``ts`` modules, every default handler with a tiny random-weight model, Captum
explanations, streaming, and per-model dependencies (``install_py_dep_per_model``)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import trio

from tests.conftest import Server, make_config
from tests.support.handler_models import (
    CLASS_LABELS,
    CLASSIFIER_MODEL,
    DETECTOR_LABELS,
    DETECTOR_MODEL,
    SEGMENTER_MODEL,
    TEXT_LABELS,
    TEXT_MODEL,
    TS_STREAMING_HANDLER,
    b64,
    build,
    default_handler_archive,
    json_bytes,
    ngram_tokens,
    normalized,
    solid_png,
    text_ids,
    top5,
    ts_class_archive,
    vocab_bytes,
)
from tests.support.local_package import local_package
from tests.support.models import expected_probs, handler_archive, manifest, write_archive

APPROX = {"rel": 1e-4, "abs": 1e-6}


async def register(server: Server, url: str, **params: str) -> httpx.Response:
    query = {"url": url, "initial_workers": "1", "synchronous": "true", **params}
    return await server.management.post("/models", params=query)


async def register_ok(server: Server, url: str, **params: str) -> None:
    response = await register(server, url, **params)
    assert response.status_code == 200, response.text


# -- a TorchServe handler, unchanged ------------------------------------------------------------
async def test_ts_handler_subclassing_ts_base_handler_predicts(
    server: Server, model_store: Path
) -> None:
    ts_class_archive(model_store)
    await register_ok(server, "tsstyle.mar")
    values = [0.5, -1.0, 2.0, 0.25]
    response = await server.inference.post(
        "/predictions/tsstyle",
        content=json_bytes(values),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 201, response.text
    assert response.reason_phrase == "Made by ts"
    assert response.headers["x-ts-handler"] == "yes"
    expected = dict(zip(["low", "mid", "high"], expected_probs(values), strict=True))
    assert response.json() == pytest.approx(expected, **APPROX)


async def test_ts_prediction_exception_sets_the_status_and_message(
    server: Server, model_store: Path
) -> None:
    ts_class_archive(model_store)
    await register_ok(server, "tsstyle.mar")
    response = await server.inference.post("/predictions/tsstyle", content=b"fail")
    assert response.status_code == 418
    assert response.json()["message"] == "the ts handler refused this input"


async def test_describe_customized_returns_the_ts_handlers_describe_handle(
    server: Server, model_store: Path
) -> None:
    ts_class_archive(model_store)
    await register_ok(server, "tsstyle.mar")
    response = await server.management.get("/models/tsstyle", params={"customized": "true"})
    assert response.status_code == 200, response.text
    metadata = response.json()[0]["customizedMetadata"]
    assert isinstance(metadata, str)  # a JSON string, as the docs show it
    assert json.loads(metadata) == {
        "handler": "TsStyleHandler",
        "base": "backend.handlers.base_handler",  # ts.torch_handler.base_handler is ours
        "context": "Context",
        "is_ts_context": True,
        "classes": ["TsStyleHandler"],
        "model_dir_set": True,
    }


async def test_ts_streaming_handler_streams_through_both_import_paths(
    server: Server, model_store: Path
) -> None:
    handler_archive(model_store, "tsstream", TS_STREAMING_HANDLER)
    await register_ok(server, "tsstream.mar")
    response = await server.inference.post("/predictions/tsstream", content=b"x")
    assert response.status_code == 200
    assert response.headers["transfer-encoding"] == "chunked"
    assert response.headers["ts_stream_next"] == "true"
    assert response.content == b"hello ts world"


async def test_default_handler_named_by_its_ts_module_path_loads(
    server: Server, model_store: Path
) -> None:
    model = build(CLASSIFIER_MODEL, seed=1)
    default_handler_archive(model_store, "dotted", "image_classifier", CLASSIFIER_MODEL, model)
    await register_ok(server, "dotted.mar", handler="ts.torch_handler.image_classifier")
    response = await server.inference.post(
        "/predictions/dotted", content=solid_png((9, 9, 9), (256, 256))
    )
    assert response.status_code == 200, response.text
    assert len(response.json()) == 5


# -- image_classifier ---------------------------------------------------------------------------
@pytest.fixture
async def classifier(server: Server, model_store: Path) -> torch.nn.Module:
    model = build(CLASSIFIER_MODEL, seed=1)
    default_handler_archive(
        model_store,
        "imgcls",
        "image_classifier",
        CLASSIFIER_MODEL,
        model,
        **{"index_to_name.json": json.dumps(CLASS_LABELS)},
    )
    await register_ok(server, "imgcls.mar")
    return model


def expected_top5(model: torch.nn.Module, channel_means: torch.Tensor) -> dict[str, float]:
    with torch.no_grad():
        return top5(model.fc(channel_means), CLASS_LABELS)  # type: ignore[operator]


async def test_image_classifier_returns_top5_labels_for_png_bytes(
    server: Server, classifier: torch.nn.Module
) -> None:
    color = (200, 30, 90)
    # 256 x 256: no resize, so the 224 crop is exactly the color.
    response = await server.inference.post(
        "/predictions/imgcls", content=solid_png(color, (256, 256))
    )
    assert response.status_code == 200, response.text
    body = response.json()
    expected = expected_top5(classifier, normalized(color))
    assert list(body) == list(expected)  # most likely first
    assert body == pytest.approx(expected, **APPROX)


async def test_image_classifier_resizes_and_crops_any_image(
    server: Server, classifier: torch.nn.Module
) -> None:
    color = (10, 250, 128)
    response = await server.inference.post(
        "/predictions/imgcls", content=solid_png(color, (512, 300))
    )
    assert response.status_code == 200, response.text
    assert response.json() == pytest.approx(expected_top5(classifier, normalized(color)), abs=1e-3)


async def test_image_classifier_takes_base64_text_and_multipart_files(
    server: Server, classifier: torch.nn.Module
) -> None:
    color = (66, 99, 133)
    image = solid_png(color, (256, 256))
    expected = expected_top5(classifier, normalized(color))
    as_text = await server.inference.post(
        "/predictions/imgcls", content=b64(image).encode(), headers={"content-type": "text/plain"}
    )
    assert as_text.status_code == 200, as_text.text
    assert as_text.json() == pytest.approx(expected, **APPROX)
    as_file = await server.inference.post(
        "/predictions/imgcls", files={"data": ("kitten.png", image, "image/png")}
    )
    assert as_file.status_code == 200, as_file.text
    assert as_file.json() == pytest.approx(expected, **APPROX)


async def test_image_classifier_takes_a_nested_list_as_the_input_tensor(
    server: Server, classifier: torch.nn.Module
) -> None:
    torch.manual_seed(5)
    tensor = torch.randn(3, 8, 8)
    response = await server.inference.post(
        "/predictions/imgcls",
        content=json_bytes(tensor.tolist()),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 200, response.text
    assert response.json() == pytest.approx(
        expected_top5(classifier, tensor.mean(dim=(1, 2))), **APPROX
    )


async def test_image_classifier_answers_each_request_of_a_batch(
    server_factory: Any, model_store: Path
) -> None:
    server: Server = await server_factory(make_config(model_store))
    model = build(CLASSIFIER_MODEL, seed=1)
    default_handler_archive(model_store, "batched", "image_classifier", CLASSIFIER_MODEL, model)
    await register_ok(server, "batched.mar", batch_size="2", max_batch_delay="3000")
    colors = [(255, 0, 0), (0, 0, 255)]
    results: dict[int, httpx.Response] = {}

    async def send(i: int) -> None:
        results[i] = await server.inference.post(
            "/predictions/batched", content=solid_png(colors[i], (256, 256))
        )

    async with trio.open_nursery() as nursery:
        for i in range(2):
            nursery.start_soon(send, i)
    for i, color in enumerate(colors):
        assert results[i].status_code == 200, results[i].text
        with torch.no_grad():
            expected = top5(model.fc(normalized(color)))  # type: ignore[operator]
        assert results[i].json() == pytest.approx(expected, **APPROX)


async def test_image_classifier_rejects_bytes_that_are_no_image(
    server: Server, classifier: torch.nn.Module
) -> None:
    response = await server.inference.post("/predictions/imgcls", content=b"not an image")
    assert response.status_code == 400
    assert "not a readable image" in response.json()["message"]


# -- explanations -------------------------------------------------------------------------------
async def test_image_explanation_is_integrated_gradients_of_the_target(
    server: Server, classifier: torch.nn.Module
) -> None:
    torch.manual_seed(6)
    tensor = torch.rand(3, 8, 8)
    response = await server.inference.post(
        "/explanations/imgcls",
        files={"data": ("x.json", json_bytes(tensor.tolist()), "application/json")},
        data={"target": "2"},
    )
    assert response.status_code == 200, response.text
    attributions = torch.tensor(response.json())
    # The model is linear in its input, so integrated gradients from a zero baseline are exact:
    # input times the gradient of the target logit, which is W[target, c] / (H * W).
    weights = classifier.fc.weight.detach()  # type: ignore[union-attr]
    expected = tensor * (weights[2] / 64).view(3, 1, 1)
    assert attributions.shape == (3, 8, 8)  # this request's share of the batch's [N, 3, 8, 8]
    assert attributions == pytest.approx(expected, abs=1e-5)


CAPTUM_HIDDEN = "raise ImportError(\"No module named 'captum' (hidden by the test)\")\n"


async def test_explanation_without_captum_names_the_missing_package(
    server: Server, model_store: Path
) -> None:
    model = build(CLASSIFIER_MODEL, seed=1)
    # A captum.py in the model directory shadows the installed package for this model only.
    default_handler_archive(
        model_store,
        "nocaptum",
        "image_classifier",
        CLASSIFIER_MODEL,
        model,
        **{"captum.py": CAPTUM_HIDDEN},
    )
    await register_ok(server, "nocaptum.mar")
    body = json_bytes(torch.rand(3, 4, 4).tolist())
    headers = {"content-type": "application/json"}
    response = await server.inference.post("/explanations/nocaptum", content=body, headers=headers)
    assert response.status_code == 503
    assert "captum" in response.json()["message"]
    assert "pip install captum" in response.json()["message"]
    predicted = await server.inference.post("/predictions/nocaptum", content=body, headers=headers)
    assert predicted.status_code == 200  # predictions never needed it


# -- image_segmenter ----------------------------------------------------------------------------
async def test_image_segmenter_returns_class_and_probability_per_pixel(
    server: Server, model_store: Path
) -> None:
    model = build(SEGMENTER_MODEL, seed=2)
    default_handler_archive(model_store, "seg", "image_segmenter", SEGMENTER_MODEL, model)
    await register_ok(server, "seg.mar")
    color = (120, 60, 30)
    response = await server.inference.post("/predictions/seg", content=solid_png(color, (256, 256)))
    assert response.status_code == 200, response.text
    pixels = torch.tensor(response.json())
    assert pixels.shape == (7, 7, 2)
    with torch.no_grad():
        image = normalized(color).view(1, 3, 1, 1).expand(1, 3, 224, 224)
        probs = torch.softmax(model(image)["out"], dim=1)[0]
    best = probs.max(dim=0)
    assert pixels[..., 0] == pytest.approx(best.indices.float())
    assert pixels[..., 1] == pytest.approx(best.values, **APPROX)


# -- object_detector ----------------------------------------------------------------------------
async def test_object_detector_returns_labelled_boxes_scoring_at_least_half(
    server: Server, model_store: Path
) -> None:
    model = build(DETECTOR_MODEL)
    with torch.no_grad():
        model.score.weight.zero_()  # type: ignore[union-attr, operator]
        model.score.bias.copy_(torch.tensor([3.0, -3.0, 1.0]))  # type: ignore[union-attr, operator]
    default_handler_archive(
        model_store,
        "det",
        "object_detector",
        DETECTOR_MODEL,
        model,
        **{"index_to_name.json": json.dumps(DETECTOR_LABELS)},
    )
    await register_ok(server, "det.mar")
    response = await server.inference.post(
        "/predictions/det", content=solid_png((1, 2, 3), (20, 16))
    )
    assert response.status_code == 200, response.text
    sigmoid = torch.sigmoid(torch.tensor([3.0, 1.0])).tolist()
    assert response.json() == [
        {"dog": [0.0, 0.0, 10.0, 10.0], "score": pytest.approx(sigmoid[0], **APPROX)},
        {"cat": [1.0, 2.0, 3.0, 4.0], "score": pytest.approx(sigmoid[1], **APPROX)},
    ]


# -- text_classifier ----------------------------------------------------------------------------
@pytest.fixture
async def text_model(server: Server, model_store: Path) -> torch.nn.Module:
    model = build(TEXT_MODEL, seed=3)
    default_handler_archive(
        model_store,
        "txt",
        "text_classifier",
        TEXT_MODEL,
        model,
        **{"source_vocab.pt": vocab_bytes(), "index_to_name.json": json.dumps(TEXT_LABELS)},
    )
    await register_ok(server, "txt.mar")
    return model


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("Good movie!", ["good", "movie"]),
        ("<b>Isn't</b> it a BAD movie?", ["is", "not", "it", "a", "bad", "movie"]),
    ],
)
async def test_text_classifier_returns_label_probabilities(
    server: Server, text_model: torch.nn.Module, text: str, words: list[str]
) -> None:
    response = await server.inference.post(
        "/predictions/txt", content=text.encode(), headers={"content-type": "text/plain"}
    )
    assert response.status_code == 200, response.text
    with torch.no_grad():
        logits = text_model(text_ids(ngram_tokens(words)), torch.tensor([0]))[0]
    probs = torch.softmax(logits, dim=0).tolist()
    assert response.json() == pytest.approx({"negative": probs[0], "positive": probs[1]}, **APPROX)


async def test_text_explanation_gives_one_importance_per_token(
    server: Server, text_model: torch.nn.Module
) -> None:
    response = await server.inference.post("/explanations/txt", content=b"not good movie")
    assert response.status_code == 200, response.text
    explained = response.json()
    tokens = ngram_tokens(["not", "good", "movie"])
    assert explained["words"] == tokens
    importances = torch.tensor(explained["importances"])
    assert importances.shape == (len(tokens),)
    assert float(importances.norm()) == pytest.approx(1.0, rel=1e-4)


# -- per-model dependencies ---------------------------------------------------------------------
DEPS_HANDLER = """
def handle(data, context):
    if data is None:
        return None
    try:
        import tinydep
    except ImportError:
        return ["absent"] * len(data)
    return [f"tinydep {tinydep.VALUE}"] * len(data)
"""


def deps_archive(store: Path, name: str, requirements: str | None) -> Path:
    files: dict[str, bytes | str] = {"handler.py": textwrap.dedent(DEPS_HANDLER)}
    extra: dict[str, str] = {}
    if requirements is not None:
        files["requirements.txt"] = requirements
        extra["requirementsFile"] = "requirements.txt"
    files["MAR-INF/MANIFEST.json"] = manifest(name, "handler.py", **extra)
    return write_archive(store, f"{name}.mar", files)


async def test_requirements_are_installed_for_that_model_only(
    server_factory: Any, model_store: Path, tmp_path: Path
) -> None:
    server: Server = await server_factory(make_config(model_store, install_py_dep_per_model=True))
    package = local_package(tmp_path / "src")
    deps_archive(model_store, "withdeps", f"--no-index\n{package}\n")
    deps_archive(model_store, "nodeps", None)
    await register_ok(server, "withdeps.mar")
    await register_ok(server, "nodeps.mar")
    with_deps = await server.inference.post("/predictions/withdeps", content=b"x")
    assert with_deps.text == "tinydep 42"
    without = await server.inference.post("/predictions/nodeps", content=b"x")
    assert without.text == "absent"


async def test_requirements_are_ignored_unless_enabled(
    server: Server, model_store: Path, tmp_path: Path
) -> None:
    package = local_package(tmp_path / "src")
    deps_archive(model_store, "withdeps", f"--no-index\n{package}\n")
    await register_ok(server, "withdeps.mar")
    response = await server.inference.post("/predictions/withdeps", content=b"x")
    assert response.text == "absent"


async def test_failed_requirements_fail_the_registration_with_pips_words(
    server_factory: Any, model_store: Path, tmp_path: Path
) -> None:
    server: Server = await server_factory(make_config(model_store, install_py_dep_per_model=True))
    deps_archive(model_store, "baddeps", f"--no-index\n{tmp_path / 'no-such-package'}\n")
    response = await register(server, "baddeps.mar")
    assert response.status_code == 400, response.text
    message = response.json()["message"]
    assert message.startswith("Custom pip package installation failed for model baddeps:")
    assert "no-such-package" in message
    listed = await server.management.get("/models")
    assert listed.json()["models"] == []  # nothing half-registered


async def test_requirements_install_is_bounded_by_a_timeout(
    server_factory: Any, model_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trioserve.api import register as register_module

    monkeypatch.setattr(register_module, "PIP_INSTALL_TIMEOUT_S", 0.01)
    server: Server = await server_factory(make_config(model_store, install_py_dep_per_model=True))
    package = local_package(tmp_path / "src")
    deps_archive(model_store, "slowdeps", f"--no-index\n{package}\n")
    response = await register(server, "slowdeps.mar")
    assert response.status_code == 500, response.text
    assert "did not finish within" in response.json()["message"]
