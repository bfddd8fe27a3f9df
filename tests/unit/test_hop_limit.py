"""[[imds]] hop_limit: the listening socket's IP TTL / IPv6 hop limit, inherited by every
accepted connection; several IMDS listeners for one connection."""

from __future__ import annotations

import asyncio
import socket
import urllib.request
from pathlib import Path

import pytest
from aiohttp import web

from credential_sidecar.config.errors import ConfigError
from credential_sidecar.config.load import parse_config
from credential_sidecar.doors.guards import HostGuard
from credential_sidecar.doors.listener import Listener
from credential_sidecar.server import IMDS_ALIASES, Daemon


async def _accepted_hops(request: web.Request) -> web.Response:
    """What the connection the daemon accepted carries (getsockopt on the accepted socket)."""
    sock = request.transport.get_extra_info("socket") if request.transport else None
    assert sock is not None
    if sock.family == socket.AF_INET6:
        hops = sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS)
    else:
        hops = sock.getsockopt(socket.IPPROTO_IP, socket.IP_TTL)
    return web.Response(text=str(hops))


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
@pytest.mark.parametrize("hops", [1, 7, None])
async def test_accepted_connections_inherit_the_hop_limit(host: str, hops: int | None) -> None:
    if host == "::1" and not _has_ipv6_loopback():
        pytest.skip("no IPv6 loopback on this host")
    app = web.Application()
    app.router.add_get("/", _accepted_hops)
    listener = Listener("imds:test", app, host, 0, hop_limit=hops)
    await listener.start()
    try:
        def fetch() -> str:
            with urllib.request.urlopen(listener.url, timeout=5) as response:
                return str(response.read().decode())

        got = await asyncio.to_thread(fetch)
    finally:
        await listener.stop()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as fresh:  # without hop_limit: the system's default
        default = (fresh.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS)
                   if family == socket.AF_INET6 else
                   fresh.getsockopt(socket.IPPROTO_IP, socket.IP_TTL))
    assert int(got) == (hops if hops is not None else default)


def test_imds_host_check_knows_ec2_addresses() -> None:
    v4 = HostGuard("169.254.169.254", aliases=IMDS_ALIASES)
    v4.port = 80
    assert v4.allows("169.254.169.254") and v4.allows("169.254.169.254:80")
    assert v4.allows("[fd00:ec2::254]:80")
    assert not v4.allows("169.254.169.253") and not v4.allows("[fd00:ec2::255]")
    assert not v4.allows("instance-data") and not v4.allows("169.254.169.254:81")
    v6 = HostGuard("[fd00:ec2::254]", aliases=IMDS_ALIASES)
    assert v6.allows("[fd00:ec2::254]") and v6.allows("169.254.169.254")


def test_one_connection_may_have_several_imds_listeners(tmp_path: Path) -> None:
    conn = {"name": "app", "type": "access-keys", "access_key_id": "AKIAIOSFODNN7EXAMPLE"}
    config = parse_config({
        "daemon": {"state_dir": str(tmp_path)},
        "imds": [{"listen": "127.0.0.1:0", "connection": "app"},
                 {"listen": "[::1]:0", "connection": "app", "hop_limit": 2},
                 {"listen": "127.0.0.2:0", "connection": "app"}],
        "connections": [conn],
    })
    doors = Daemon(config)._doors(config)
    assert list(doors) == ["imds:app", "imds:app:2", "imds:app:3"]
    assert doors["imds:app:2"][0] == config.imds[1]


@pytest.mark.parametrize("hops", [0, 256, "1"])
def test_hop_limit_range(hops: object) -> None:
    conn = {"name": "app", "type": "access-keys", "access_key_id": "AKIAIOSFODNN7EXAMPLE"}
    with pytest.raises(ConfigError) as info:
        parse_config({"imds": [{"listen": "127.0.0.1:0", "connection": "app", "hop_limit": hops}],
                      "connections": [conn]})
    assert info.value.problems[0].startswith("imds[0].hop_limit: ")
