"""Every file the daemon reads as a secret or writes, under one set of rules.

Reading: the file is opened first and the opened file is checked (type, size, and for secrets its
mode and ACL, as ssh does with keys), so the file checked is the file read. Writing: one
``atomic_write`` gives every writer the same guarantees (no half-file after a crash or a full
disk, no moment with a wider mode, never through a link someone planted). Messages name the file
and the fix, never its contents.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
import struct
from collections.abc import Callable, Iterable
from pathlib import Path

# Certificates, keys, secrets and tokens take a few kilobytes: a bigger file is a wrong path.
MAX_FILE_BYTES = 1 << 20


class FileError(Exception):
    """A file the daemon needs is unusable; the message names it and the fix."""


# --- reading ---------------------------------------------------------------------------------


def _file_kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "a regular file"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a special file"


def refuse_irregular(path: Path, what: str, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise FileError(
            f"{what} {path} is {_file_kind(st.st_mode)}, not a regular file: "
            "point the configuration at the file itself"
        )


# POSIX access ACLs as Linux stores them (acl(5)): a version, then (tag, perm, id) entries.
_ACL_XATTR = "system.posix_acl_access"
_ACL_USER_OBJ, _ACL_USER, _ACL_GROUP_OBJ, _ACL_GROUP, _ACL_MASK, _ACL_OTHER = (
    0x01, 0x02, 0x04, 0x08, 0x10, 0x20)
_ACL_NO_ID = 0xFFFFFFFF


def acl_grants(target: int | Path, owner: int) -> list[str] | None:
    """Whom a file's ACL lets read or write it besides its owner and the daemon's own user;
    None when the file has no ACL.

    With an ACL the group bits of the mode are the ACL's mask, not the group's rights: systemd's
    credential files ($CREDENTIALS_DIRECTORY) are root's, mode 0400, plus one ACL entry for the
    service's user, and so read as 0440 although no group can read them.
    """
    try:
        blob = os.getxattr(target, _ACL_XATTR)
    except OSError:
        return None
    if len(blob) < 4 or (len(blob) - 4) % 8 or struct.unpack_from("<I", blob)[0] != 2:
        return ["an ACL entry the daemon cannot parse"]
    entries = [struct.unpack_from("<HHI", blob, offset) for offset in range(4, len(blob), 8)]
    mask = next((perm for tag, perm, _ in entries if tag == _ACL_MASK), 0o7)
    grants = []
    for tag, perm, ident in entries:
        if not perm & mask & 0o6:  # neither read nor write
            continue
        if tag == _ACL_USER and ident not in (owner, os.geteuid()):
            grants.append(f"user {ident}")
        elif tag == _ACL_GROUP_OBJ:
            grants.append("the file's group")
        elif tag == _ACL_GROUP:
            grants.append(f"group {ident}")
    return grants


def read_acl(uids: Iterable[int], gids: Iterable[int]) -> bytes:
    """The ``system.posix_acl_access`` value of a file its owner reads and writes and each of
    ``uids`` and ``gids`` may read: what ``setfacl -m u:UID:r,g:GID:r`` on a 0600 file makes."""
    entries = [(_ACL_USER_OBJ, 0o6, _ACL_NO_ID)]
    entries += [(_ACL_USER, 0o4, uid) for uid in sorted(set(uids))]
    entries.append((_ACL_GROUP_OBJ, 0, _ACL_NO_ID))
    entries += [(_ACL_GROUP, 0o4, gid) for gid in sorted(set(gids))]
    entries += [(_ACL_MASK, 0o4, _ACL_NO_ID), (_ACL_OTHER, 0, _ACL_NO_ID)]
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *entry) for entry in entries)


def grant_read(fd: int, uids: Iterable[int], gids: Iterable[int]) -> None:
    """Make the open file 0600 plus one ACL read entry per uid and gid (none: plain 0600).

    Only the owner (or root) may do this; the mode's group bits then show the ACL's mask (r).
    """
    uids, gids = list(uids), list(gids)
    os.fchmod(fd, 0o600)
    if uids or gids:
        os.setxattr(fd, _ACL_XATTR, read_acl(uids, gids))
    else:
        try:
            os.removexattr(fd, _ACL_XATTR)
        except OSError as exc:
            if exc.errno not in (errno.ENODATA, errno.ENOTSUP):
                raise
        os.fchmod(fd, 0o600)


def refuse_exposed(path: Path, what: str, st: os.stat_result, fd: int | None = None) -> None:
    """Mode bits (and ACL): the daemon may run as root, for whom access() says yes to anything."""
    refuse_irregular(path, what, st)
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o070 and not mode & 0o007:
        grants = acl_grants(fd if fd is not None else path, st.st_uid)
        if grants == []:
            return
        if grants:
            raise FileError(
                f"{what} {path} has an ACL letting {', '.join(grants)} read or write it; "
                f"run: setfacl -b {path} && chmod 600 {path}"
            )
    if mode & 0o077:
        if mode & 0o044:
            exposure = "readable"
        elif mode & 0o022:
            exposure = "writable"
        else:
            exposure = "accessible"
        raise FileError(
            f"{what} {path} has mode {mode:04o}: it must not be {exposure} by group or others; "
            f"run: chmod 600 {path}"
        )


def missing(path: Path, what: str) -> FileError:
    if "CREDENTIALS_DIRECTORY" in str(path):
        return FileError(
            f"{what} {path} cannot be found: $CREDENTIALS_DIRECTORY is not set; it is set by "
            "systemd for a unit with LoadCredential= (run the daemon as that service)"
        )
    return FileError(f"{what} {path} does not exist: create it or fix the path in the config")


def _inspect(path: Path, what: str, *, follow: bool) -> os.stat_result:
    """stat() (or lstat()), with the daemon's messages: which file, what is wrong."""
    try:
        return os.stat(path) if follow else os.lstat(path)
    except FileNotFoundError:
        raise missing(path, what) from None
    except OSError as exc:
        raise FileError(f"{what} {path} cannot be inspected: {exc.strerror}") from None


