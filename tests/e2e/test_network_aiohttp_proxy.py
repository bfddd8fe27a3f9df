"""aiohttp through a real tinyproxy to a local TLS server: success, bypass and every refusal."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from credential_sidecar.upstream.network import (
    ProxyRefused,
    Route,
    check_proxy_response,
    classify,
    route,
)
from tests.helpers.tinyproxy import Tinyproxy, proxy_fixture
from tests.helpers.tls_pki import CA
from tests.helpers.tls_servers import TLSServer, http_server, https_server

# open_proxy, auth_proxy, deny_proxy, creds_file and bad_creds_file: tests/e2e/conftest.py
closed_client_proxy = proxy_fixture(allow=["192.0.2.0/24"])  # not us: 403 Access denied
pytestmark = pytest.mark.usefixtures("collect_garbage")  # tests/e2e/conftest.py


@pytest.fixture
async def tls_server(tmp_path: Path) -> AsyncIterator[TLSServer]:
    async with https_server(tmp_path) as server:
        yield server


async def fetch(r: Route, session: aiohttp.ClientSession | None = None) -> tuple[int, str]:
    async def go(s: aiohttp.ClientSession) -> tuple[int, str]:
        timeout = aiohttp.ClientTimeout(total=10)
        async with s.get(r.url, timeout=timeout, **r.request_kwargs()) as resp:
            check_proxy_response(resp.status, resp.reason, r.url, r.proxy)
            return resp.status, await resp.text()

    if session is not None:
        return await go(session)
    async with aiohttp.ClientSession() as s:
        return await go(s)


async def failure(r: Route) -> tuple[BaseException, str]:
    with pytest.raises((aiohttp.ClientError, ProxyRefused, TimeoutError)) as info:
        await fetch(r)
    return info.value, classify(info.value, r.url, r.proxy, ca_bundle=r.ca_bundle)


async def tunnel_refused(r: Route) -> tuple[aiohttp.ClientHttpProxyError, str]:
    """A failure that is the proxy refusing the CONNECT with a status (407, 401, 403...)."""
    exc, message = await failure(r)
    assert isinstance(exc, aiohttp.ClientHttpProxyError)
    return exc, message


def via_auth_proxy(server: TLSServer, auth_proxy: Tinyproxy, credentials: Path) -> Route:
    """To ``server`` through auth_proxy with the proxy credentials in ``credentials``."""
    return route(server.url, proxy=auth_proxy.url, proxy_credentials_file=credentials,
                 ca_bundle=server.ca_pem, env={})


def _port(url: str) -> str:
    return url.rsplit(":", 1)[1].split("/")[0]


# --- success and bypass --------------------------------------------------------------------------


async def test_https_through_open_proxy(open_proxy: Tinyproxy, tls_server: TLSServer) -> None:
    r = route(
        tls_server.url + "/sessions", proxy=open_proxy.url, ca_bundle=tls_server.ca_pem, env={}
    )
    assert r.proxy == open_proxy.url and r.proxy_source == "config"
    assert await fetch(r) == (200, "ok")
    assert f"127.0.0.1:{tls_server.port}" in open_proxy.connects()
    assert tls_server.hits == [f"GET /sessions host=127.0.0.1:{tls_server.port}"]


async def test_https_proxy_from_env(open_proxy: Tinyproxy, tls_server: TLSServer) -> None:
    env = {"HTTPS_PROXY": open_proxy.url, "AWS_CA_BUNDLE": str(tls_server.ca_pem)}
    r = route(tls_server.url, env=env)
    assert (r.proxy, r.proxy_source, r.ca_bundle) == (
        open_proxy.url,
        "HTTPS_PROXY",
        tls_server.ca_pem,
    )
    before = len(open_proxy.connects())
    assert await fetch(r) == (200, "ok")
    assert len(open_proxy.connects()) == before + 1


@pytest.mark.parametrize("no_proxy", ["127.0.0.0/8", "127.0.0.1", "*", "localhost,127.0.0.1/32"])
async def test_no_proxy_bypasses(
    open_proxy: Tinyproxy, tls_server: TLSServer, no_proxy: str
) -> None:
    env = {"HTTPS_PROXY": open_proxy.url, "NO_PROXY": no_proxy}
    r = route(tls_server.url, ca_bundle=tls_server.ca_pem, env=env)
    assert r.proxy is None and r.proxy_source == "NO_PROXY"
    before = open_proxy.connects()
    assert await fetch(r) == (200, "ok")
    assert open_proxy.connects() == before  # the proxy saw nothing


async def test_no_proxy_port_pattern(open_proxy: Tinyproxy, tls_server: TLSServer) -> None:
    other = route(
        tls_server.url,
        proxy=open_proxy.url,
        no_proxy="127.0.0.1:1",
        ca_bundle=tls_server.ca_pem,
        env={},
    )
    assert other.proxy == open_proxy.url
    same = route(
        tls_server.url,
        proxy=open_proxy.url,
        no_proxy=f"127.0.0.1:{tls_server.port}",
        ca_bundle=tls_server.ca_pem,
        env={},
    )
    assert same.proxy is None
    assert await fetch(same) == (200, "ok")


async def test_proxy_log_lists_connects(open_proxy: Tinyproxy, tls_server: TLSServer) -> None:
    r = route(tls_server.url, proxy=open_proxy.url, ca_bundle=tls_server.ca_pem, env={})
    async with aiohttp.ClientSession() as s:
        for _ in range(3):
            assert await fetch(r, s) == (200, "ok")
    # one pooled tunnel serves the three requests
    assert open_proxy.connects().count(f"127.0.0.1:{tls_server.port}") == 1
    assert len(tls_server.hits) == 3


# --- proxy authentication ------------------------------------------------------------------------


async def test_auth_proxy_with_credentials(
    auth_proxy: Tinyproxy, tls_server: TLSServer, creds_file: Path
) -> None:
    r = via_auth_proxy(tls_server, auth_proxy, creds_file)
    assert "s3cret" not in repr(r) and "s3cret" not in r.describe()
    assert await fetch(r) == (200, "ok")


async def test_auth_proxy_without_credentials_407(
    auth_proxy: Tinyproxy, tls_server: TLSServer
) -> None:
    r = route(tls_server.url, proxy=auth_proxy.url, ca_bundle=tls_server.ca_pem, env={})
    exc, message = await tunnel_refused(r)
    assert (exc.status, exc.message) == (407, "Proxy Authentication Required")
    assert exc.headers is not None
    assert exc.headers["Proxy-Authenticate"] == 'Basic realm="Tinyproxy"'
    assert message == (
        f"proxy {auth_proxy.url} refused the CONNECT to 127.0.0.1:{tls_server.port}: "
        "407 Proxy Authentication Required (the proxy wants credentials: set "
        "proxy_credentials_file (a 0600 file, user:password))"
    )


async def test_auth_proxy_wrong_credentials_401(
    auth_proxy: Tinyproxy, tls_server: TLSServer, bad_creds_file: Path
) -> None:
    r = via_auth_proxy(tls_server, auth_proxy, bad_creds_file)
    exc, message = await tunnel_refused(r)
    assert (exc.status, exc.message) == (401, "Unauthorized")  # tinyproxy: 401, not 407
    assert "401 Unauthorized (the proxy refused the credentials" in message
    assert "wrong" not in message
    # the exception's repr carries the header: never log repr() of it
    assert "Proxy-Authorization" in repr(exc)


async def test_env_proxy_userinfo(auth_proxy: Tinyproxy, tls_server: TLSServer) -> None:
    with_auth = auth_proxy.url.replace("http://", "http://alice:s3cret@")
    r = route(tls_server.url, ca_bundle=tls_server.ca_pem, env={"https_proxy": with_auth})
    assert r.proxy == auth_proxy.url
    assert await fetch(r) == (200, "ok")


async def test_http_target_407_is_a_response(auth_proxy: Tinyproxy) -> None:
    async with http_server() as plain:
        r = route(plain.url + "/x", proxy=auth_proxy.url, env={})
        exc, message = await failure(r)
        assert isinstance(exc, ProxyRefused) and exc.status == 407
        assert message.startswith(f"proxy {auth_proxy.url} refused the request for 127.0.0.1:")
        assert plain.hits == []


async def test_http_target_through_proxy_with_credentials(
    auth_proxy: Tinyproxy, creds_file: Path
) -> None:
    async with http_server() as plain:
        r = route(plain.url + "/x", proxy=auth_proxy.url, proxy_credentials_file=creds_file, env={})
        assert await fetch(r) == (200, "ok")
        assert plain.hits == ["GET /x"]
        assert ("GET", plain.url + "/x") in auth_proxy.requests()


# --- CONNECT refused -----------------------------------------------------------------------------


async def test_connect_port_refused_403(deny_proxy: Tinyproxy, tls_server: TLSServer) -> None:
    r = route(tls_server.url, proxy=deny_proxy.url, ca_bundle=tls_server.ca_pem, env={})
    exc, message = await tunnel_refused(r)
    assert (exc.status, exc.message) == (403, "Access violation")
    assert message.startswith(
        f"proxy {deny_proxy.url} refused the CONNECT to 127.0.0.1:{tls_server.port}: "
        "403 Access violation (the proxy does not allow a tunnel"
    )
    assert "Refused CONNECT method on port" in deny_proxy.log()


async def test_client_not_allowed_403(
    closed_client_proxy: Tinyproxy, tls_server: TLSServer
) -> None:
    r = route(tls_server.url, proxy=closed_client_proxy.url, ca_bundle=tls_server.ca_pem, env={})
    exc, message = await tunnel_refused(r)
    assert (exc.status, exc.message) == (403, "Access denied")
    assert ": 403 Access denied (" in message


async def test_proxy_port_closed(tls_server: TLSServer) -> None:
    r = route(tls_server.url, proxy="http://127.0.0.1:1", ca_bundle=tls_server.ca_pem, env={})
    exc, message = await failure(r)
    assert isinstance(exc, aiohttp.ClientProxyConnectionError)
    assert message == "cannot connect to proxy http://127.0.0.1:1: Connection refused"


@asynccontextmanager
async def silent_proxy() -> AsyncIterator[str]:
    """Accepts, reads the CONNECT, closes without a word."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


