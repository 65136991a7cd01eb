"""Model URLs are a way into the server's network (SSRF): each redirect of a download is checked
against ``allowed_urls`` like the URL itself, and the permissive default is warned about."""

from __future__ import annotations

import functools
import http.server
import logging
import re
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Server, make_config
from tests.support.local_http import serving
from tests.support.models import ECHO_HANDLER, handler_archive

ServerFactory = Callable[..., Awaitable[Server]]


@dataclass
class Site:
    """An HTTP server on 127.0.0.1 serving ``root``; ``redirects`` maps a path to a Location."""

    root: Path
    base: str = ""
    requests: list[str] = field(default_factory=list)
    redirects: dict[str, str] = field(default_factory=dict)


def _serve(site: Site) -> Iterator[Site]:
    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            site.requests.append(self.path)
            if self.path in site.redirects:
                self.send_response(302)
                self.send_header("Location", site.redirects[self.path])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            super().do_GET()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    with serving(functools.partial(Handler, directory=str(site.root))) as site.base:
        yield site


@pytest.fixture
def public(tmp_path: Path) -> Iterator[Site]:
    (tmp_path / "public").mkdir()
    yield from _serve(Site(tmp_path / "public"))


@pytest.fixture
def internal(tmp_path: Path) -> Iterator[Site]:
    """Stands for a host the server can reach and its users must not (metadata, intranet)."""
    (tmp_path / "internal").mkdir()
    yield from _serve(Site(tmp_path / "internal"))


def names_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


async def register(server: Server, url: str) -> httpx.Response:
    return await server.management.post("/models", params={"url": url})


async def test_redirect_to_a_url_allowed_urls_refuses_is_not_followed(
    server_factory: ServerFactory, model_store: Path, public: Site, internal: Site
) -> None:
    handler_archive(internal.root, "secret", ECHO_HANDLER)
    target = f"{internal.base}/secret.mar"
    public.redirects["/m.mar"] = target
    allowed = (re.escape(public.base) + "/.*",)
    server = await server_factory(make_config(model_store, allowed_urls=allowed))
    response = await register(server, f"{public.base}/m.mar")
    assert response.status_code == 404, response.text
    assert response.json() == {
        "code": 404,
        "type": "ModelNotFoundException",
        "message": f"Given URL {target} does not match any allowed URL(s)",
    }
    assert public.requests == ["/m.mar"]
    assert internal.requests == []  # never contacted
    assert names_in(model_store) == []  # the claimed name is released
    assert (await server.inference.get("/ping")).status_code == 200


async def test_redirect_with_a_relative_path_is_refused(
    server_factory: ServerFactory, model_store: Path, public: Site
) -> None:
    public.redirects["/m.mar"] = f"{public.base}/a/../m2.mar"
    allowed = (re.escape(public.base) + "/.*",)
    server = await server_factory(make_config(model_store, allowed_urls=allowed))
    response = await register(server, f"{public.base}/m.mar")
    assert response.status_code == 404
    assert response.json()["message"].startswith("Relative path is not allowed in url: ")
    assert public.requests == ["/m.mar"]


async def test_redirect_within_allowed_urls_is_followed(
    server_factory: ServerFactory, model_store: Path, public: Site
) -> None:
    handler_archive(public.root, "echo", ECHO_HANDLER)
    public.redirects["/latest.mar"] = f"{public.base}/echo.mar"
    allowed = (re.escape(public.base) + "/.*",)
    server = await server_factory(make_config(model_store, allowed_urls=allowed))
    response = await register(server, f"{public.base}/latest.mar")
    assert response.status_code == 200, response.text
    assert public.requests == ["/latest.mar", "/echo.mar"]
    assert names_in(model_store) == ["latest.mar"]


async def test_permissive_allowed_urls_are_warned_about_at_start(
    server_factory: ServerFactory, model_store: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="trioserve.models.store")
    await server_factory(make_config(model_store))  # TorchServe's default
    warned = [r for r in caplog.records if r.name == "trioserve.models.store"]
    assert len(warned) == 1
    assert "169.254.169.254" in warned[0].getMessage()
    caplog.clear()
    await server_factory(make_config(model_store, allowed_urls=(r"https://models\.example/.*",)))
    assert [r for r in caplog.records if r.name == "trioserve.models.store"] == []
