"""Metrics API (contract §3.1): ``/metrics`` in the Prometheus text format, ``name[]`` filter."""

from __future__ import annotations

from trioserve.api.state import ServerState
from trioserve.http.request import Request
from trioserve.http.response import Response
from trioserve.metrics.registry import CONTENT_TYPE


async def metrics(state: ServerState, request: Request, rest: str = "") -> Response:
    """Every exposed family, or only those the repeated ``name[]`` parameters name (exact family
    names; unknown ones ignored). An empty body in ``metrics_mode=log``."""
    names = [n for n in request.query.get("name[]", []) if n]
    return Response(200, state.metrics.exposition(names or None), CONTENT_TYPE)
