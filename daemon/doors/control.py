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

from credential_sidecar.doors.peers import Grantee, Peer, admits
from credential_sidecar.files import FileError, private_dir
from credential_sidecar.logs import get_logger
from credential_sidecar.renewal.manager import CredentialManager

log = get_logger()

SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux >= 4.13
MAX_LINE = 64 * 1024
IDLE_SECONDS = 30.0
MAX_CLIENTS = 64  # connected clients at once; more are closed at once
MAX_CLIENTS_PER_UID = 16  # ... of which one uid may hold
MAX_GROUPS = 256  # Python's getsockopt buffer holds at most 1024 bytes
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


class ControlServer:
    door = "control"

    def __init__(
        self,
        path: Path,
        manager: CredentialManager,
        connection: Callable[[str], Grantee | None],
        status: Callable[[], dict[str, Any]],
        *,
        on_answer: Callable[[str, int], None] | None = None,
    ) -> None:
        self.path = path
        self.manager = manager
        self.connection = connection
        self.status = status
        self.on_answer = on_answer
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()
        self._per_uid: dict[int, int] = {}
        self.rejected = 0  # clients closed at connect: too many at once

    @property
    def url(self) -> str:
        return str(self.path)

    async def start(self) -> None:
        sock = bind_socket(self.path)
        self._server = await asyncio.start_unix_server(self._client, sock=sock, limit=MAX_LINE)
        log.info("listening", door=self.door, address=self.url)

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in list(self._clients):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._clients, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None
        with contextlib.suppress(OSError):
            if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                self.path.unlink()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        peer: Peer | None = None
        try:
            peer = peer_of(writer.get_extra_info("socket"))
            if (len(self._clients) >= MAX_CLIENTS
                    or self._per_uid.get(peer.uid, 0) >= MAX_CLIENTS_PER_UID):
                self.rejected += 1
                if self.rejected == 1 or self.rejected % 1000 == 0:
                    log.warning("control client closed at connect: too many at once",
                                uid=peer.uid, rejected=self.rejected)
                peer = None
                return
            if task is not None:
                self._clients.add(task)
            self._per_uid[peer.uid] = self._per_uid.get(peer.uid, 0) + 1
            while True:
                try:
                    line = await asyncio.wait_for(reader.readline(), IDLE_SECONDS)
                except (TimeoutError, ValueError, ConnectionError):
                    break  # idle, over-long line, or gone
                if not line:
                    break
                writer.write(json.dumps(self.answer(line, peer)).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            if task is not None:
                self._clients.discard(task)
            if peer is not None:
                left = self._per_uid.get(peer.uid, 1) - 1
                if left > 0:
                    self._per_uid[peer.uid] = left
                else:
                    self._per_uid.pop(peer.uid, None)
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
            log.warning("control request refused", connection=name, uid=peer.uid, pid=peer.pid)
            raise Refused("Forbidden", f"uid {peer.uid} may not read connection {name}")
        creds = self.manager.get(name)
        if creds is None:
            reason = self.manager.problems([name]).get(name, "no credentials yet")
            raise Refused("CredentialsUnavailable",
                          f"connection {name} has no fresh credentials: {reason}")
        self.manager.record_use(name, self.door, str(peer))
        return creds.process_document()
