"""The ``Context`` handed to handlers (contract §7.3).

One Context lives for the worker's lifetime; the worker loop rebinds the per-batch parts
(request ids, request processors) before each call so handlers that keep a reference see the
current batch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from backend.metrics import MetricsCache

SERVER_NAME = "MMS"
SERVER_VERSION = "0.12.0"


class RequestProcessor:
    """Request headers in, response status and headers out, for one request of a batch."""

    def __init__(self, request_headers: Mapping[str, Any]) -> None:
        self._request: dict[str, Any] | None = dict(request_headers)
        self._build: Callable[[], dict[str, Any]] | None = None
        self._status = 200
        self._reason = ""
        self._response: dict[str, str] = {}

    @classmethod
    def deferred(cls, build: Callable[[], dict[str, Any]]) -> RequestProcessor:
        """A processor whose request headers ``build()`` makes on first use: most handlers
        never read them, and making them is a fifth of a worker's time per small request."""
        processor = cls({})
        processor._request = None
        processor._build = build
        return processor

    def _headers(self) -> dict[str, Any]:
        if self._request is None:
            assert self._build is not None
            self._request, self._build = self._build(), None
        return self._request

    def get_request_property(self, key: str) -> Any:
        return self._headers().get(key)

    def get_request_properties(self) -> dict[str, Any]:
        return self._headers()

    def add_response_property(self, key: str, value: str) -> None:
        self._response[key] = value

    def get_response_headers(self) -> dict[str, str]:
        return self._response

    def get_response_header(self, key: str) -> str | None:
        return self._response.get(key)

    def report_status(self, code: int, reason_phrase: str = "") -> None:
        self._status = code
        self._reason = reason_phrase

    def get_response_status_code(self) -> int:
        return self._status

    def get_response_status_phrase(self) -> str:
        return self._reason

    def response_parts(self) -> tuple[int, str, dict[str, str]]:
        """Status, reason phrase and headers at once, for the worker's reply."""
        return self._status, self._reason, self._response


class Context:
    """What a handler knows about its model, its worker and the batch it is serving."""

    def __init__(
        self,
        model_name: str,
        model_dir: str,
        manifest: dict[str, Any] | None,
        batch_size: int,
        gpu: int | None,
        mms_version: str = SERVER_VERSION,
        limit_max_image_pixels: bool = True,
        metrics: MetricsCache | None = None,
        model_yaml_config: dict[str, Any] | None = None,
    ) -> None:
        self.model_name = model_name
        self.model_version = ""  # the registered version (set by the worker at load)
        self.manifest = manifest
        self._system_properties: dict[str, Any] = {
            "model_dir": model_dir,
            "gpu_id": gpu,
            "batch_size": batch_size,
            "server_name": SERVER_NAME,
            "server_version": mms_version,
            "limit_max_image_pixels": limit_max_image_pixels,
        }
        self.request_ids: dict[int, str] | None = None
        self.request_processor: list[RequestProcessor] = []
        self._metrics = metrics if metrics is not None else MetricsCache(model_name)
        self.model_yaml_config: dict[str, Any] = model_yaml_config or {}
        self.stopping_criteria: list[Callable[..., bool]] | None = None
        self.cl_socket: Any = None
        # Set by the worker loop: sends one intermediate response per request of the batch.
        self._send_intermediate: Callable[[list[Any], dict[int, str], str, int], None] | None = None

    @property
    def system_properties(self) -> dict[str, Any]:
        return self._system_properties

    @property
    def metrics(self) -> MetricsCache:
        return self._metrics

    @metrics.setter
    def metrics(self, value: MetricsCache) -> None:
        self._metrics = value

    def get_request_id(self, idx: int = 0) -> str | None:
        return self.request_ids.get(idx) if self.request_ids else None

    def get_request_header(self, idx: int, key: str) -> Any:
        return self.request_processor[idx].get_request_property(key)

    def get_all_request_header(self, idx: int) -> dict[str, Any]:
        return self.request_processor[idx].get_request_properties()

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        if self.request_processor:
            self.request_processor[idx].report_status(code, phrase)

    def set_all_response_status(self, code: int = 200, phrase: str = "") -> None:
        for processor in self.request_processor:
            processor.report_status(code, phrase)

    def get_response_status(self, idx: int) -> tuple[int, str]:
        processor = self.request_processor[idx]
        return processor.get_response_status_code(), processor.get_response_status_phrase()

    def set_response_header(self, idx: int, key: str, value: str) -> None:
        self.request_processor[idx].add_response_property(key, value)

    def get_response_headers(self, idx: int) -> dict[str, str]:
        return self.request_processor[idx].get_response_headers()

    def set_response_content_type(self, idx: int, value: str) -> None:
        self.set_response_header(idx, "content-type", value)

    def get_response_content_type(self, idx: int) -> str | None:
        return self.request_processor[idx].get_response_header("content-type")

    def get_sequence_id(self, idx: int) -> Any:
        import os

        header = os.environ.get("TS_REQUEST_SEQUENCE_ID", "ts_request_sequence_id")
        return self.request_processor[idx].get_request_property(header)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Context) and self.__dict__ == other.__dict__

    __hash__ = None  # type: ignore[assignment]
