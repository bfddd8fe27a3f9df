"""The container-credentials door: every connection on one listener, one token each.

protocols.md section 3: ``GET /v1/credentials/<name>`` with ``Authorization: <token>`` (the raw
token, no scheme); errors are JSON ``{"Code", "Message"}``. Each connection has its own token, so
one listener serves many apps, each only its own connection.

What a caller learns depends on what it proves, never on which names exist:

- no token: 401, whatever the name;
- a token that belongs to no connection: 403, whatever the name;
- a connection's token on another path: 404, whether or not that other name exists;
- its own path: 200 with the set, or 503 while nothing fresh is held.

The presented token is hashed and compared in constant time with every connection's token digest
(no early exit), so neither the timing nor the answer depends on the name in the path.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import stat
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Protocol

from aiohttp import web

from daemon.credentials import Credentials
from daemon.guards import HostGuard, forwarded
from daemon.logs import SECRETS, get_logger

log = get_logger()

ALIASES = ("169.254.170.2", "169.254.170.23")  # the hosts ECS and EKS Pod Identity use
PATH_RE = re.compile(r"^/v1/credentials/([^/]+)$")
TOKEN_RE = re.compile(r"^[\x21-\x7e]{16,1024}$")  # printable ASCII: it travels in a header
TOKEN_DIR = "tokens"
_MAX_FILE = 4096


class TokenError(Exception):
    """A token file that cannot be used; the message names the file and what to do."""


def default_token_path(state_dir: Path, name: str) -> Path:
    """Where a connection's token lives when ``container_token_file`` is not configured."""
    return state_dir / TOKEN_DIR / f"{name}.token"


def read_token(path: Path) -> str:
    """The token in ``path``, trailing whitespace stripped (editors add newlines; botocore
    would send them and fail). Refused when other users may read or write the file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise TokenError(f"container token file {path} cannot be read: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise TokenError(f"container token file {path} is not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o007:
            raise TokenError(
                f"container token file {path} has mode {mode:04o}: other users must not read or"
                f" write it; run: chmod 640 {path}"
            )
        data = os.read(fd, _MAX_FILE + 1)
    finally:
        os.close(fd)
    if len(data) > _MAX_FILE:
        raise TokenError(f"container token file {path} is too large to hold a token")
    try:
        token = data.decode("ascii").rstrip()
    except UnicodeDecodeError:
        raise TokenError(f"container token file {path} must hold printable ASCII") from None
    if not TOKEN_RE.match(token):
        raise TokenError(
            f"container token file {path} must hold one token of 16 to 1024 printable ASCII"
            " characters without spaces"
        )
    return token


def load_or_create_token(path: Path, group: int | None = None) -> tuple[str, bool]:
    """The token in ``path``; created (0640, no trailing newline) if the file is absent.

    The new file appears whole or not at all (written aside, then hard-linked into place, which
    never replaces a file someone else created meanwhile). ``group`` becomes the file's group so
    the app's group can read it; failing that (the daemon is not root nor in that group) the file
    keeps the daemon's group and a warning says so. Returns (token, created).
    """
    try:
        return read_token(path), False
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
    token = secrets.token_urlsafe(32)
    aside = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        try:
            os.write(fd, token.encode("ascii"))
            os.fsync(fd)
            if group is not None:
                try:
                    os.fchown(fd, -1, group)
                except OSError as exc:
                    log.warning("container token file keeps the daemon's group", file=str(path),
                                group=group, error=exc.strerror)
            os.fchmod(fd, 0o640)
        finally:
            os.close(fd)
        try:
            os.link(aside, path)
        except FileExistsError:
            return read_token(path), False
    finally:
        aside.unlink(missing_ok=True)
    return token, True


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


class TokenOwner(Protocol):
    """What the token book reads from a connection's configuration."""

    @property
    def name(self) -> str: ...
    @property
    def container_token_file(self) -> Path | None: ...
    @property
    def allowed_gids(self) -> Sequence[int]: ...


