"""aiobotocore STS against moto_server over TLS, direct and through tinyproxy."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession
from botocore.exceptions import EndpointConnectionError, ProxyConnectionError, SSLError

from credential_sidecar.clock import SystemClock
from credential_sidecar.config.load import parse_config
from credential_sidecar.config.model import AccessKeysConnection
from credential_sidecar.upstream.access_keys import AccessKeySource
from credential_sidecar.upstream.aws_network import BotoNetwork, boto_network, classify_botocore
from credential_sidecar.upstream.base import UpstreamError
from tests.helpers.moto_tls import MotoTLS, run_moto_tls
from tests.helpers.tinyproxy import Tinyproxy

# open_proxy, auth_proxy, deny_proxy, creds_file and bad_creds_file: tests/e2e/conftest.py
pytestmark = pytest.mark.usefixtures("collect_garbage")  # tests/e2e/conftest.py

KEY_ID = "AKIAIOSFODNN7EXAMPLE"


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoTLS]:
    with run_moto_tls(tmp_path_factory.mktemp("moto")) as server:
        yield server


async def get_caller_identity(
    endpoint_url: str, config: AioConfig, **client_kwargs: Any
) -> dict[str, Any]:
    """STS GetCallerIdentity at ``endpoint_url`` with a made-up key (moto takes any)."""
    async with AioSession().create_client(
        "sts",
        region_name="us-east-1",
        endpoint_url=endpoint_url,
        aws_access_key_id=KEY_ID,
        aws_secret_access_key="x" * 40,
        config=config,
        **client_kwargs,
    ) as client:
        response: dict[str, Any] = await client.get_caller_identity()
        return response


async def caller_identity(net: BotoNetwork) -> dict[str, Any]:
    """GetCallerIdentity with the settings boto_network gives botocore (proxies, verify)."""
    config = AioConfig(
        retries={"total_max_attempts": 1},
        connect_timeout=5,
        read_timeout=10,
        **net.config_kwargs(),
    )
    return await get_caller_identity(net.endpoint_url, config, **net.client_kwargs())


def via_auth_proxy(moto: MotoTLS, auth_proxy: Tinyproxy, credentials: Path) -> BotoNetwork:
    """To moto through auth_proxy with the proxy credentials in ``credentials``."""
    return boto_network(moto.url, proxy=auth_proxy.url, proxy_credentials_file=credentials,
                        ca_bundle=moto.ca_pem, env={})


async def test_direct(moto: MotoTLS) -> None:
    net = boto_network(moto.url, ca_bundle=moto.ca_pem, env={})
    assert net.config_kwargs() == {"proxies": {}}
    assert (await caller_identity(net))["Account"] == "123456789012"


async def test_through_proxy(moto: MotoTLS, open_proxy: Tinyproxy) -> None:
    net = boto_network(moto.url, proxy=open_proxy.url, ca_bundle=moto.ca_pem, env={})
    before = len(open_proxy.connects())
    assert (await caller_identity(net))["Account"] == "123456789012"
    assert open_proxy.connects()[before:] == [moto.url.removeprefix("https://")]


async def test_through_auth_proxy(moto: MotoTLS, auth_proxy: Tinyproxy, creds_file: Path) -> None:
    net = via_auth_proxy(moto, auth_proxy, creds_file)
    assert "s3cret" not in repr(net) and "s3cret" not in net.describe()
    assert (await caller_identity(net))["Account"] == "123456789012"


async def test_no_proxy_cidr_decided_by_us(moto: MotoTLS, tmp_path: Path) -> None:
    """botocore alone would send this through the (dead) proxy: its NO_PROXY has no CIDR."""
    env = {
        "HTTPS_PROXY": "http://127.0.0.1:1",
        "NO_PROXY": "127.0.0.0/8",
        "AWS_CA_BUNDLE": str(moto.ca_pem),
    }
    net = boto_network(moto.url, env=env)
    assert net.proxy is None and net.verify == str(moto.ca_pem)
    assert (await caller_identity(net))["Account"] == "123456789012"


async def test_botocore_own_env_handling_ignores_cidr(
    moto: MotoTLS, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.0/8")
    botocore_decides = AioConfig(retries={"total_max_attempts": 1})  # proxies=None
    with pytest.raises(ProxyConnectionError):
        await get_caller_identity(moto.url, botocore_decides, verify=str(moto.ca_pem))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # an exact name works there
    identity = await get_caller_identity(moto.url, botocore_decides, verify=str(moto.ca_pem))
    assert identity["Account"] == "123456789012"


async def failure(net: BotoNetwork) -> tuple[BaseException, str]:
    with pytest.raises((ProxyConnectionError, SSLError, EndpointConnectionError)) as info:
        await caller_identity(net)
    return info.value, classify_botocore(
        info.value, net.endpoint_url, net.proxy, ca_bundle=str(net.verify)
    )


async def test_proxy_407(moto: MotoTLS, auth_proxy: Tinyproxy) -> None:
    net = boto_network(moto.url, proxy=auth_proxy.url, ca_bundle=moto.ca_pem, env={})
    exc, message = await failure(net)
    assert isinstance(exc, ProxyConnectionError)
    assert str(exc) == f'Failed to connect to proxy URL: "{auth_proxy.url}"'  # no status there
    assert ": 407 Proxy Authentication Required (the proxy wants credentials" in message


async def test_proxy_wrong_credentials(
    moto: MotoTLS, auth_proxy: Tinyproxy, bad_creds_file: Path
) -> None:
    net = via_auth_proxy(moto, auth_proxy, bad_creds_file)
    exc, message = await failure(net)
    assert isinstance(exc, ProxyConnectionError)
    assert "***:***@" in str(exc) and "wrong" not in str(exc)  # botocore masks the userinfo
    assert ": 401 Unauthorized (the proxy refused the credentials" in message
    assert "wrong" not in message


async def test_connect_denied(moto: MotoTLS, deny_proxy: Tinyproxy) -> None:
    net = boto_network(moto.url, proxy=deny_proxy.url, ca_bundle=moto.ca_pem, env={})
    exc, message = await failure(net)
    assert isinstance(exc, ProxyConnectionError)
    assert ": 403 Access violation (" in message


async def test_tls_failure_through_proxy(moto: MotoTLS, open_proxy: Tinyproxy) -> None:
    net = boto_network(moto.url, proxy=open_proxy.url, env={})  # system store
    exc, message = await failure(net)
    assert isinstance(exc, SSLError)
    port = moto.url.rsplit(":", 1)[1]
    assert message.startswith(
        f"TLS certificate verification failed for 127.0.0.1:{port} via proxy {open_proxy.url}: "
        "unable to get local issuer certificate"
    )


async def test_tls_failure_with_botocore_default_store(moto: MotoTLS) -> None:
    net = boto_network(moto.url, use_system_store=False, env={})
    assert net.verify is None
    exc, message = await failure(net)
    assert isinstance(exc, SSLError)
    assert "unable to get local issuer certificate" in message


async def test_proxy_unreachable(moto: MotoTLS) -> None:
    net = boto_network(moto.url, proxy="http://127.0.0.1:1", ca_bundle=moto.ca_pem, env={})
    exc, message = await failure(net)
    assert isinstance(exc, ProxyConnectionError)
    assert message == "cannot connect to proxy http://127.0.0.1:1: Connection refused"


# --- the daemon's AccessKeySource with the connection's network settings -------------------------


def key_source(tmp: Path, moto: MotoTLS, **extra: Any) -> AccessKeySource:
    secret = tmp / "k.secret"
    secret.write_text("x" * 40 + "\n")
    secret.chmod(0o600)
    data = {"name": "k", "type": "access-keys", "access_key_id": KEY_ID,
            "secret_access_key_file": str(secret), "endpoint": moto.url, **extra}
    conn = parse_config({"connections": [data]}).connections[0]
    assert isinstance(conn, AccessKeysConnection)
    return AccessKeySource(conn, SystemClock(), learn=False, timeout=5.0)


async def test_access_keys_through_auth_proxy(
    tmp_path: Path, moto: MotoTLS, auth_proxy: Tinyproxy, creds_file: Path
) -> None:
    source = key_source(tmp_path, moto, proxy=auth_proxy.url, ca_bundle=str(moto.ca_pem),
                        proxy_credentials_file=str(creds_file))
    before = len(auth_proxy.connects())
    try:
        creds = await source.fetch()
    finally:
        await source.close()
    assert creds.session_token  # plain moto's GetSessionToken answered through the proxy
    assert len(auth_proxy.connects()) == before + 1


async def test_access_keys_407_and_tls_messages(
    tmp_path: Path, moto: MotoTLS, auth_proxy: Tinyproxy, open_proxy: Tinyproxy
) -> None:
    source = key_source(tmp_path, moto, proxy=auth_proxy.url, ca_bundle=str(moto.ca_pem))
    try:
        with pytest.raises(UpstreamError) as caught:
            await source.fetch()
    finally:
        await source.close()
    assert caught.value.code == "ConnectionError"
    assert caught.value.message.startswith(
        f"proxy {auth_proxy.url} refused the CONNECT to {moto.url.removeprefix('https://')}: "
        "407 Proxy Authentication Required"
    )
    system = "/etc/ssl/certs/ca-certificates.crt"
    source = key_source(tmp_path, moto, proxy=open_proxy.url, ca_bundle=system)
    try:
        with pytest.raises(UpstreamError) as caught:
            await source.fetch()
    finally:
        await source.close()
    assert caught.value.message.startswith(
        f"TLS certificate verification failed for {moto.url.removeprefix('https://')} via proxy "
        f"{open_proxy.url}: unable to get local issuer certificate"
    )


async def test_access_keys_no_proxy_cidr(
    tmp_path: Path, moto: MotoTLS, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:1")  # dead: must not be used
    monkeypatch.setenv("NO_PROXY", "127.0.0.0/8")
    monkeypatch.setenv("AWS_CA_BUNDLE", str(moto.ca_pem))
    source = key_source(tmp_path, moto)
    try:
        creds = await source.fetch()
    finally:
        await source.close()
    assert creds.session_token
