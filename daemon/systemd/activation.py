"""Socket activation: which socket systemd passed us serves which door.

A door takes an inherited socket named for it (``FileDescriptorName=``): ``imds-<connection>``
(or plain ``imds`` when there is one IMDS listener), ``container``, ``health``, ``control`` (the
Unix control socket). Failing a name, it takes a socket bound to exactly its configured address
(for ``control``, its path), which is how one ``.socket`` unit with several ``ListenStream=``
lines works (``FileDescriptorName=`` names all its fds alike). A door with neither binds its
own. Sockets no door claims are closed and logged.

Doors get a duplicate of the inherited socket, so the original stays open for the life of the
process: a listener restarted by a reload keeps the port, and connections queue meanwhile.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path

from credential_sidecar.config.values import Address
from credential_sidecar.logs import get_logger

log = get_logger()


def fd_names(door: str, sole_of_kind: bool) -> tuple[str, ...]:
    """``imds:reports`` -> (``imds-reports``, ``imds`` if it is the only IMDS door)."""
    names = [door.replace(":", "-")]
    kind = door.split(":", 1)[0]
    if ":" in door and sole_of_kind:
        names.append(kind)
    return tuple(names)


Where = Address | Path  # a TCP door's listen address, or the control socket's path


def _same_address(sock: socket.socket, address: Where) -> bool:
    if isinstance(address, Path):
        return (sock.family == socket.AF_UNIX and sock.type == socket.SOCK_STREAM
                and sock.getsockname() == str(address))
    if address.port == 0 or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    if sock.type != socket.SOCK_STREAM:
        return False
    host, port = sock.getsockname()[:2]
    if port != address.port:
        return False
    try:
        return ipaddress.ip_address(host) == ipaddress.ip_address(address.host.strip("[]"))
    except ValueError:  # a host name in the config: "localhost" means loopback
        return address.host.lower() == "localhost" and ipaddress.ip_address(host).is_loopback


def describe(sock: socket.socket) -> str:
    try:
        name = sock.getsockname()
    except OSError:
        return "?"
    if isinstance(name, tuple):
        host, port = name[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return str(name) or "?"


@dataclass
class _Claim:
    sock: socket.socket
    how: str  # "name" or "address"


class SocketPool:
    def __init__(self, inherited: list[tuple[str, socket.socket]] | None = None) -> None:
        self._free = list(inherited or [])
        self._claims: dict[str, _Claim] = {}

    def __bool__(self) -> bool:
        return bool(self._free or self._claims)

    def assign(self, doors: dict[str, Where]) -> None:
        """Match every door at once: names first, so an address never steals a named socket."""
        kinds = [door.split(":", 1)[0] for door in doors]
        for door in doors:
            if door in self._claims:
                continue
            wanted = fd_names(door, kinds.count(door.split(":", 1)[0]) == 1)
            for item in self._free:
                if item[0] in wanted:
                    self._take(door, item, "name")
                    break
        for door, address in doors.items():
            if door in self._claims:
                continue
            for item in self._free:
                if _same_address(item[1], address):
                    self._take(door, item, "address")
                    break

    def _take(self, door: str, item: tuple[str, socket.socket], how: str) -> None:
        self._free.remove(item)
        self._claims[door] = _Claim(item[1], how)

    def socket_for(self, door: str, address: Where) -> socket.socket | None:
        """A duplicate of the door's inherited socket, or None: the door binds by itself."""
        claim = self._claims.get(door)
        if claim is None:
            return None
        if claim.how == "address" and not _same_address(claim.sock, address):
            log.warning("the config moved this door off its inherited socket; binding anew",
                        door=door, inherited=describe(claim.sock), listen=str(address))
            return None
        bound = describe(claim.sock)
        if (claim.how == "name" and (isinstance(address, Path) or address.port != 0)
                and not _same_address(claim.sock, address)):
            log.warning("the socket unit's address differs from the config's; using the socket",
                        door=door, inherited=bound, listen=str(address))
        return claim.sock.dup()

    def release_unclaimed(self) -> None:
        """Close what no door wanted: a port held open that nothing answers is worse."""
        for name, sock in self._free:
            log.warning("no listener for this inherited socket; closing it",
                        fd_name=name, address=describe(sock),
                        hint="name it imds-<connection>, imds, container, health or control, "
                             "or bind it to a configured listen address or control socket path")
            sock.close()
        self._free.clear()

    def close(self) -> None:
        for claim in self._claims.values():
            with contextlib.suppress(OSError):
                claim.sock.close()
        self._claims.clear()
        self.release_unclaimed()
