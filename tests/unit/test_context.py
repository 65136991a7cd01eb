"""The handler's per-request view: headers made only when a handler reads them."""

from __future__ import annotations

from typing import Any

from backend.context import RequestProcessor


def test_deferred_headers_are_made_once_on_first_read() -> None:
    made: list[int] = []

    def build() -> dict[str, Any]:
        made.append(1)
        return {"x-trace": "abc", "body": {"content-type": "text/plain"}}

    processor = RequestProcessor.deferred(build)
    processor.report_status(201, "Created")
    assert made == []  # answering needs no request headers
    assert processor.response_parts() == (201, "Created", {})
    assert made == []
    assert processor.get_request_property("x-trace") == "abc"
    assert processor.get_request_properties()["body"] == {"content-type": "text/plain"}
    assert made == [1]


def test_eager_headers_are_a_copy() -> None:
    given = {"x-trace": "abc"}
    processor = RequestProcessor(given)
    given["x-trace"] = "changed"
    assert processor.get_request_property("x-trace") == "abc"
