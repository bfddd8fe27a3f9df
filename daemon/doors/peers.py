"""Who is on the other end of a connection, as the kernel says, and whether they may have a set.

A Unix socket carries its peer's credentials (SO_PEERCRED); a TCP socket does not. For a TCP
connection between two local sockets the kernel still knows which uid owns the peer's socket:
``sock_diag`` (NETLINK_SOCK_DIAG, ``inet_diag``) answers that for one exact 4-tuple, and
``/proc/net/tcp{,6}`` lists it for every socket (the fallback where netlink is unavailable).

inet_diag reports only the uid of the socket's owner, not a process's groups: a TCP peer's
groups are that user's groups as the user database has them (its primary group and the groups
listing it, ``getgrouplist``), not the possibly narrower set a process runs with. So
``allowed_gids`` on the TCP doors means "users who are members of these groups".

One rule decides every door (control socket, IMDS, container): :func:`admits`.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import pwd
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
NLMSG_ERROR = 0x2
_NLMSGHDR = struct.Struct("=IHHII")
_SOCKID_PORTS = struct.Struct(">HH")
_DIAG_MSG_UID_OFFSET = 4 + 48 + 12  # family..retrans, sockid, expires, rqueue, wqueue
_NOCOOKIE = 0xFFFFFFFF
GROUPS_TTL = 60.0  # seconds a user's group list is trusted before it is read again


@dataclass(frozen=True)
class Peer:
    """A local user on the other end: uid always; pid only from SO_PEERCRED (else 0)."""

    pid: int
    uid: int
    gid: int
    groups: tuple[int, ...] = ()

    def __str__(self) -> str:
        return f"uid {self.uid}"

    @property
    def label(self) -> str:
        """How /status records who was served: ``uid:1001``."""
        return f"uid:{self.uid}"


class Grantee(Protocol):
    """What the doors read from a connection's configuration."""

    @property
    def allowed_uids(self) -> Sequence[int]: ...
    @property
    def allowed_gids(self) -> Sequence[int]: ...


def admits(conn: Grantee, peer: Peer, daemon_uid: int | None = None) -> bool:
    """Root and the daemon's own uid always (either could read the daemon's memory anyway);
    otherwise a uid in ``allowed_uids`` or a primary or supplementary group in ``allowed_gids``.
    """
    daemon_uid = os.geteuid() if daemon_uid is None else daemon_uid
    if peer.uid in (0, daemon_uid) or peer.uid in conn.allowed_uids:
        return True
    return any(gid in conn.allowed_gids for gid in (peer.gid, *peer.groups))


def restricted(conn: Grantee) -> bool:
    """Whether the TCP doors check who asks for this connection (it names uids or gids)."""
    return bool(conn.allowed_uids or conn.allowed_gids)


# --- the kernel's answer ---------------------------------------------------------------------


def _family_and_packed(addr: str) -> tuple[int, bytes]:
    ip = ipaddress.ip_address(addr.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # a dual-stack listener: the peer's socket is IPv4
    if isinstance(ip, ipaddress.IPv4Address):
        return socket.AF_INET, ip.packed.ljust(16, b"\0")
    return socket.AF_INET6, ip.packed


class _Netlink:
    """One sock_diag socket, reused. The kernel answers inside sendto(), so the reply is already
    queued when recv() runs: recv never waits (MSG_DONTWAIT), and a lookup costs a few
    microseconds on the event loop (tests/unit/test_peers.py measures it)."""

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self._seq = 0

    def _socket(self) -> socket.socket:
        if self._sock is None:
            self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG)
        return self._sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def uid(self, src: str, sport: int, dst: str, dport: int) -> int | None:
        """The uid owning the TCP socket bound to src:sport and connected to dst:dport;
        None when there is none. OSError when netlink cannot answer."""
        family, src_packed = _family_and_packed(src)
        family_dst, dst_packed = _family_and_packed(dst)
        if family != family_dst:
            return None
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        body = struct.pack(
            "=BBBxI", family, socket.IPPROTO_TCP, 0, 0xFFFFFFFF
        ) + _SOCKID_PORTS.pack(sport, dport) + src_packed + dst_packed + struct.pack(
            "=III", 0, _NOCOOKIE, _NOCOOKIE
        )
        header = _NLMSGHDR.pack(_NLMSGHDR.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST,
                                self._seq, 0)
        sock = self._socket()
        try:
            sock.sendto(header + body, (0, 0))
            while True:
                reply = sock.recv(8192, socket.MSG_DONTWAIT)
                length, kind, _, seq, _ = _NLMSGHDR.unpack_from(reply)
                if seq == self._seq:
                    break  # a reply to an earlier, abandoned request: skip it
        except OSError:
            self.close()
            raise
        if kind == NLMSG_ERROR:
            code = -struct.unpack_from("=i", reply, _NLMSGHDR.size)[0]
            if code == errno.ENOENT:
                return None
            raise OSError(code, os.strerror(code))
        if kind != SOCK_DIAG_BY_FAMILY or length < _NLMSGHDR.size + _DIAG_MSG_UID_OFFSET + 4:
            raise OSError(errno.EPROTO, "unexpected sock_diag reply")
        uid: int = struct.unpack_from("=I", reply, _NLMSGHDR.size + _DIAG_MSG_UID_OFFSET)[0]
        return uid