async def test_proxy_hangs_up(tls_server: TLSServer) -> None:
    async with silent_proxy() as proxy:
        r = route(tls_server.url, proxy=proxy, ca_bundle=tls_server.ca_pem, env={})
        exc, message = await failure(r)
    assert isinstance(exc, aiohttp.ServerDisconnectedError)
    assert message == (
        f"proxy {proxy} or 127.0.0.1:{tls_server.port} closed the connection without an answer"
    )


# --- TLS verification ----------------------------------------------------------------------------


async def test_missing_ca_through_proxy(open_proxy: Tinyproxy, tls_server: TLSServer) -> None:
    r = route(tls_server.url, proxy=open_proxy.url, env={})  # system store: our CA unknown
    exc, message = await failure(r)
    assert isinstance(exc, aiohttp.ClientConnectorCertificateError)
    assert (exc.host, exc.port) == ("127.0.0.1", tls_server.port)
    assert isinstance(exc.certificate_error, ssl.SSLCertVerificationError)
    assert message.startswith(
        f"TLS certificate verification failed for 127.0.0.1:{tls_server.port} via proxy "
        f"{open_proxy.url}: unable to get local issuer certificate (trusting the system CA store"
    )


async def test_missing_ca_direct(tls_server: TLSServer) -> None:
    r = route(tls_server.url, env={})
    _, message = await failure(r)
    assert message.startswith(
        f"TLS certificate verification failed for 127.0.0.1:{tls_server.port}: "
        "unable to get local issuer certificate"
    )


