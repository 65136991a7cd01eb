"""TLS on every HTTP listener (contract §5.2 ``https://`` addresses with ``private_key_file`` and
``certificate_file``): real clients verify the server against a trustme CA."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trio
import trustme

from tests.conftest import LOCAL, Server, make_config
from trioserve.config import Address, Config
from trioserve.errors import ConfigError
from trioserve.server import _ssl_context

HARD_STOP_S = 30.0
SLACK_S = 2.0
ServerFactory = Callable[..., Awaitable[Server]]
HTTPS = Address("https", LOCAL, 0)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_files(ca: trustme.CA, tmp_path: Path) -> tuple[str, str]:
    cert = ca.issue_cert(LOCAL, "localhost")
    chain, key = tmp_path / "server.pem", tmp_path / "server.key"
    cert.private_key_pem.write_to_path(str(key))
    chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    return str(key), str(chain)


def tls_config(model_store: Path, tls_files: tuple[str, str], **overrides: object) -> Config:
    key, chain = tls_files
    return make_config(
        model_store,
        inference_address=HTTPS,
        management_address=HTTPS,
        metrics_address=HTTPS,
        private_key_file=key,
        certificate_file=chain,
        **overrides,
    )


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@asynccontextmanager
async def https_client(ca: trustme.CA, port: int) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=f"https://{LOCAL}:{port}", verify=client_context(ca), timeout=10
    ) as client:
        yield client


async def test_inference_management_and_metrics_listeners_serve_verified_https(
    server_factory: ServerFactory, model_store: Path, tls_files: tuple[str, str], ca: trustme.CA
) -> None:
    server = await server_factory(tls_config(model_store, tls_files))
    ports = server.running.ports
    assert len({ports["inference"], ports["management"], ports["metrics"]}) == 3
    with trio.fail_after(HARD_STOP_S):
        async with https_client(ca, ports["inference"]) as client:
            ping = await client.get("/ping")
            assert (ping.status_code, ping.json()) == (200, {"status": "Healthy"})
            assert ping.headers["x-request-id"]
            missing = await client.post("/predictions/nope", content=b"x")
            assert missing.status_code == 404
            assert missing.json()["type"] == "ModelNotFoundException"
        async with https_client(ca, ports["management"]) as client:
            listed = await client.get("/models")
            assert (listed.status_code, listed.json()) == (200, {"models": []})
        async with https_client(ca, ports["metrics"]) as client:
            scraped = await client.get("/metrics")
            assert scraped.status_code == 200
            assert scraped.headers["content-type"].startswith("text/plain")


async def test_client_without_the_ca_fails_verification_and_the_server_carries_on(
    server_factory: ServerFactory, model_store: Path, tls_files: tuple[str, str], ca: trustme.CA
) -> None:
    server = await server_factory(tls_config(model_store, tls_files))
    port = server.running.ports["inference"]
    with trio.fail_after(HARD_STOP_S):
        async with httpx.AsyncClient(base_url=f"https://{LOCAL}:{port}") as untrusting:
            with pytest.raises(httpx.ConnectError):
                await untrusting.get("/ping")
        # Plain HTTP at a TLS port is a failed handshake: closed, no answer, no harm.
        async with await trio.open_tcp_stream(LOCAL, port) as raw:
            await raw.send_all(b"GET /ping HTTP/1.1\r\nHost: t\r\n\r\n")
            try:
                answer = await raw.receive_some(65536)  # a TLS alert at most
            except trio.BrokenResourceError:
                answer = b""
            assert not answer.startswith(b"HTTP/")
        async with https_client(ca, port) as client:
            assert (await client.get("/ping")).status_code == 200


async def test_silent_client_on_a_tls_listener_is_closed_at_the_keepalive_timeout(
    server_factory: ServerFactory, model_store: Path, tls_files: tuple[str, str], ca: trustme.CA
) -> None:
    """The handshake happens inside the first read, so the idle deadline bounds it too."""
    config = tls_config(model_store, tls_files, http_keepalive_timeout=1.0)
    server = await server_factory(config)
    port = server.running.ports["inference"]
    with trio.fail_after(HARD_STOP_S):
        async with await trio.open_tcp_stream(LOCAL, port) as raw:
            start = trio.current_time()
            async with https_client(ca, port) as client:
                assert (await client.get("/ping")).status_code == 200
            try:
                while await raw.receive_some(65536):
                    pass
            except trio.BrokenResourceError:
                pass
            elapsed = trio.current_time() - start
    assert 1.0 <= elapsed < 1.0 + SLACK_S


async def test_connection_over_the_cap_gets_its_503_over_tls(
    server_factory: ServerFactory, model_store: Path, tls_files: tuple[str, str], ca: trustme.CA
) -> None:
    server = await server_factory(tls_config(model_store, tls_files, http_max_connections=1))
    port = server.running.ports["inference"]
    with trio.fail_after(HARD_STOP_S):
        held = await trio.open_ssl_over_tcp_stream(
            LOCAL, port, ssl_context=client_context(ca), https_compatible=True
        )
        async with held:
            await held.do_handshake()
            async with https_client(ca, port) as client:
                refused = await client.get("/ping")
            assert refused.status_code == 503
            assert refused.json()["type"] == "ServiceUnavailableException"
        async with https_client(ca, server.running.ports["management"]) as client:
            assert (await client.get("/models")).status_code == 200


def test_unreadable_tls_files_stop_the_start_naming_them(
    model_store: Path, tmp_path: Path, tls_files: tuple[str, str]
) -> None:
    key, _ = tls_files
    bogus = tmp_path / "bogus.pem"
    bogus.write_text("not a certificate\n")
    config = tls_config(model_store, (key, str(bogus)))
    with pytest.raises(ConfigError, match=r"certificate_file='.*bogus\.pem'"):
        _ssl_context(config)
    missing = tls_config(model_store, (key, str(tmp_path / "absent.pem")))
    with pytest.raises(ConfigError, match=r"absent\.pem"):
        _ssl_context(missing)


def test_tls_context_refuses_protocols_older_than_tls_1_2(
    model_store: Path, tls_files: tuple[str, str]
) -> None:
    context = _ssl_context(tls_config(model_store, tls_files))
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
