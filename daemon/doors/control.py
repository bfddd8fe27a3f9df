"""The control socket: local clients ask for credentials, and the kernel says who is asking.

Protocol (one request per line, one answer per line, both JSON objects, UTF-8):

    {"op": "credentials", "name": "reports"}
      -> {"ok": true, "credentials": {"Version": 1, "AccessKeyId": ..., "Expiration": ...}}
    {"op": "status"}
      -> {"ok": true, "ready": bool, "not_ready": {name: reason}, "connections": [row, ...]}
    anything refused
      -> {"ok": false, "code": "Forbidden" | "NotFound" | "CredentialsUnavailable" |
          "BadRequest", "message": "..."}

A client may send several requests on one connection. The peer's uid and groups come from the
kernel (SO_PEERCRED, SO_PEERGROUPS) at connect time, not from anything the client says. A
connection's credentials go to root, to the daemon's own uid (which could read its memory
anyway), and to uids in ``allowed_uids`` or processes whose primary or supplementary groups
include one of ``allowed_gids``. ``status`` holds no secret and is answered to anyone who may
open the socket; who may open it is decided by the socket file's mode (0660) and group.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import stat
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

from credential_sidecar.doors.audit import AuditTrail
from credential_sidecar.doors.listener import SHUTDOWN_SECONDS
from credential_sidecar.doors.peers import Grantee, Peer, admits
from credential_sidecar.files import FileError, check_owned, private_dir
from credential_sidecar.logs import get_logger
from credential_sidecar.renewal.manager import CredentialManager

log = get_logger()

SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux >= 4.13
MAX_LINE = 64 * 1024
IDLE_SECONDS = 30.0
MAX_CLIENTS = 64  # connected clients at once; more are closed at once
MAX_CLIENTS_PER_UID = 16  # ... of which one uid may hold
MAX_GROUPS = 256  # Python's getsockopt buffer holds at most 1024 bytes
ACCEPT_RETRY_SECONDS = 1.0  # after accept() ran out of descriptors or memory (asyncio's delay)
STATUS_CODES = {"BadRequest": 400, "Forbidden": 403, "NotFound": 404,
                "CredentialsUnavailable": 503}
_UCRED = struct.Struct("3i")


def peer_of(sock: socket.socket) -> Peer:
    """Who is on the other end, as the kernel recorded it when they connected."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    groups: tuple[int, ...] = ()
    with contextlib.suppress(OSError):  # older kernels, or over 256 groups: the primary only
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 4 * MAX_GROUPS)
        groups = struct.unpack(f"{len(raw) // 4}I", raw[: len(raw) // 4 * 4])
    return Peer(pid, uid, gid, groups)


MAX_DEPTH = 8  # a request is one flat object: {"op": ..., "name": ...}


def _depth(line: bytes) -> int:
    """How deep brackets nest outside strings, before json.loads recurses into them (a line of
    60 000 '[' made json.loads raise RecursionError: an InternalError and a traceback)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in line:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_DEPTH:
                    return deepest
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return deepest


class Refused(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def bind_socket(path: Path) -> socket.socket:
    """A listening Unix socket at ``path``, mode 0660 before anyone can connect.

    The directory is created (0750) if missing; an existing one must be the daemon's and not
    writable by group or others (files.private_dir). A socket file left by a daemon that died is
    removed; a live one (another daemon answers), one someone else made, or a file that is not a
    socket is refused.
    """
    try:
        private_dir(path.parent, "control socket directory", 0o750)
    except FileError as exc:
        raise OSError(str(exc)) from None
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise OSError(f"control socket {path} exists and is not a socket; remove it")
        if st.st_uid != os.geteuid():
            raise OSError(
                f"control socket {path} belongs to uid {st.st_uid}, not to the daemon (uid"
                f" {os.geteuid()}): someone else made it; remove it"
            )
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.settimeout(1.0)
            probe.connect(str(path))
        except OSError:
            path.unlink(missing_ok=True)  # stale: nobody listens
        else:
            raise OSError(f"control socket {path} is in use by another running daemon")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, 0o660)  # before listen(): no one connects while the mode is wider
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def check_inherited(path: Path) -> bool:
    """Whether the socket systemd bound at ``path`` (socket activation) may be served.

    False when its file is gone (someone removed it or its directory; the shipped unit keeps
    its RuntimeDirectory= across stops): the .socket unit still listens, on a name nobody can
    reach.
    OSError when the file is not a socket, or it or its directory is someone else's or one that
    others could write (connect to, or swap for their own): the daemon's or root's only, as
    systemd makes them (files.check_owned).
    """
    try:
        check_owned(path.parent, "control socket directory", kind="dir", allow_root=True)
        if not os.path.lexists(path):
            return False
        check_owned(path, "control socket", kind="socket", allow_root=True)
    except FileError as exc:
        raise OSError(str(exc)) from None
    return True


class _Client:
    """What a stop must know about one connection."""

    __slots__ = ("answered", "conn", "idle", "reader", "transport", "uid")

    def __init__(self, conn: socket.socket, uid: int) -> None:
        self.conn = conn
        self.uid = uid
        self.answered = 0
        self.idle = False  # waiting for its next request, nothing of one received yet
        self.reader: asyncio.StreamReader | None = None
        self.transport: asyncio.Transport | None = None

    def close_idle(self) -> None:
        """End the wait for a next request: the read returns what was received (answered), then
        end of file. Reading is paused first: no data may be fed after the end of file."""
        if self.transport is not None and self.reader is not None:
            self.transport.pause_reading()
            self.reader.feed_eof()


class ControlServer:
    """Accepts by itself rather than through asyncio's server: every connection is in
    ``_clients`` from the moment it is accepted, so a stop knows all it owes an answer (asyncio
    makes a transport a turn after accepting, in a task a stop cannot see: CPython issue
    109564, the reason the listener pauses instead of closing)."""

    door = "control"

    def __init__(
        self,
        path: Path,
        manager: CredentialManager,
        connection: Callable[[str], Grantee | None],
        status: Callable[[], dict[str, Any]],
        *,
        on_answer: Callable[[str, int], None] | None = None,
        sock: socket.socket | None = None,
        audit: AuditTrail | None = None,
    ) -> None:
        self.path = path
        self.audit = audit  # the TCP doors' audit trail: a line per new hand-out or refusal
        self.manager = manager
        self.connection = connection
        self.status = status
        self.on_answer = on_answer
        self.sock = sock  # a listening socket from systemd (socket activation): never unlinked
        self._listening: socket.socket | None = None
        self._made: tuple[int, int] | None = None  # (device, inode) of the file bound here
        self._clients: dict[asyncio.Task[None], _Client] = {}
        self._per_uid: dict[int, int] = {}
        self._stopping = False
        self.rejected = 0  # clients closed at connect: too many at once

    @property
    def url(self) -> str:
        return str(self.path)

    async def start(self) -> None:
        if self.sock is not None and not check_inherited(self.path):
            log.warning("the control socket systemd passed has no file any more; binding a new"
                        " one", door=self.door, address=self.url,
                        hint="systemctl restart credential-sidecar.socket (with the service"
                             " stopped) makes systemd hold it again")
            self.sock.close()
            self.sock = None
        if self.sock is None:
            sock = bind_socket(self.path)
            st = os.lstat(self.path)
            self._made = (st.st_dev, st.st_ino)
        else:
            sock = self.sock
            sock.setblocking(False)
        self._listening = sock
        self._stopping = False
        asyncio.get_running_loop().add_reader(sock.fileno(), self._accept, sock)
        log.info("listening", door=self.door, address=self.url, activated=self.sock is not None)

    async def stop(self) -> None:
        """Stop accepting; answer every request already received, and the first request of a
        connection accepted just before (bounded by the listener's SHUTDOWN_SECONDS); close
        connections idle between requests; then close the socket.

        With socket activation the listening socket stays with systemd: connections that
        arrive meanwhile wait in its queue for the next process. Without, nobody would take
        that queue, so the file is removed first (new clients get ENOENT, which the client
        retries until the next process binds) and every connection already queued is taken
        and answered. Only a file this process bound is removed."""
        sock, self._listening = self._listening, None
        if sock is None:
            return
        self._stopping = True
        asyncio.get_running_loop().remove_reader(sock.fileno())
        if self.sock is None:
            self._unlink()
            self._accept(sock)
        for client in self._clients.values():
            if client.idle:
                client.close_idle()
        if self._clients:
            _, unanswered = await asyncio.wait(list(self._clients), timeout=SHUTDOWN_SECONDS)
            if unanswered:
                log.warning("stopping with control clients still unanswered",
                            clients=len(unanswered), grace=SHUTDOWN_SECONDS)
                for task in unanswered:
                    task.cancel()
                await asyncio.gather(*unanswered, return_exceptions=True)
        sock.close()

    def _unlink(self) -> None:
        """Remove the socket file this process bound, and never one it did not."""
        made, self._made = self._made, None
        with contextlib.suppress(OSError):
            st = os.lstat(self.path)
            if made == (st.st_dev, st.st_ino):
                self.path.unlink()

    def _accept(self, sock: socket.socket) -> None:
        """Take every connection waiting, each into its task at once."""
        while True:
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:  # out of descriptors or memory: try again in a while
                log.warning("control socket accept failed; retrying", error=exc.strerror or
                            str(exc), retry_seconds=ACCEPT_RETRY_SECONDS)
                loop = asyncio.get_running_loop()
                loop.remove_reader(sock.fileno())
                loop.call_later(ACCEPT_RETRY_SECONDS, self._resume, sock)
                return
            self._admit(conn)

    def _resume(self, sock: socket.socket) -> None:
        if self._listening is sock:
            asyncio.get_running_loop().add_reader(sock.fileno(), self._accept, sock)

    def _admit(self, conn: socket.socket) -> None:
        try:
            peer = peer_of(conn)
        except OSError:
            conn.close()
            return
        if (len(self._clients) >= MAX_CLIENTS
                or self._per_uid.get(peer.uid, 0) >= MAX_CLIENTS_PER_UID):
            self.rejected += 1
            if self.rejected == 1 or self.rejected % 1000 == 0:
                log.warning("control client closed at connect: too many at once",
                            uid=peer.uid, rejected=self.rejected)
            conn.close()
            return
        self._per_uid[peer.uid] = self._per_uid.get(peer.uid, 0) + 1
        client = _Client(conn, peer.uid)
        task = asyncio.get_running_loop().create_task(self._serve(conn, peer, client))
        self._clients[task] = client
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        """Here, not in the task: a task cancelled before its first step runs none of its code."""
        client = self._clients.pop(task)
        left = self._per_uid.get(client.uid, 1) - 1
        if left > 0:
            self._per_uid[client.uid] = left
        else:
            self._per_uid.pop(client.uid, None)
        if client.transport is None:  # else the transport closes it
            client.conn.close()

    async def _serve(self, conn: socket.socket, peer: Peer, client: _Client) -> None:
        writer: asyncio.StreamWriter | None = None
        try:
            conn.setblocking(False)
            reader, writer = await asyncio.open_unix_connection(sock=conn, limit=MAX_LINE)
            client.reader = reader
            transport = writer.transport
            client.transport = transport if isinstance(transport, asyncio.Transport) else None
            pending = b""
            loop = asyncio.get_running_loop()
            # A whole request within IDLE_SECONDS of connecting or of the last answer: a client
            # trickling a byte at a time holds its place no longer than an idle one.
            deadline = loop.time() + IDLE_SECONDS
            while not (self._stopping and client.answered and not pending):
                client.idle = client.answered > 0 and not pending
                try:
                    chunk = await asyncio.wait_for(reader.read(MAX_LINE),
                                                   max(0.0, deadline - loop.time()))
                except TimeoutError:
                    break
                finally:
                    client.idle = False
                if not chunk:
                    break  # gone, or closed as idle by a stop
                pending += chunk
                while (end := pending.find(b"\n")) >= 0:
                    line, pending = pending[: end + 1], pending[end + 1 :]
                    writer.write(json.dumps(self.answer(line, peer)).encode() + b"\n")
                    client.answered += 1
                    deadline = loop.time() + IDLE_SECONDS
                await writer.drain()
                if len(pending) > MAX_LINE:
                    break  # a line that long is no request
        except (ConnectionError, OSError):
            pass
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(ConnectionError, OSError):
                    await writer.wait_closed()

    def answer(self, line: bytes, peer: Peer) -> dict[str, Any]:
        try:
            body = self._handle(line, peer)
        except Refused as refusal:
            self._count(STATUS_CODES.get(refusal.code, 400))
            return {"ok": False, "code": refusal.code, "message": refusal.message}
        except Exception:  # a bug must not cost the client its answer, nor the server its task
            log.exception("control request crashed")
            self._count(500)
            return {"ok": False, "code": "InternalError", "message": "see the daemon's log"}
        self._count(200)
        return {"ok": True, **body}

    def _count(self, status: int) -> None:
        if self.on_answer is not None:
            self.on_answer(self.door, status)

    def _handle(self, line: bytes, peer: Peer) -> dict[str, Any]:
        if _depth(line) > MAX_DEPTH:
            raise Refused("BadRequest", f"JSON nested deeper than {MAX_DEPTH} levels")
        try:
            request = json.loads(line)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise Refused("BadRequest", "each request is one JSON object on one line") from None
        if not isinstance(request, dict):
            raise Refused("BadRequest", "each request is one JSON object on one line")
        op = request.get("op")
        if op == "status":
            return self.status()
        if op == "credentials":
            return {"credentials": self._credentials(request.get("name"), peer)}
        raise Refused("BadRequest", 'unknown op; use "credentials" or "status"')

    def _credentials(self, name: Any, peer: Peer) -> dict[str, object]:
        if not isinstance(name, str) or not name:
            raise Refused("BadRequest", '"name" must be a connection name')
        conn = self.connection(name)
        if conn is None or name not in self.manager.states:
            raise Refused("NotFound", f"no connection named {json.dumps(name)}")
        if not admits(conn, peer):
            if self.audit is not None:
                self.audit.refused(self.door, name, peer.uid, None, pid=peer.pid)
            raise Refused("Forbidden", f"uid {peer.uid} may not read connection {name}")
        creds = self.manager.get(name)
        if creds is None:
            reason = self.manager.problems([name]).get(name, "no credentials yet")
            raise Refused("CredentialsUnavailable",
                          f"connection {name} has no fresh credentials: {reason}")
        self.manager.record_use(name, self.door, str(peer))
        if self.audit is not None:
            self.audit.served(self.door, name, peer.uid, creds.access_key_id)
        return creds.process_document()
