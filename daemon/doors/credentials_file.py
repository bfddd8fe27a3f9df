"""The credentials-file door: a shared credentials file (``AWS_SHARED_CREDENTIALS_FILE``)
rewritten after every renewal, for programs that read nothing else.

One file per configured path holds every profile that names it. The daemon owns the whole file:
its first line is ``MARKER``, and a file at that path without it (a user's own profiles) is
never overwritten: the daemon refuses to start, or, when it appears later, reports it and leaves
it alone. Each write goes through ``files.atomic_write`` (owner, group and mode set before a
byte is written; fsync; rename), so readers see the old file or the new one, whole. A file is
written only when every one of its connections has a servable set; otherwise it is left as it
was and written at the next renewal. Failed writes are retried every ``RETRY_SECONDS`` and
named in /readyz as ``credentials_file:<path>`` until one succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import os
import pwd
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from credential_sidecar.clock import Clock
from credential_sidecar.config.model import CredentialsFile
from credential_sidecar.credentials import Credentials
from credential_sidecar.files import FileError, atomic_write
from credential_sidecar.logs import get_logger

log = get_logger()

MARKER = "# managed by credential-sidecar; do not edit"
RETRY_SECONDS = 30.0
_READ_LIMIT = 1 << 16


@dataclass(frozen=True)
class FilePlan:
    """One file: its path, who owns it, and its profiles (profile, connection, region)."""

    path: Path
    uid: int  # -1: the daemon's own (no chown)
    gid: int
    mode: int
    on_stop: str
    profiles: tuple[tuple[str, str, str | None], ...]

    @property
    def connections(self) -> frozenset[str]:
        return frozenset(conn for _, conn, _ in self.profiles)


def _uid(ref: str | int) -> tuple[int, int | None]:
    """A user's uid and primary gid (None when a numeric uid has no passwd entry)."""
    try:
        entry = pwd.getpwuid(ref) if isinstance(ref, int) else pwd.getpwnam(ref)
    except KeyError:
        if isinstance(ref, int):
            return ref, None
        raise FileError(f"credentials_file owner {ref!r}: no such user") from None
    return entry.pw_uid, entry.pw_gid


def _gid(ref: str | int) -> int:
    if isinstance(ref, int):
        return ref
    try:
        return grp.getgrnam(ref).gr_gid
    except KeyError:
        raise FileError(f"credentials_file group {ref!r}: no such group") from None


def plan(entries: Sequence[CredentialsFile]) -> list[FilePlan]:
    """Group entries by path; resolve users and groups (FileError naming what is unknown)."""
    by_path: dict[Path, list[CredentialsFile]] = {}
    for entry in entries:
        by_path.setdefault(entry.path, []).append(entry)
    plans = []
    for path, group in by_path.items():
        first = group[0]
        uid, gid = -1, -1
        if first.owner is not None:
            uid, primary = _uid(first.owner)
            gid = primary if primary is not None else -1
        if first.group is not None:
            gid = _gid(first.group)
        profiles = tuple((e.profile, e.connection, e.region) for e in group)
        plans.append(FilePlan(path, uid, gid, first.mode, first.on_stop, profiles))
    return plans


def check_directory(path: Path) -> None:
    """The file's directory: a real directory (never a link), owned by root or the daemon's
    user, writable by nobody else, so nobody else can plant or swap files in it."""
    parent = path.parent
    try:
        st = os.lstat(parent)
    except FileNotFoundError:
        raise FileError(f"credentials file {path}: directory {parent} does not exist") from None
    except OSError as exc:
        raise FileError(f"credentials file {path}: directory {parent}: {exc.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        raise FileError(f"credentials file {path}: directory {parent} is a symbolic link;"
                        " name the real directory")
    if not stat.S_ISDIR(st.st_mode):
        raise FileError(f"credentials file {path}: {parent} is not a directory")
    if st.st_uid not in (0, os.geteuid()):
        raise FileError(f"credentials file {path}: directory {parent} belongs to uid"
                        f" {st.st_uid}, not to root or the daemon's user (uid {os.geteuid()})")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022:
        raise FileError(f"credentials file {path}: directory {parent} has mode {mode:04o}:"
                        f" group or others may write it; run: chmod go-w {parent}")


