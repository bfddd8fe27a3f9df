"""The daemon's CreateSession client through tinyproxy to the emulator served over TLS.

The connection's own settings (proxy, no_proxy, proxy_credentials_file, ca_bundle) and the
environment (HTTPS_PROXY, NO_PROXY, AWS_CA_BUNDLE) decide the route; failures come back as one
UpstreamError line quoting the proxy's status line or the TLS failure with its host.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from credential_sidecar.clock import SystemClock
from credential_sidecar.config.load import parse_config
from credential_sidecar.devtools import pki
from credential_sidecar.devtools.emulator.server import Emulator, Profile
from credential_sidecar.upstream.base import UpstreamError
from credential_sidecar.upstream.roles_anywhere import RolesAnywhereSource
from tests.helpers.tinyproxy import Tinyproxy, credentials_file
from tests.helpers.tls_servers import https_server

ACCOUNT = "111122223333"
TA = f"arn:aws:rolesanywhere:eu-west-1:{ACCOUNT}:trust-anchor/t"
PROFILE = f"arn:aws:rolesanywhere:eu-west-1:{ACCOUNT}:profile/p"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/r"
# open_proxy, auth_proxy, deny_proxy and creds_file: tests/e2e/conftest.py
pytestmark = pytest.mark.usefixtures("collect_garbage")  # tests/e2e/conftest.py


@dataclass
class TLSEmulator:
    emulator: Emulator
    url: str
    anchor_ca: pki.Issued
    tls_ca_pem: Path


@pytest.fixture
async def emu(tmp_path: Path) -> AsyncIterator[TLSEmulator]:
    """The emulator, trusting a fresh anchor, over TLS on 127.0.0.1 (a cert for it alone)."""
    anchor = pki.make_ca("network anchor")
    emu = Emulator(trust_anchors={TA: [anchor.certificate]}, profiles={PROFILE: Profile((ROLE,))})
    async with https_server(tmp_path, names=["127.0.0.1"], app=emu.app) as server:
        yield TLSEmulator(emu, server.url, anchor, server.ca_pem)


def source(tmp: Path, emu: TLSEmulator, **extra: object) -> RolesAnywhereSource:
    leaf = pki.make_leaf(emu.anchor_ca, "host")
    (tmp / "c.pem").write_bytes(leaf.cert_pem())
    pki.write_private(tmp / "k.pem", leaf.key_pem())
    conn: dict[str, object] = {
        "name": "c", "type": "roles-anywhere", "certificate": str(tmp / "c.pem"),
        "private_key": str(tmp / "k.pem"), "trust_anchor_arn": TA, "profile_arn": PROFILE,
        "role_arn": ROLE, "session_name": "net", "endpoint": emu.url, **extra,
    }
    config = parse_config({"connections": [conn]})
    return RolesAnywhereSource(config.connections[0], SystemClock(), timeout=5.0)  # type: ignore[arg-type]


async def fetch_ok(src: RolesAnywhereSource) -> str:
    try:
        creds = await src.fetch()
    finally:
        await src.close()
    return creds.access_key_id


async def refusal(src: RolesAnywhereSource) -> UpstreamError:
    try:
        with pytest.raises(UpstreamError) as caught:
            await src.fetch()
    finally:
        await src.close()
    return caught.value


async def test_through_proxy_with_credentials_and_ca_bundle(
    tmp_path: Path, emu: TLSEmulator, auth_proxy: Tinyproxy, creds_file: Path
) -> None:
    src = source(tmp_path, emu, proxy=auth_proxy.url, ca_bundle=str(emu.tls_ca_pem),
                 proxy_credentials_file=str(creds_file))
    assert (await fetch_ok(src)).startswith("ASIA")
    assert auth_proxy.connects()[-1] == emu.url.removeprefix("https://")
    assert emu.emulator.succeeded == 1


async def test_env_proxy_and_aws_ca_bundle(
    tmp_path: Path, emu: TLSEmulator, open_proxy: Tinyproxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", open_proxy.url)
    monkeypatch.setenv("AWS_CA_BUNDLE", str(emu.tls_ca_pem))
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    before = len(open_proxy.connects())
    assert (await fetch_ok(source(tmp_path, emu))).startswith("ASIA")
    assert len(open_proxy.connects()) == before + 1


async def test_no_proxy_cidr_bypasses(
    tmp_path: Path, emu: TLSEmulator, open_proxy: Tinyproxy
) -> None:
    before = open_proxy.connects()
    src = source(tmp_path, emu, proxy=open_proxy.url, no_proxy="127.0.0.0/8",
                 ca_bundle=str(emu.tls_ca_pem))
    assert (await fetch_ok(src)).startswith("ASIA")
    assert open_proxy.connects() == before


async def test_407_is_named(tmp_path: Path, emu: TLSEmulator, auth_proxy: Tinyproxy) -> None:
    error = await refusal(source(tmp_path, emu, proxy=auth_proxy.url,
                                 ca_bundle=str(emu.tls_ca_pem)))
    assert error.code == "ConnectionError"
    assert error.message.startswith(
        f"proxy {auth_proxy.url} refused the CONNECT to {emu.url.removeprefix('https://')}: "
        "407 Proxy Authentication Required (the proxy wants credentials"
    )


async def test_wrong_credentials_are_named_not_shown(
    tmp_path: Path, emu: TLSEmulator, auth_proxy: Tinyproxy
) -> None:
    wrong = credentials_file(tmp_path / "proxy.auth", "alice", "hunter2")
    src = source(tmp_path, emu, proxy=auth_proxy.url, ca_bundle=str(emu.tls_ca_pem),
                 proxy_credentials_file=str(wrong))
    error = await refusal(src)
    assert "401 Unauthorized (the proxy refused the credentials" in error.message
    assert "hunter2" not in str(error)


async def test_connect_denied_is_named(
    tmp_path: Path, emu: TLSEmulator, deny_proxy: Tinyproxy
) -> None:
    error = await refusal(source(tmp_path, emu, proxy=deny_proxy.url,
                                 ca_bundle=str(emu.tls_ca_pem)))
    assert ": 403 Access violation (the proxy does not allow a tunnel" in error.message


async def test_untrusted_tls_names_the_host(
    tmp_path: Path, emu: TLSEmulator, open_proxy: Tinyproxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
    error = await refusal(source(tmp_path, emu, proxy=open_proxy.url))
    host = emu.url.removeprefix("https://")
    assert error.message.startswith(
        f"TLS certificate verification failed for {host} via proxy {open_proxy.url}: "
        "unable to get local issuer certificate (trusting the system CA store"
    )


async def test_bad_network_settings_are_persistent(tmp_path: Path, emu: TLSEmulator) -> None:
    loose = tmp_path / "loose.auth"
    loose.write_text("alice:s3cret\n")
    loose.chmod(0o644)
    error = await refusal(source(tmp_path, emu, proxy="http://127.0.0.1:1",
                                 proxy_credentials_file=str(loose)))
    assert error.code == "NetworkConfigError" and error.persistent
    assert "chmod 600" in error.message
    error = await refusal(source(tmp_path, emu, ca_bundle=str(tmp_path / "absent.pem")))
    assert error.code == "NetworkConfigError" and "absent.pem" in error.message


def test_config_refuses_credentials_in_the_proxy_url(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="proxy_credentials_file") as caught:
        parse_config({"connections": [{
            "name": "c", "type": "roles-anywhere", "certificate": "/c.pem",
            "private_key": "/k.pem", "trust_anchor_arn": TA, "profile_arn": PROFILE,
            "role_arn": ROLE, "session_name": "net", "proxy": "http://bob:pw@proxy:3128",
        }]})
    assert "pw" not in str(caught.value).replace("proxy_credentials_file", "")
