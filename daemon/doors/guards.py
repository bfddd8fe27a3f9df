"""Request checks shared by the credential doors.

A credential endpoint on loopback is still reachable from a browser through DNS
rebinding, and from a misconfigured proxy; both announce themselves in headers.
"""

from __future__ import annotations

import ipaddress

from aiohttp import web

from credential_sidecar.config.values import is_loopback


class HostGuard:
    """Accept only Host headers naming this listener (or a well-known alias for it)."""

    def __init__(self, listen_host: str, aliases: tuple[str, ...] = ()) -> None:
        names = {listen_host.strip("[]").lower(), *aliases}
        if is_loopback(listen_host):
            names |= {"localhost", "127.0.0.1", "::1"}
        self.names = frozenset(names)
        # A wildcard listener (0.0.0.0, ::) answers at every address of the host, which it
        # cannot list (a pod's IP, a probe's): any address literal is this host, while a
        # rebinding page can only send a name. Names other than localhost stay refused.
        self.any_address = _unspecified(listen_host)
        self.port: int | None = None  # set once bound (port 0 means "any free one")

    def allows(self, header: str | None) -> bool:
        if not header:
            return True  # HTTP/1.0 clients; browsers (the rebinding risk) always send Host
        host, port = header.strip().lower(), None
        if host.startswith("["):
            end = host.find("]")
            if end < 0:
                return False
            rest = host[end + 1 :]
            host = host[1:end]
            if rest.startswith(":"):
                port = rest[1:]
            elif rest:
                return False
        elif host.count(":") == 1:
            host, port = host.split(":")
        if port is not None and self.port is not None and port != str(self.port):
            return False
        if self.any_address and (host == "localhost" or _is_address(host)):
            return True
        return host in self.names


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False


def forwarded(request: web.Request) -> bool:
    """A request that came through a proxy: real IMDS refuses these."""
    return "X-Forwarded-For" in request.headers or "Forwarded" in request.headers
