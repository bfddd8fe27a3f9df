"""Where an access key's long-term secret lives, and reading and writing it.

An access key is a 20-character id (``AKIA...`` for an IAM user's long-term key, ``ASIA...``
for STS's temporary ones) and a 40-character secret that AWS shows once. The secret never
sits in the configuration: it lives in a file of mode 0600 (``secret_access_key_file``) or in
a systemd credential (``$CREDENTIALS_DIRECTORY/<connection name>``). Messages name files and
lengths, never the secret itself: a secret pasted into the wrong place must not reach a
terminal or a journal.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from credential_sidecar.config.values import AccessKeyError, check_secret
from credential_sidecar.files import FileError, atomic_write, read_file

SECRET_WHAT = "secret access key file"


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
            raise FileError(
                f"connection {name!r} has no secret_access_key_file and $CREDENTIALS_DIRECTORY "
                "is not set: set secret_access_key_file, or run the daemon under systemd with "
                f"LoadCredential={name}:/path/to/the/secret"
            )
        return cls(Path(directory) / name, from_systemd=True)

    def read(self) -> tuple[str, os.stat_result]:
        """The secret (one line ending stripped) and the stat of the very file read."""
        data, st = read_file(self.path, SECRET_WHAT, private=True)
        try:
            text = data.decode("ascii")
        except UnicodeDecodeError:
            raise FileError(
                f"{SECRET_WHAT} {self.path} is not plain ASCII text: it must hold only the"
                " 40-character secret"
            ) from None
        secret = text.removesuffix("\n").removesuffix("\r")
        try:
            check_secret(secret)
        except AccessKeyError as exc:
            raise FileError(f"{SECRET_WHAT} {self.path}: {exc}") from None
        return secret, st


def write_secret(path: Path, secret: str, *, replace: bool = False) -> None:
    """Write a secret file of mode 0600, atomically; an existing file is kept unless replace.

    The temporary file is created 0600 from the start (never a moment with a wider mode), then
    renamed into place, so a reader sees the old secret or the new one, never half of one.
    """
    check_secret(secret)
    atomic_write(Path(path), (secret + "\n").encode("ascii"), mode=0o600, replace=replace)


__all__ = ["SecretFile", "write_secret"]
