"""Who may take a connection's set over TCP, and the record of every hand-out.

The IMDS and container doors ask :class:`Access` before they hand out a set: the peer's uid comes
from the kernel (doors/peers.py), once per TCP connection (the listener fills the cache when it
accepts; a request on a connection it missed looks it up then). The rule is the control socket's
(:func:`~credential_sidecar.doors.peers.admits`): a connection with ``allowed_uids`` or
``allowed_gids`` is served to root, to the daemon's own uid, and to those uids and members of
those groups; a connection with neither is served to any local user, as before. A peer the kernel
cannot name (a client on another host, through ``allow_non_loopback``) is refused for a
connection that names uids or gids.

Every hand-out and every refusal is an audit log line (door, connection, uid, access key id;
never a secret), a count in ``credential_sidecar_handouts_total{door,connection,result}`` and,
for hand-outs, a row of the connection's ``used_by`` in /status (peer ``uid:1001``).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable

from aiohttp import web

from credential_sidecar.credentials import Credentials
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
        *,
        record_use: Callable[[str, str, str], None] | None = None,
        count: Callable[[str, str, str], None] | None = None,
    ) -> None:
        self.finder = finder
        self.connection = connection
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
        log.warning("credentials refused", audit=True, door=door, connection=name,
                    uid=peer.uid if peer else None, remote=request.remote)
        if self.count is not None:
            self.count(door, name, "refused")
        if peer is None:
            return (f"connection {name} is served only to local users it names; the kernel "
                    "does not say which local user this request comes from")
        return f"{who} may not read connection {name}"

    async def served(self, request: web.Request, door: str, name: str,
                     creds: Credentials) -> None:
        peer = await self.peer(request)
        log.info("credentials handed out", audit=True, door=door, connection=name,
                 uid=peer.uid if peer else None, access_key_id=creds.access_key_id)
        if self.count is not None:
            self.count(door, name, "served")
        if self.record_use is not None:
            self.record_use(name, door, peer.label if peer else "")


__all__ = ["Access", "addresses"]
