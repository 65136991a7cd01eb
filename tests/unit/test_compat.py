"""``backend.handlers.compat``: TorchServe's ``ts`` names inside workers only, and only where no
real ``ts`` is installed; plus the ``ts.utils.util`` and ``ts.metrics`` helpers behind them."""

from __future__ import annotations

import importlib
import importlib.util
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from backend.handlers import compat

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def ts_names() -> Iterator[None]:
    """The finder installed in this process for one test, then removed with every ``ts``
    module it provided."""
    if importlib.util.find_spec("ts") is not None and not compat.installed():
        pytest.skip("a real ts package is installed here")
    assert compat.install() is True
    try:
        yield
    finally:
        compat.uninstall()


def test_no_ts_outside_workers() -> None:
    import trioserve.server  # noqa: F401  - the frontend, fully imported

    assert not compat.installed()
    assert importlib.util.find_spec("ts") is None


@pytest.mark.usefixtures("ts_names")
def test_ts_modules_are_trioserves_own() -> None:
    from ts.context import Context, RequestProcessor
    from ts.handler_utils.timer import timed
    from ts.handler_utils.utils import send_intermediate_predict_response
    from ts.metrics.dimension import Dimension
    from ts.metrics.metric_cache_errors import MetricsCacheKeyError
    from ts.metrics.metric_type_enum import MetricTypes
    from ts.protocol.otf_message_handler import send_intermediate_predict_response as old_send
    from ts.torch_handler.base_handler import BaseHandler
    from ts.torch_handler.image_classifier import ImageClassifier
    from ts.utils.util import (
        PredictionException,
        get_yaml_config,
        list_classes_from_module,
        load_label_mapping,
        map_class_to_label,
    )

    import backend.context
    import backend.handler_utils
    import backend.handlers.base_handler
    import backend.handlers.image_classifier
    import backend.metric_types
    import backend.streaming
    import backend.util

    assert BaseHandler is backend.handlers.base_handler.BaseHandler
    assert ImageClassifier is backend.handlers.image_classifier.ImageClassifier
    assert Context is backend.context.Context
    assert RequestProcessor is backend.context.RequestProcessor
    assert PredictionException is backend.util.PredictionException
    assert (list_classes_from_module, load_label_mapping, map_class_to_label) == (
        backend.util.list_classes_from_module,
        backend.util.load_label_mapping,
        backend.util.map_class_to_label,
    )
    assert get_yaml_config is backend.util.get_yaml_config
    assert (
        send_intermediate_predict_response is backend.streaming.send_intermediate_predict_response
    )
    assert old_send is send_intermediate_predict_response
    assert timed is backend.handler_utils.timed
    assert Dimension is backend.metric_types.Dimension
    assert MetricTypes is backend.metric_types.MetricTypes
    assert MetricsCacheKeyError is backend.metric_types.MetricsCacheKeyError


@pytest.mark.usefixtures("ts_names")
@pytest.mark.parametrize(
    ("ts_name", "module"),
    [
        ("ts.torch_handler.image_classifier", "backend.handlers.image_classifier"),
        ("ts.torch_handler.image_segmenter", "backend.handlers.image_segmenter"),
        ("ts.torch_handler.object_detector", "backend.handlers.object_detector"),
        ("ts.torch_handler.text_classifier", "backend.handlers.text_classifier"),
        ("ts.torch_handler.vision_handler", "backend.handlers.vision_handler"),
        ("ts.torch_handler.text_handler", "backend.handlers.text_handler"),
        ("ts.torch_handler", "backend.handlers"),
    ],
)
def test_default_handlers_resolve_under_their_ts_names(ts_name: str, module: str) -> None:
    aliased = importlib.import_module(ts_name)
    assert aliased is importlib.import_module(module)
    assert aliased.__spec__ is not None
    assert aliased.__spec__.name == module  # the real module keeps its own identity
    assert sys.modules[ts_name] is aliased


@pytest.mark.usefixtures("ts_names")
def test_ts_package_is_an_empty_stand_in() -> None:
    import ts

    assert ts.__version__ == compat.TS_VERSION
    assert ts.__path__ == []


@pytest.mark.usefixtures("ts_names")
@pytest.mark.parametrize(
    "name",
    ["ts.model_loader", "ts.torch_handler.request_envelope.kserve", "ts.utils.missing", "tsx"],
)
def test_names_trioserve_does_not_provide_are_plain_import_errors(name: str) -> None:
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(name)


