"""Who may take a connection's set over TCP, and the record of every hand-out.

The IMDS and container doors ask :class:`Access` before they hand out a set: the peer's uid comes
from the kernel (doors/peers.py), once per TCP connection (the listener fills the cache when it
accepts; a request on a connection it missed looks it up then). The rule is the control socket's
(:func:`~credential_sidecar.doors.peers.admits`): a connection with ``allowed_uids`` or
``allowed_gids`` is served to root, to the daemon's own uid, and to those uids and members of
those groups; a connection with neither is served to any local user, as before. A peer the kernel
cannot name (a client on another host, through ``allow_non_loopback``) is refused for a
connection that names uids or gids.

Every hand-out and every refusal goes to the audit trail (doors/audit.py: a line per new fact,
never a secret), a count in ``credential_sidecar_handouts_total{door,connection,result}`` and,
for hand-outs, a row of the connection's ``used_by`` in /status (peer ``uid:1001``).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable

from aiohttp import web

from credential_sidecar.credentials import Credentials
from credential_sidecar.doors.audit import AuditTrail
from credential_sidecar.doors.peers import Grantee, Peer, PeerFinder, admits, restricted
from credential_sidecar.logs import get_logger

log = get_logger()

_UNKNOWN = object()  # the listener could not look the peer up at accept (no netlink)


def addresses(transport: asyncio.BaseTransport) -> tuple[tuple[str, int], tuple[str, int]] | None:
    """(local, remote) host and port of a TCP transport; None for anything else."""
    local = transport.get_extra_info("sockname")
    remote = transport.get_extra_info("peername")
    if not (isinstance(local, tuple) and isinstance(remote, tuple)):
        return None
    return (str(local[0]), int(local[1])), (str(remote[0]), int(remote[1]))


class Access:
    def __init__(
        self,
        finder: PeerFinder,
        connection: Callable[[str], Grantee | None],
        audit: AuditTrail,
        *,
        record_use: Callable[[str, str, str], None] | None = None,
        count: Callable[[str, str, str], None] | None = None,
    ) -> None:
        self.finder = finder
        self.connection = connection
        self.audit = audit
        self.record_use = record_use
        self.count = count
        self._peers: weakref.WeakKeyDictionary[asyncio.BaseTransport, object] = (
            weakref.WeakKeyDictionary())

    # -- the per-connection cache ----------------------------------------------------------

    def remember(self, transport: asyncio.BaseTransport) -> Peer | None:
        """At accept: look the peer up with netlink (microseconds), never /proc (milliseconds,
        left for the first request, off the event loop). Returns the peer when known."""
        pair = addresses(transport)
        if pair is None:
            return None
        try:
            uid = self.finder.netlink_uid(*pair)
        except OSError:
            self._peers[transport] = _UNKNOWN
            return None
        peer = self.finder.with_groups(uid) if uid is not None else None
        self._peers[transport] = peer
        return peer

    async def peer(self, request: web.Request) -> Peer | None:
        transport = request.transport
        if transport is None:
            return None
        found = self._peers.get(transport, None)
        if found is None and transport not in self._peers:
            self.remember(transport)
            found = self._peers.get(transport)
        if found is _UNKNOWN:
            pair = addresses(transport)
            found = None if pair is None else await asyncio.to_thread(self.finder.peer, *pair)
            self._peers[transport] = found
        return found if isinstance(found, Peer) else None

    # -- the rule and the record -----------------------------------------------------------

    async def refusal(self, request: web.Request, door: str, name: str) -> str | None:
        """None when the peer may have ``name``'s set; else why not (for the 403's message)."""
        conn = self.connection(name)
        if conn is None or not restricted(conn):
            return None
        peer = await self.peer(request)
        if peer is not None and admits(conn, peer):
            return None
        who = str(peer) if peer is not None else "a peer the kernel cannot name"
        self.audit.refused(door, name, peer.uid if peer else None, request.remote)
        if self.count is not None:
            self.count(door, name, "refused")
        if peer is None:
            return (f"connection {name} is served only to local users it names; the kernel "
                    "does not say which local user this request comes from")
        return f"{who} may not read connection {name}"

    async def served(self, request: web.Request, door: str, name: str,
                     creds: Credentials) -> None:
        peer = await self.peer(request)
        self.audit.served(door, name, peer.uid if peer else None, creds.access_key_id)
        if self.count is not None:
            self.count(door, name, "served")
        if self.record_use is not None:
            self.record_use(name, door, peer.label if peer else "")




# --- bounded connections ---------------------------------------------------------------------

MAX_CONNECTIONS = 256  # open TCP connections per door
MAX_PER_UID = 32  # ... of which one local user may hold


class ConnectionGate:
    """Counts one door's open TCP connections, in all and per peer uid, and says whether one
    more may stay. Excess connections are closed at accept, before aiohttp sees them, so one
    local user opening thousands of idle connections costs the others nothing (and costs the
    daemon a descriptor for a moment only)."""

    def __init__(
        self,
        door: str,
        access: Access | None,
        *,
        max_connections: int = MAX_CONNECTIONS,
        max_per_uid: int = MAX_PER_UID,
        on_reject: Callable[[str, str], None] | None = None,
    ) -> None:
        self.door = door
        self.access = access
        self.max_connections = max_connections
        self.max_per_uid = max_per_uid
        self.on_reject = on_reject
        self.open = 0
        self.per_uid: dict[int, int] = {}
        self._uid_of: weakref.WeakKeyDictionary[asyncio.BaseTransport, int] = (
            weakref.WeakKeyDictionary())
        self._warned = 0.0

    def admit(self, transport: asyncio.BaseTransport) -> bool:
        reason = None
        if self.open >= self.max_connections:
            reason = "door_full"
        peer = self.access.remember(transport) if self.access is not None else None
        if reason is None and peer is not None:
            if self.per_uid.get(peer.uid, 0) >= self.max_per_uid:
                reason = "peer_full"
        if reason is not None:
            if self.on_reject is not None:
                self.on_reject(self.door, reason)
            now = asyncio.get_running_loop().time()
            if now - self._warned >= 60.0:  # one line a minute, however many are closed
                self._warned = now
                log.warning("connection closed at accept: too many open", door=self.door,
                            reason=reason, uid=peer.uid if peer else None,
                            limit=self.max_per_uid if reason == "peer_full"
                            else self.max_connections)
            return False
        self.open += 1
        if peer is not None:
            self.per_uid[peer.uid] = self.per_uid.get(peer.uid, 0) + 1
            self._uid_of[transport] = peer.uid
        return True

    def release(self, transport: asyncio.BaseTransport) -> None:
        self.open -= 1
        uid = self._uid_of.pop(transport, None)
        if uid is not None:
            left = self.per_uid.get(uid, 1) - 1
            if left > 0:
                self.per_uid[uid] = left
            else:
                self.per_uid.pop(uid, None)


__all__ = ["Access", "ConnectionGate", "addresses"]
