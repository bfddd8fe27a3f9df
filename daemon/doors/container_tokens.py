"""Container tokens: one per connection, in a file its app reads, compared in constant time.

A token file is created once (whole or not at all) and then only read, so apps that copied a
token keep working; its digest, never the token, is what the door keeps to compare with.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

from credential_sidecar.files import atomic_write
from credential_sidecar.logs import SECRETS, get_logger

log = get_logger()

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

    def app_group(fd: int) -> None:
        if group is None:
            return
        try:
            os.fchown(fd, -1, group)
        except OSError as exc:
            log.warning("container token file keeps the daemon's group", file=str(path),
                        group=group, error=exc.strerror)

    try:
        atomic_write(path, token.encode("ascii"), mode=0o640, replace=False, prepare=app_group)
    except FileExistsError:
        return read_token(path), False
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

