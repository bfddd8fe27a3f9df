"""net.client: CA bundle choice, SSL contexts, request kwargs and messages without a network."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import aiohttp
import pytest

from credential_sidecar.upstream.network import (
    CABundleError,
    ProxyRefused,
    classify,
    resolve_ca_bundle,
    route,
    ssl_context,
)
from credential_sidecar.upstream.proxy import ProxyConfigError
from tests.helpers.tls_pki import CA


def test_ca_bundle_precedence(tmp_path: Path) -> None:
    env = {"AWS_CA_BUNDLE": "/env.pem"}
    assert resolve_ca_bundle("/conn.pem", "/daemon.pem", env) == Path("/conn.pem")
    assert resolve_ca_bundle(None, "/daemon.pem", env) == Path("/daemon.pem")
    assert resolve_ca_bundle(None, None, env) == Path("/env.pem")
    assert resolve_ca_bundle(None, None, {}) is None
    assert resolve_ca_bundle("", " ", {"AWS_CA_BUNDLE": ""}) is None


def test_ssl_context_from_bundle_is_cached(tmp_path: Path) -> None:
    pem = tmp_path / "ca.pem"
    CA.new().write(pem)
    first = ssl_context(pem)
    assert first is ssl_context(pem)
    assert first.verify_mode == ssl.CERT_REQUIRED and first.check_hostname
    assert len(first.get_ca_certs()) == 1  # the bundle replaces the system store
    CA.new().write(pem)  # rewritten: a new context
    st = pem.stat()
    os.utime(pem, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert ssl_context(pem) is not first


def test_system_store_context() -> None:
    ctx = ssl_context(None)
    assert ctx is ssl_context(None)
    assert ctx.verify_mode == ssl.CERT_REQUIRED


def test_bad_bundles(tmp_path: Path) -> None:
    with pytest.raises(CABundleError, match="No such file"):
        ssl_context(tmp_path / "absent.pem")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(CABundleError, match="no usable PEM certificate"):
        ssl_context(junk)


def test_route_for_http_target_puts_credentials_in_request_headers(tmp_path: Path) -> None:
    creds = tmp_path / "c"
    creds.write_text("alice:s3cret")
    creds.chmod(0o600)
    r = route(
        "http://127.0.0.1:8443/sessions",
        proxy="http://127.0.0.1:3128",
        proxy_credentials_file=creds,
        env={},
    )
    kwargs = r.request_kwargs({"Content-Type": "application/json"})
    assert kwargs == {
        "proxy": "http://127.0.0.1:3128",
        "headers": {
            "Content-Type": "application/json",
            "Proxy-Authorization": "Basic YWxpY2U6czNjcmV0",
        },
    }
    assert r.ssl is None
    assert "s3cret" not in repr(r) and "s3cret" not in r.describe()
    assert r.describe() == "http://127.0.0.1:8443/sessions via http://127.0.0.1:3128 (config)"


def test_route_describe_https() -> None:
    r = route("https://sts.amazonaws.com/", env={"HTTPS_PROXY": "http://u:p@proxy:3128"})
    assert r.describe() == (
        "https://sts.amazonaws.com/ via http://proxy:3128 (HTTPS_PROXY), CA system store"
    )


def test_route_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ProxyConfigError):
        route("https://a.example/", proxy="http://u:p@proxy:3128", env={})
    with pytest.raises(CABundleError):
        route("https://a.example/", ca_bundle=tmp_path / "absent", env={})


def test_classify_without_network() -> None:
    url = "https://sts.amazonaws.com/"
    assert classify(TimeoutError(), url, None) == ("no answer from sts.amazonaws.com:443 in time")
    assert classify(aiohttp.ServerTimeoutError(), url, "http://u:p@proxy:3128") == (
        "no answer from sts.amazonaws.com:443 via proxy http://proxy:3128 in time"
    )
    refused = ProxyRefused(
        407, "Proxy Authentication Required", "http://127.0.0.1:1/x", "http://u:p@proxy:3128"
    )
    assert str(refused) == classify(refused, "http://127.0.0.1:1/x", None)
    assert "u:p" not in str(refused)
    assert classify(ProxyConfigError("bad proxy"), url, None) == "bad proxy"
    assert classify(RuntimeError("boom"), url, None) == (
        "request to sts.amazonaws.com:443 failed: RuntimeError('boom')"
    )