def _proc_address(text: str, family: int) -> tuple[bytes, int]:
    """``0100007F:1F90`` -> (packed address, port): /proc prints each 32-bit word host-endian."""
    addr, port = text.split(":")
    raw = bytes.fromhex(addr)
    words = [raw[i : i + 4][::-1] if _LITTLE else raw[i : i + 4] for i in range(0, len(raw), 4)]
    packed = b"".join(words)
    return (packed if family == socket.AF_INET6 else packed[:4]), int(port, 16)


_LITTLE = struct.pack("=I", 1) == b"\x01\0\0\0"


def proc_uid(src: str, sport: int, dst: str, dport: int, proc: str = "/proc/net") -> int | None:
    """The fallback: the ``uid`` column of the /proc/net/tcp{,6} line for this 4-tuple."""
    family, src_packed = _family_and_packed(src)
    _, dst_packed = _family_and_packed(dst)
    if family == socket.AF_INET:
        src_packed, dst_packed = src_packed[:4], dst_packed[:4]
    table = "tcp" if family == socket.AF_INET else "tcp6"
    with open(f"{proc}/{table}", encoding="ascii") as handle:
        next(handle, None)  # header
        for line in handle:
            fields = line.split()
            if len(fields) < 8:
                continue
            if (_proc_address(fields[1], family) == (src_packed, sport)
                    and _proc_address(fields[2], family) == (dst_packed, dport)):
                return int(fields[7])
    return None


def _groups_of(uid: int) -> tuple[int, tuple[int, ...]]:
    """A user's primary gid and every group listing them, from the user database."""
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        return -1, ()  # a uid with no name: no groups at all
    try:
        groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
    except OSError:
        groups = (entry.pw_gid,)
    return entry.pw_gid, groups


class PeerFinder:
    """Looks up the local user behind an accepted TCP connection."""

    def __init__(self, *, netlink: bool = True, proc: str = "/proc/net") -> None:
        self._netlink = _Netlink() if netlink else None
        self._proc = proc
        self._groups: dict[int, tuple[float, int, tuple[int, ...]]] = {}

    def close(self) -> None:
        if self._netlink is not None:
            self._netlink.close()

    def netlink_uid(self, local: tuple[str, int], remote: tuple[str, int]) -> int | None:
        """The peer's uid from sock_diag alone (microseconds, fine on the event loop); OSError
        when netlink is unavailable. ``local``/``remote``: the accepting side's sockname and
        peername."""
        if self._netlink is None:
            raise OSError(errno.EAFNOSUPPORT, "sock_diag not used")
        return self._netlink.uid(remote[0], remote[1], local[0], local[1])

    def uid(self, local: tuple[str, int], remote: tuple[str, int]) -> int | None:
        """sock_diag, else /proc/net/tcp{,6} (which reads every socket of the host: call it off
        the event loop). None when no local socket matches (a peer on another host)."""
        try:
            return self.netlink_uid(local, remote)
        except OSError:
            pass  # no sock_diag here (a sandbox without AF_NETLINK): read /proc
        try:
            return proc_uid(remote[0], remote[1], local[0], local[1], self._proc)
        except (OSError, ValueError):
            return None

    def with_groups(self, uid: int) -> Peer:
        """A peer of ``uid`` with that user's groups (cached for GROUPS_TTL seconds)."""
        now = time.monotonic()
        cached = self._groups.get(uid)
        if cached is None or cached[0] < now:
            gid, groups = _groups_of(uid)
            if len(self._groups) > 4096:
                self._groups.clear()
            cached = self._groups[uid] = (now + GROUPS_TTL, gid, groups)
        return Peer(0, uid, cached[1], cached[2])

    def peer(self, local: tuple[str, int], remote: tuple[str, int]) -> Peer | None:
        """The peer with its user's groups; None when no local socket matches (another host)."""
        uid = self.uid(local, remote)
        return None if uid is None else self.with_groups(uid)


__all__ = ["Grantee", "Peer", "PeerFinder", "admits", "proc_uid", "restricted"]