def check_private_file(path: Path, what: str) -> None:
    """Refuse a secret file that group or others can read or write, as ssh does with keys."""
    path = Path(path)
    refuse_exposed(path, what, _inspect(path, what, follow=True))


def read_file(
    path: Path, what: str, *, private: bool = False, allow_empty: bool = False
) -> tuple[bytes, os.stat_result]:
    """Open, then check the opened file, then read: the file checked is the file read.

    O_NONBLOCK keeps a named pipe from hanging the open; it is refused right after.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise missing(path, what) from None
    except PermissionError:
        raise FileError(
            f"{what} {path} is not readable by the daemon (uid {os.getuid()}): "
            "give the daemon's user read access to it"
        ) from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        reason = getattr(exc, "strerror", None) or str(exc)
        raise FileError(f"{what} {path} cannot be opened: {reason}") from None
    st = os.fstat(fd)
    if stat.S_ISDIR(st.st_mode):  # fdopen() would refuse it with a bare IsADirectoryError
        os.close(fd)
        refuse_irregular(path, what, st)
    with os.fdopen(fd, "rb") as handle:
        if private:
            refuse_exposed(path, what, st, handle.fileno())
        else:
            refuse_irregular(path, what, st)
        if st.st_size > MAX_FILE_BYTES:
            raise FileError(
                f"{what} {path} is {st.st_size} bytes, too large to be a {what}: check the path"
            )
        try:
            data = handle.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise FileError(f"{what} {path} cannot be read: {exc.strerror}") from None
    if not allow_empty and not data.strip():
        raise FileError(f"{what} {path} is empty: write the {what} into it")
    return data, st


def stat_key(st: os.stat_result) -> tuple[int, int, int, int]:
    """What changes when a file is replaced or rewritten: device, inode, size, mtime."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


# --- trusting paths --------------------------------------------------------------------------


