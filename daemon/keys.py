"""Long-term access keys: their shape, where the secret lives, and reading and writing it.

An access key is a 20-character id (``AKIA...`` for an IAM user's long-term key, ``ASIA...``
for STS's temporary ones) and a 40-character secret that AWS shows once. The secret never
sits in the configuration: it lives in a file of mode 0600 (``secret_access_key_file``) or in
a systemd credential (``$CREDENTIALS_DIRECTORY/<connection name>``). Messages name files and
lengths, never the secret itself: a secret pasted into the wrong place must not reach a
terminal or a journal.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from daemon.identity import IdentityError, _read

KEY_ID_LENGTH = 20
SECRET_LENGTH = 40
LONG_TERM_PREFIX = "AKIA"
TEMPORARY_PREFIX = "ASIA"
_KEY_ID_RE = re.compile(r"[A-Z0-9]{20}")
_SECRET_RE = re.compile(r"[A-Za-z0-9/+]{40}")
SECRET_WHAT = "secret access key file"


class AccessKeyError(ValueError):
    """A key id or secret that cannot be right; the message never quotes the secret."""


def check_key_id(value: str) -> str:
    """A long-term key id: 20 characters, uppercase letters and digits, starting with AKIA."""
    if value.startswith(TEMPORARY_PREFIX):
        raise AccessKeyError(
            "an ASIA... key id is temporary (issued by STS); configure the long-term"
            " AKIA... key of an IAM user"
        )
    if len(value) != KEY_ID_LENGTH:
        # Not echoed: people paste the secret here by mistake.
        raise AccessKeyError(f"must be {KEY_ID_LENGTH} characters (got {len(value)})")
    if not _KEY_ID_RE.fullmatch(value):
        raise AccessKeyError("must contain only uppercase letters and digits")
    if not value.startswith(LONG_TERM_PREFIX):
        raise AccessKeyError(f"must start with {LONG_TERM_PREFIX} (a long-term IAM user key)")
    return value


def check_secret(value: str) -> str:
    """40 characters of base64's alphabet; the message gives the length, never the value."""
    if len(value) != SECRET_LENGTH:
        hint = ""
        if len(value) == KEY_ID_LENGTH and _KEY_ID_RE.fullmatch(value):
            hint = " (that looks like a key id, not the secret)"
        raise AccessKeyError(
            f"a secret access key is {SECRET_LENGTH} characters (got {len(value)}){hint}"
        )
    if not _SECRET_RE.fullmatch(value):
        raise AccessKeyError(
            "a secret access key holds only letters, digits, '+' and '/'"
            " (check for quotes, spaces or a copied line break)"
        )
    return value


@dataclass(frozen=True, slots=True)
class SecretFile:
    """Where one connection's secret lives, and how to say so in a message."""

    path: Path
    from_systemd: bool = False

    @classmethod
    def for_connection(cls, name: str, configured: Path | None) -> SecretFile:
        """``secret_access_key_file``, else systemd's ``$CREDENTIALS_DIRECTORY/<name>``."""
        if configured is not None:
            return cls(Path(configured))
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise IdentityError(
                f"connection {name!r} has no secret_access_key_file and $CREDENTIALS_DIRECTORY "
                "is not set: set secret_access_key_file, or run the daemon under systemd with "
                f"LoadCredential={name}:/path/to/the/secret"
            )
        return cls(Path(directory) / name, from_systemd=True)

    def read(self) -> tuple[str, os.stat_result]:
        """The secret (one line ending stripped) and the stat of the very file read."""
        data, st = _read(self.path, SECRET_WHAT, private=True)
        try:
            text = data.decode("ascii")
        except UnicodeDecodeError:
            raise IdentityError(
                f"{SECRET_WHAT} {self.path} is not plain ASCII text: it must hold only the"
                " 40-character secret"
            ) from None
        secret = text.removesuffix("\n").removesuffix("\r")
        try:
            check_secret(secret)
        except AccessKeyError as exc:
            raise IdentityError(f"{SECRET_WHAT} {self.path}: {exc}") from None
        return secret, st


def stat_key(st: os.stat_result) -> tuple[int, int, int, int]:
    """What changes when a file is replaced or rewritten: device, inode, size, mtime."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def write_secret(path: Path, secret: str, *, replace: bool = False) -> None:
    """Write a secret file of mode 0600, atomically; an existing file is kept unless replace.

    The temporary file is created 0600 from the start (never a moment with a wider mode), then
    renamed into place, so a reader sees the old secret or the new one, never half of one.
    """
    check_secret(secret)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(secret + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            # link() fails if the target exists: no window in which a check and a rename race.
            os.link(tmp, path)
        _fsync_dir(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


__all__ = [
    "AccessKeyError",
    "SecretFile",
    "check_key_id",
    "check_secret",
    "stat_key",
    "write_secret",
]