async def test_wrong_ca_bundle(tmp_path: Path, tls_server: TLSServer) -> None:
    other = CA.new().write(tmp_path / "other-ca.pem")
    r = route(tls_server.url, ca_bundle=other, env={})
    _, message = await failure(r)
    assert f"(trusting CA bundle {other};" in message


async def test_hostname_mismatch(tmp_path: Path) -> None:
    async with https_server(tmp_path, names=["localhost"]) as srv:
        r = route(srv.url, ca_bundle=srv.ca_pem, env={})
        exc, message = await failure(r)
    assert isinstance(exc, aiohttp.ClientConnectorCertificateError)
    assert (
        f"failed for 127.0.0.1:{srv.port}: IP address mismatch, certificate is not valid for "
        "'127.0.0.1'." in message
    )


async def test_expired_certificate(tmp_path: Path) -> None:
    ca = CA.new()
    expired = ca.issue_server(
        "127.0.0.1",
        not_before=dt.datetime(2020, 1, 1, tzinfo=dt.UTC),
        not_after=dt.datetime(2020, 2, 1, tzinfo=dt.UTC),
    )
    ca_pem = ca.write(tmp_path / "ca.pem")
    server_ctx = expired.server_context(tmp_path)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    try:
        port = server.sockets[0].getsockname()[1]
        r = route(f"https://127.0.0.1:{port}", ca_bundle=ca_pem, env={})
        _, message = await failure(r)
    finally:
        server.close()
        await server.wait_closed()
    assert f"failed for 127.0.0.1:{port}: certificate has expired" in message


async def test_plain_http_server_on_https_url(open_proxy: Tinyproxy) -> None:
    async with http_server() as plain:
        url = plain.url.replace("http://", "https://")
        r = route(url, proxy=open_proxy.url, env={})
        exc, message = await failure(r)
    assert isinstance(exc, aiohttp.ClientConnectorSSLError)
    assert message == (
        f"TLS handshake with 127.0.0.1:{plain.port} via proxy {open_proxy.url} failed: "
        "WRONG_VERSION_NUMBER"
    )


def test_route_kwargs_shape(tmp_path: Path, creds_file: Path) -> None:
    r = route(
        "https://sts.amazonaws.com/",
        proxy="http://p:3128",
        proxy_credentials_file=creds_file,
        env={},
    )
    kwargs: dict[str, Any] = r.request_kwargs()
    assert kwargs["proxy"] == "http://p:3128"
    assert kwargs["proxy_headers"] == {"Proxy-Authorization": "Basic YWxpY2U6czNjcmV0"}
    assert isinstance(kwargs["ssl"], ssl.SSLContext)
    direct = route(
        "http://127.0.0.1:8443/sessions",
        proxy="http://p:3128",
        no_proxy="127.0.0.1",
        proxy_credentials_file=creds_file,
        env={},
    )
    assert direct.request_kwargs() == {"proxy": None}
    assert direct.credentials is None  # the file is not even read when no proxy is used
