"""A stdlib HTTP server on 127.0.0.1 in a thread, for tests that need a real origin."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

LOCAL = "127.0.0.1"


@contextmanager
def serving(handler: Any) -> Iterator[str]:
    """Serve ``handler`` (a request handler class or factory) until the block ends; yields the
    base URL."""
    httpd = http.server.ThreadingHTTPServer((LOCAL, 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{LOCAL}:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()