class TokenBook:
    """Each connection's container token, kept as a digest; re-read on start and reload."""

    def __init__(self) -> None:
        self._digests: dict[str, bytes] = {}
        self.paths: dict[str, Path] = {}
        self.problems: dict[str, str] = {}

    def sync(self, connections: Iterable[TokenOwner], state_dir: Path) -> None:
        """Load (or create) every connection's token; a bad file disables only its connection."""
        digests: dict[str, bytes] = {}
        self.paths, self.problems = {}, {}
        for conn in connections:
            name, configured, gids = conn.name, conn.container_token_file, conn.allowed_gids
            path = configured or default_token_path(state_dir, name)
            self.paths[name] = path
            try:
                if configured is None:
                    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
                token, created = load_or_create_token(path, gids[0] if gids else None)
            except (TokenError, OSError) as exc:
                message = str(exc) if isinstance(exc, TokenError) else (
                    f"container token file {path}: {exc.strerror or exc}")
                self.problems[name] = message
                log.error("connection not served on the container door", connection=name,
                          error=message)
                continue
            SECRETS.add(token)
            digests[name] = _digest(token)
            if created:
                log.info("container token created", connection=name, file=str(path))
        self._digests = digests

    def owner(self, presented: str) -> str | None:
        """The connection this token belongs to, compared in constant time against all."""
        wanted = _digest(presented)
        found = None
        for name, digest in self._digests.items():
            if hmac.compare_digest(digest, wanted):
                found = name
        return found


def _error(status: int, code: str, message: str) -> web.Response:
    return web.Response(text=json.dumps({"Code": code, "Message": message}), status=status,
                        content_type="application/json")


class ContainerApp:
    def __init__(
        self,
        tokens: TokenBook,
        lookup: Callable[[str], Credentials | None],
        guard: HostGuard,
        *,
        on_served: Callable[[str], None] | None = None,
    ) -> None:
        self.tokens = tokens
        self.lookup = lookup
        self.guard = guard
        self.on_served = on_served
        self._rendered: dict[str, tuple[Credentials, str]] = {}  # see _document
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self.handle)

    def _document(self, name: str, creds: Credentials) -> str:
        """A set's JSON, rendered once per set: asked for far more often than it changes."""
        rendered = self._rendered.get(name)
        if rendered is None or rendered[0] is not creds:
            rendered = self._rendered[name] = (creds, json.dumps(creds.container_document()))
        return rendered[1]

    async def handle(self, request: web.Request) -> web.Response:
        if not self.guard.allows(request.headers.get("Host")):
            return _error(400, "BadHost", "Host header does not name this endpoint")
        if forwarded(request):
            return _error(403, "Forbidden", "requests through a proxy are refused")
        match = PATH_RE.match(request.path)
        if match is None:
            return _error(404, "NotFound", "not found; the path is /v1/credentials/<name>")
        if request.method not in ("GET", "HEAD"):
            response = _error(405, "MethodNotAllowed", "use GET")
            response.headers["Allow"] = "GET, HEAD"
            return response
        name = match.group(1)
        presented = request.headers.get("Authorization", "").strip()
        if not presented:
            return _error(401, "Unauthorized",
                          "the Authorization header must carry the connection's token")
        owner = self.tokens.owner(presented)
        if owner is None:
            log.info("container request refused: unknown token", peer=request.remote)
            return _error(403, "Forbidden", "the token is not valid")
        if owner != name:
            log.info("container request refused: token of another connection", connection=owner,
                     asked=name, peer=request.remote)
            return _error(404, "NotFound", "no connection by that name for this token")
        creds = self.lookup(name)
        if creds is None:
            return _error(503, "CredentialsUnavailable",
                          "no fresh credentials to serve yet; see /status")
        if self.on_served:
            self.on_served(name)
        return web.Response(text=self._document(name, creds), content_type="application/json")