def check_owned(path: Path, what: str, *, allow_root: bool = False,
                kind: str | None = None) -> os.stat_result:
    """Refuse a path the daemon did not make, as sshd's StrictModes does: it must not be a
    symbolic link, must belong to the daemon's uid (or root's, with ``allow_root``: root could
    read the daemon's memory anyway), and group and others must not be able to write it.
    ``kind`` "dir" or "file" also checks the type; "socket" too, and a socket's group may write
    it (connect: the group is who may use it), others not. Returns its lstat()."""
    path = Path(path)
    st = _inspect(path, what, follow=False)
    if stat.S_ISLNK(st.st_mode):
        raise FileError(
            f"{what} {path} is a symbolic link: the daemon follows no link it did not make;"
            " point the configuration at the real path"
        )
    if kind == "dir" and not stat.S_ISDIR(st.st_mode):
        raise FileError(f"{what} {path} is {_file_kind(st.st_mode)}, not a directory")
    if kind == "file":
        refuse_irregular(path, what, st)
    if kind == "socket" and not stat.S_ISSOCK(st.st_mode):
        raise FileError(f"{what} {path} is {_file_kind(st.st_mode)}, not a socket")
    euid = os.geteuid()
    if st.st_uid != euid and not (allow_root and st.st_uid == 0):
        raise FileError(
            f"{what} {path} belongs to uid {st.st_uid}, not to the daemon (uid {euid}): the"
            f" daemon trusts no path someone else made; remove it, or run: chown {euid} {path}"
        )
    mode = stat.S_IMODE(st.st_mode)
    if kind == "socket" and mode & 0o002:
        raise FileError(
            f"{what} {path} has mode {mode:04o}: anyone could connect to it; run: chmod o-rwx"
            f" {path} (SocketMode=0660 in a .socket unit)"
        )
    if kind != "socket" and mode & 0o022:
        raise FileError(
            f"{what} {path} has mode {mode:04o}: group or others could replace what is in it;"
            f" run: chmod go-w {path}"
        )
    return st


def private_dir(path: Path, what: str, mode: int = 0o700, *, allow_root: bool = False) -> Path:
    """``path`` as a directory the daemon can trust: missing components are made one by one
    with mkdir (never through a link: mkdir does not follow one, and each is checked after)
    and given ``mode`` whatever the umask; an existing directory is checked, not changed
    (``allow_root``: root's will do too, as an operator's secret mount is)."""
    path = Path(path)
    made: list[Path] = []
    cursor = path
    while not os.path.lexists(cursor) and cursor != cursor.parent:
        made.append(cursor)
        cursor = cursor.parent
    for directory in reversed(made):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            made.remove(directory)  # made meanwhile by someone else: checked below as found
            continue
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
    for directory in made:
        check_owned(directory, what, kind="dir")
    check_owned(path, what, kind="dir", allow_root=allow_root)
    return path


# --- writing ---------------------------------------------------------------------------------


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (best effort: some filesystems refuse)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(
    path: Path,
    data: bytes,
    *,
    mode: int = 0o600,
    replace: bool = True,
    prepare: Callable[[int], None] | None = None,
) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old file or the new one, whole.

    The temporary file is made next to the target with O_EXCL|O_NOFOLLOW (never through a link
    someone planted, never someone else's file), gets its mode, and whatever ``prepare`` does to
    its descriptor (an owner, an ACL), before it holds a byte. It is written and fsynced, then
    renamed over the target, or with ``replace=False`` hard-linked (FileExistsError if the
    target exists: no check-then-rename race), and the directory is fsynced. On any error,
    a full disk included, the temporary file is removed and the target is untouched.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, 0o600)
    try:
        try:
            os.fchmod(fd, mode)
            if prepare is not None:
                prepare(fd)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
        fsync_dir(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


__all__ = [
    "MAX_FILE_BYTES",
    "FileError",
    "acl_grants",
    "atomic_write",
    "check_owned",
    "check_private_file",
    "fsync_dir",
    "grant_read",
    "missing",
    "private_dir",
    "read_acl",
    "read_file",
    "refuse_exposed",
    "refuse_irregular",
    "stat_key",
]
