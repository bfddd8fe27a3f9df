"""Container tokens: one per connection, in a file its app reads, compared in constant time.

Each token file is the daemon's, mode 0600, plus a POSIX ACL read entry for each uid and gid
the connection allows (``allowed_uids``, ``allowed_gids``): an app reads its own connection's
token and no other, with no shared group.

A token file is created once (whole or not at all) and then only read, so apps that copied a
token keep working; its digest, never the token, is what the door keeps to compare with.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import os
import re
import secrets
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

from credential_sidecar.files import FileError, acl_grants, atomic_write, grant_read, private_dir
from credential_sidecar.logs import SECRETS, get_logger
from credential_sidecar.state.tokens import TokenKeeper

log = get_logger()

TOKEN_RE = re.compile(r"^[\x21-\x7e]{16,1024}$")  # printable ASCII: it travels in a header
TOKEN_DIR = "tokens"
_MAX_FILE = 4096


class TokenError(Exception):
    """A token file that cannot be used; the message names the file and what to do."""


def default_token_path(state_dir: Path, name: str) -> Path:
    """Where a connection's token lives when ``container_token_file`` is not configured."""
    return state_dir / TOKEN_DIR / f"{name}.token"


def read_token(path: Path, uids: Sequence[int] = (), gids: Sequence[int] = ()) -> str:
    """The token in ``path``, trailing whitespace stripped (editors add newlines; botocore
    would send them and fail).

    The file must be the daemon's own (a file someone else made, or a symbolic link, is
    refused); its access is then set to exactly what the connection grants: mode 0600 plus one
    POSIX ACL read entry per ``allowed_uids`` and ``allowed_gids`` entry (so a changed list takes
    effect at the next reload, and a file from an older version, 0640 in the daemon's group,
    is narrowed). Refused when anyone else may still read or write it.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise TokenError(f"container token file {path} is a symbolic link: point"
                             " container_token_file at the file itself") from None
        raise TokenError(f"container token file {path} cannot be read: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise TokenError(f"container token file {path} is not a regular file")
        # A file root provisioned for a daemon that is not root (a Kubernetes Secret mounted
        # read-only) is the operator's: trusted as root's, read as it is, access left to them.
        provisioned = st.st_uid == 0 and os.geteuid() != 0
        if st.st_uid != os.geteuid() and not provisioned:
            raise TokenError(
                f"container token file {path} belongs to uid {st.st_uid}, not to the daemon"
                f" (uid {os.geteuid()}): a token file the daemon did not make is not trusted;"
                " remove it and the daemon makes a new one"
            )
        mode = stat.S_IMODE(st.st_mode)
        if provisioned:
            if mode & 0o022:
                raise TokenError(f"container token file {path} has mode {mode:04o}: others may"
                                 f" change it; run: chmod go-w {path}")
            data = os.read(fd, _MAX_FILE + 1)
            return _token_from(path, data)
        if mode & 0o007 or mode & 0o020:
            raise TokenError(
                f"container token file {path} has mode {mode:04o}: other users may have read or"
                f" changed it; write a new token into it and run: chmod 600 {path}"
            )
        _take_access(fd, path, uids, gids)
        data = os.read(fd, _MAX_FILE + 1)
    finally:
        os.close(fd)
    return _token_from(path, data)


def _take_access(fd: int, path: Path, uids: Sequence[int], gids: Sequence[int]) -> None:
    """Mode 0600 plus an ACL read entry per allowed uid and gid, checked once set."""
    try:
        grant_read(fd, uids, gids)
    except OSError as exc:
        raise TokenError(
            f"container token file {path}: cannot set its access (mode 0600 and an ACL"
            f" for allowed_uids/allowed_gids): {exc.strerror}; the filesystem must support"
            " POSIX ACLs"
        ) from None
    st = os.fstat(fd)
    mode = stat.S_IMODE(st.st_mode)
    # With an ACL the group bits are its mask; only the file's own group must have nothing.
    # (No ACL: the group bits are the group's. An ACL naming only the daemon's own uid
    # grants nobody else: [].)
    grants = acl_grants(fd, st.st_uid) if mode & 0o070 else []
    if mode & 0o037 or grants is None or "the file's group" in grants:
        raise TokenError(
            f"container token file {path} has mode {mode:04o} after setting its access:"
            f" run: setfacl -b {path} && chmod 600 {path}"
        )


def _token_from(path: Path, data: bytes) -> str:
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


def load_or_create_token(
    path: Path, uids: Sequence[int] = (), gids: Sequence[int] = (), *, kept: str | None = None
) -> tuple[str, bool]:
    """The token in ``path``; created (no trailing newline) if the file is absent, holding
    ``kept`` (the token this file held before it vanished) or else a new random one.

    A new file is 0600 and the daemon's, with one ACL read entry per uid and gid given, set on
    the temporary file before it holds a byte; it appears whole or not at all (written aside,
    then hard-linked into place, which never replaces a file someone else created meanwhile).
    A missing directory is created 0711 (others may reach a file they know the name of, not
    list the directory); an existing one must be the daemon's or root's (a secret mount, as
    Kubernetes makes one) and not writable by group or others. Returns (token, created).
    """
    try:
        private_dir(path.parent, "container token directory", 0o711, allow_root=True)
    except FileError as exc:
        raise TokenError(str(exc)) from None
    try:
        return read_token(path, uids, gids), False
    except FileNotFoundError:
        pass
    token = kept or secrets.token_urlsafe(32)
    try:
        atomic_write(path, token.encode("ascii"), mode=0o600, replace=False,
                     prepare=lambda fd: grant_read(fd, uids, gids))
    except FileExistsError:
        return read_token(path, uids, gids), False
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
    def allowed_uids(self) -> Sequence[int]: ...
    @property
    def allowed_gids(self) -> Sequence[int]: ...


class TokenBook:
    """Each connection's container token, kept as a digest; re-read on start and reload."""

    def __init__(self) -> None:
        self._digests: dict[str, bytes] = {}
        self.paths: dict[str, Path] = {}
        self.problems: dict[str, str] = {}

    def sync(self, connections: Iterable[TokenOwner], state_dir: Path,
             keeper: TokenKeeper | None = None) -> None:
        """Load (or create) every connection's token; a bad file disables only its connection.

        With a ``keeper``, a file that vanished (a token under /run after a reboot) is made
        again with the token it held, and a token the operator wrote in is kept from then on.
        """
        # Built aside and swapped in at the end: sync runs in a thread on reload and on retries,
        # and /readyz must never see a half-done sync (no problems yet, or no paths).
        digests: dict[str, bytes] = {}
        paths: dict[str, Path] = {}
        problems: dict[str, str] = {}
        for conn in connections:
            name, configured = conn.name, conn.container_token_file
            path = configured or default_token_path(state_dir, name)
            paths[name] = path
            try:
                if configured is None:
                    private_dir(state_dir, "state_dir")
                kept = keeper.recall(name) if keeper is not None else None
                token, created = load_or_create_token(path, conn.allowed_uids, conn.allowed_gids,
                                                      kept=kept)
            except (TokenError, FileError, OSError) as exc:
                message = str(exc) if isinstance(exc, TokenError | FileError) else (
                    f"container token file {path}: {exc.strerror or exc}")
                problems[name] = message
                log.error("connection not served on the container door", connection=name,
                          error=message)
                continue
            SECRETS.add(token)
            digests[name] = _digest(token)
            if keeper is not None and token != kept:
                keeper.remember(name, token)
            if created:
                log.info("container token restored" if kept else "container token created",
                         connection=name, file=str(path))
        self._digests, self.paths, self.problems = digests, paths, problems

    def owner(self, presented: str) -> str | None:
        """The connection this token belongs to, compared in constant time against all."""
        wanted = _digest(presented)
        found = None
        for name, digest in self._digests.items():
            if hmac.compare_digest(digest, wanted):
                found = name
        return found