def check_ours(path: Path, owner: int = -1) -> None:
    """The file at ``path`` is absent, empty, or one the daemon wrote (its first line is
    MARKER). Never follows a link.

    A daemon that may chown (CAP_CHOWN) but not read other users' files cannot read back a
    0600 file it gave to ``owner``: such a file, regular and owned by ``owner``, is taken as
    its own (the directory rules mean only root or the daemon can have put it there)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    except PermissionError:
        st = os.lstat(path)
        if owner != -1 and stat.S_ISREG(st.st_mode) and st.st_uid == owner:
            return
        raise FileError(f"credentials file {path} cannot be read by the daemon to check it is"
                        " its own: remove it, or let the daemon read it") from None
    except OSError as exc:
        if os.path.islink(path):
            raise FileError(f"credentials file {path} is a symbolic link; the daemon does not"
                            " write through links: remove it") from None
        raise FileError(f"credentials file {path} cannot be read: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise FileError(f"credentials file {path} is not a regular file")
        head = handle.read(len(MARKER) + 1)
    if head and not head.startswith(MARKER.encode() + b"\n"):
        raise FileError(
            f"credentials file {path} holds content credential-sidecar did not write (its first"
            f" line is not {MARKER!r}); the daemon owns the whole file and never merges: point"
            " the config (and AWS_SHARED_CREDENTIALS_FILE) at a file of its own, or remove it"
        )


def render(profiles: Sequence[tuple[str, Credentials, str | None]]) -> bytes:
    lines = [MARKER, "# rewritten by the daemon after every renewal; see its README"]
    for profile, creds, region in profiles:
        lines += ["", f"[{profile}]",
                  f"aws_access_key_id = {creds.access_key_id}",
                  f"aws_secret_access_key = {creds.secret_access_key}",
                  f"aws_session_token = {creds.session_token}"]
        if region:
            lines.append(f"region = {region}")
    return ("\n".join(lines) + "\n").encode("utf-8")


def write(file: FilePlan, lookup: Callable[[str], Credentials | None]) -> str | None:
    """Write one file if every connection of it has a servable set. Returns the access key
    ids written (for the log), None when a connection has nothing to serve (left as it was).
    Raises FileError or OSError."""
    sets = []
    for profile, conn, region in file.profiles:
        creds = lookup(conn)
        if creds is None:
            return None
        sets.append((profile, creds, region))
    check_directory(file.path)
    check_ours(file.path, file.uid)

    def owner(fd: int) -> None:
        if file.uid != -1 or file.gid != -1:
            os.fchown(fd, file.uid, file.gid)

    atomic_write(file.path, render(sets), mode=file.mode, prepare=owner)
    return ",".join(creds.access_key_id for _, creds, _ in sets)


class CredentialsFiles:
    """Every configured credentials file, rewritten when one of its connections renews."""

    def __init__(self, clock: Clock, lookup: Callable[[str], Credentials | None]) -> None:
        self.clock = clock
        self.lookup = lookup
        self.files: list[FilePlan] = []
        self.problems: dict[str, str] = {}  # path -> why it is not current
        self._dirty: set[Path] = set()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def configure(self, entries: Sequence[CredentialsFile], *, strict: bool = True) -> None:
        """Check every file: users, directory, foreign content. ``strict`` (at start): raise
        FileError naming the path. Otherwise (a reload) a refused file is kept as a problem,
        and every write checks again, so it is written once the cause is fixed."""
        files = plan(entries)
        paths = {str(f.path) for f in files}
        problems = {k: v for k, v in self.problems.items() if k in paths}
        for file in files:
            try:
                check_directory(file.path)
                check_ours(file.path, file.uid)
            except FileError as exc:
                if strict:
                    raise
                problems[str(file.path)] = str(exc)
        self.files, self.problems = files, problems
        self._dirty = {f.path for f in files}

    async def start(self, entries: Sequence[CredentialsFile]) -> None:
        await asyncio.to_thread(self.configure, entries)
        if not self.files:
            return
        await self._write_dirty()
        self._tasks = [asyncio.create_task(self._writer(), name="credentials-files"),
                       asyncio.create_task(self._retry(), name="credentials-files-retry")]

    async def reload(self, entries: Sequence[CredentialsFile]) -> None:
        """A reload never stops the daemon: a refused file becomes a problem, retried."""
        try:
            await asyncio.to_thread(partial(self.configure, entries, strict=False))
        except FileError as exc:  # an unknown owner or group: the old files stay configured
            log.error("credentials files not changed by the reload", error=str(exc))
            self.problems.update({str(e.path): str(exc) for e in entries})
            return
        for path, why in self.problems.items():
            log.error("credentials file refused; retrying", file=path, error=why)
        if self.files and not self._tasks:
            self._tasks = [asyncio.create_task(self._writer(), name="credentials-files"),
                           asyncio.create_task(self._retry(), name="credentials-files-retry")]
        self._wake.set()

    def renewed(self, name: str) -> None:
        """The manager's on_renewed hook."""
        for file in self.files:
            if name in file.connections:
                self._dirty.add(file.path)
                self._wake.set()

    def door_problems(self) -> dict[str, str]:
        return {f"credentials_file:{path}": why for path, why in self.problems.items()}

    async def _writer(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._write_dirty()

    async def _retry(self) -> None:
        while True:
            await self.clock.sleep(RETRY_SECONDS)
            if self.problems or self._dirty:
                self._dirty |= {Path(p) for p in self.problems}
                self._wake.set()

    async def _write_dirty(self) -> None:
        dirty, self._dirty = self._dirty, set()
        for file in self.files:
            if file.path in dirty:
                await self._write_one(file)

    async def _write_one(self, file: FilePlan) -> None:
        key = str(file.path)
        try:
            written = await asyncio.to_thread(write, file, self.lookup)
        except (FileError, OSError) as exc:
            why = str(exc) if isinstance(exc, FileError) else (
                f"not written: {exc.strerror or exc}")
            if self.problems.get(key) != why:
                log.error("credentials file not written; retrying", file=key, error=why,
                          retry_in=RETRY_SECONDS)
            self.problems[key] = why
            self._dirty.add(file.path)  # the retry picks it up
            return
        if written is None:
            log.debug("credentials file left as it is: a connection has no set to serve",
                      file=key)
            return
        if self.problems.pop(key, None) is not None:
            log.info("credentials file written again", file=key)
        log.info("credentials file written", file=key, access_key_id=written)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        for file in self.files:
            if file.on_stop == "remove":
                with contextlib.suppress(FileError, OSError):
                    check_ours(file.path, file.uid)
                    file.path.unlink()
                    log.info("credentials file removed", file=str(file.path))