def test_a_real_ts_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "ts").mkdir()
    (tmp_path / "ts" / "__init__.py").write_text("REAL = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    try:
        assert compat.install() is False
        assert not compat.installed()
        import ts

        assert ts.REAL is True
    finally:
        sys.modules.pop("ts", None)


def test_install_is_idempotent_and_uninstall_forgets(ts_names: None) -> None:
    assert compat.install() is True
    assert sys.meta_path.count(compat._FINDER) == 1
    import ts.context  # noqa: F401

    compat.uninstall()
    assert "ts.context" not in sys.modules
    assert importlib.util.find_spec("ts") is None
    compat.install()  # for the fixture's own uninstall


def test_worker_start_installs_the_names() -> None:
    """What ``backend.worker.run`` does first, in a fresh interpreter like a worker's."""
    script = (
        "import importlib.util, json\n"
        "before = importlib.util.find_spec('ts') is None\n"
        "from backend.handlers import compat\n"
        "compat.install()\n"
        "from ts.torch_handler.base_handler import BaseHandler\n"
        "print(json.dumps([before, BaseHandler.__module__]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [True, "backend.handlers.base_handler"]


# -- ts.utils.util ------------------------------------------------------------------------------
def test_map_class_to_label_uses_the_mapping_or_the_index() -> None:
    from backend.util import map_class_to_label

    assert map_class_to_label([[0.1, 0.9]]) == [{"0": 0.1, "1": 0.9}]
    assert map_class_to_label([[0.9, 0.1]], {"3": "cat", "1": "dog"}, [[3, 1]]) == [
        {"cat": 0.9, "dog": 0.1}
    ]
    with pytest.raises(TypeError):
        map_class_to_label("no", None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ({"0": "cat", "1": "dog"}, {"0": "cat", "1": "dog"}),
        ({"0": ["n0212", "cat"]}, {"0": "cat"}),
        ({"object_type_names": ["cat", "dog"]}, {"0": "cat", "1": "dog"}),
    ],
)
def test_load_label_mapping_reads_each_shape(
    tmp_path: Path, content: object, expected: dict[str, str]
) -> None:
    from backend.util import load_label_mapping

    path = tmp_path / "index_to_name.json"
    path.write_text(json.dumps(content))
    assert load_label_mapping(str(path)) == expected


def test_load_label_mapping_of_a_missing_or_bad_file(tmp_path: Path) -> None:
    from backend.util import load_label_mapping

    assert load_label_mapping(str(tmp_path / "absent.json")) is None
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"0": 5}))
    with pytest.raises(ValueError, match="labels"):
        load_label_mapping(str(bad))


def test_list_classes_from_module_counts_only_its_own() -> None:
    import backend.handlers.image_classifier as module
    from backend.handlers.vision_handler import VisionHandler
    from backend.util import list_classes_from_module

    assert list_classes_from_module(module) == [module.ImageClassifier]
    assert list_classes_from_module(module, VisionHandler) == [module.ImageClassifier]
    assert list_classes_from_module(module, dict) == []


def test_dimension_and_metric_type_feed_the_metrics_cache() -> None:
    from backend.metric_types import Dimension, MetricTypes
    from backend.metrics import MetricsCache

    cache = MetricsCache("m")
    cache.request_ids = {0: "r1"}
    cache.add_metric("Calls", 1, "count", 0, [Dimension("Kind", "x")], MetricTypes.GAUGE)
    (record,) = cache.drain()
    assert dict(record.dimensions)["Kind"] == "x"
    assert record.metric_type == "gauge"
    assert str(Dimension("a", "b")) == "a:b"


# -- ts.torch_handler pieces --------------------------------------------------------------------
def test_fallback_transforms_follow_torchvisions_pil_rules() -> None:
    from PIL import Image

    from backend.handlers import transforms

    image = Image.new("RGB", (512, 300), (255, 0, 51))
    resized = transforms.Resize(256)(image)
    assert resized.size == (436, 256)  # shorter side 256, longer truncated
    cropped = transforms.CenterCrop(224)(resized)
    assert cropped.size == (224, 224)
    tensor = transforms.ToTensor()(cropped)
    assert tuple(tensor.shape) == (3, 224, 224)
    assert float(tensor[0].min()) == pytest.approx(1.0)
    assert float(tensor[2].max()) == pytest.approx(0.2)
    normalized = transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))(tensor)
    assert float(normalized[0, 0, 0]) == pytest.approx(1.0)
    gray = transforms.ToTensor()(Image.new("L", (4, 3), 255))
    assert tuple(gray.shape) == (1, 3, 4)


def test_text_classifier_tokens_are_unigrams_then_bigrams() -> None:
    from backend.handlers.text_classifier import with_ngrams

    assert with_ngrams(["a", "b", "c"], 2) == ["a", "b", "c", "a b", "b c"]
    assert with_ngrams(["a"], 2) == ["a"]
