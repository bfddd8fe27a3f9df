"""Container tokens kept sealed in state_dir, so a token file that vanishes comes back the same.

A token file under ``/run`` is gone after a stop and start or a reboot (systemd keeps the runtime
directory across restarts only). Apps that copied the token (``AWS_CONTAINER_AUTHORIZATION_TOKEN``)
would then be refused until they read the new one. The daemon keeps each token it hands out
sealed with AES-GCM under a key derived from the cache key, bound to the connection's name, and
writes that same token back when the file is missing. A token the operator writes into the file
(a rotation) is what gets kept from then on.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from credential_sidecar.files import atomic_write
from credential_sidecar.logs import SECRETS, get_logger
from credential_sidecar.state.cache import derive_key, open_blob, seal_blob

log = get_logger()
MAGIC = b"CST1"


class TokenKeeper:
    """Sealed copies of container tokens, one file per connection (``<name>.sealed``, 0600).

    Called from the thread that syncs token files: plain blocking file calls.
    """

    def __init__(self, directory: Path, cache_key: bytes) -> None:
        self.directory = directory
        self._aead = AESGCM(derive_key(cache_key, "container-tokens"))

    def _path(self, name: str) -> Path:
        return self.directory / f"{name}.sealed"

    @staticmethod
    def _aad(name: str) -> bytes:
        return b"credential-sidecar container token v1\0" + name.encode()

    def recall(self, name: str) -> str | None:
        """The token last kept for ``name``; None when there is none or it does not open
        (another host's file, a new cache key): a fresh token is made then."""
        try:
            fd = os.open(self._path(name), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None
        with os.fdopen(fd, "rb") as file:
            blob = file.read(4096)
        try:
            token = open_blob(self._aead, MAGIC, self._aad(name), blob).decode("ascii")
        except ValueError:  # truncated or foreign: no kept token
            return None
        except InvalidTag:  # (a file that opens was sealed by us, from ASCII)
            log.warning("kept container token ignored: it does not open with this cache key",
                        connection=name, path=str(self._path(name)))
            return None
        SECRETS.add(token)
        return token

    def remember(self, name: str, token: str) -> None:
        """Keep ``token`` for ``name`` (a failure is logged: the token file itself still works)."""
        blob = seal_blob(self._aead, MAGIC, self._aad(name), token.encode("ascii"))
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            atomic_write(self._path(name), blob, mode=0o600)
        except OSError as exc:
            log.warning("container token not kept: a token file that vanishes will get a new"
                        " token", connection=name, error=str(exc))
