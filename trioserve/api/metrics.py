"""Metrics API: ``/metrics`` in the Prometheus text format."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from trioserve.api.state import ServerState
from trioserve.http.request import Request
from trioserve.http.response import Response

# The server's own metric families register here (not in prometheus-client's global registry,
# so two servers in one process, as in tests, never share counters).
REGISTRY_ATTR = "prometheus_registry"


async def metrics(state: ServerState, request: Request) -> Response:
    registry: CollectorRegistry = getattr(state, REGISTRY_ATTR, None) or CollectorRegistry()
    names = request.query.get("name[]")
    if names:
        registry = registry.restricted_registry(names)  # type: ignore[assignment]
    return Response(200, generate_latest(registry), CONTENT_TYPE_LATEST)
