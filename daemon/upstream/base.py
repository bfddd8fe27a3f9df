"""What every upstream client promises the manager: fetch a set, or say why not."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Protocol

from credential_sidecar.config.model import Connection
from credential_sidecar.credentials import Credentials

# Answers that retrying soon will not fix: back off longer and say so plainly.
PERSISTENT_CODES = frozenset(
    {
        "AccessDeniedException",
        "AccessDenied",
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "ResourceNotFoundException",
        "ValidationException",
        "ValidationError",
        "FileError",
        "NetworkConfigError",  # a proxy, proxy credentials, CA bundle or endpoint setting
        "ExpiredToken",
    }
)


@dataclass
class UpstreamError(Exception):
    code: str
    message: str
    status: int | None = None
    retry_after: float | None = None

    def __post_init__(self) -> None:
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f" (HTTP {self.status})" if self.status else ""
        return f"{self.code}{where}: {self.message}"

    @property
    def persistent(self) -> bool:
        """True when the service refused us rather than failed: retrying won't help soon."""
        return self.code in PERSISTENT_CODES

    @property
    def throttled(self) -> bool:
        return self.status == 429 or "Throttl" in self.code or self.code == "TooManyRequests"


class CredentialSource(Protocol):
    """One connection's way to get a fresh credential set from upstream."""

    name: str

    async def fetch(self) -> Credentials: ...

    async def binding(self) -> str:
        """A digest of everything that decides which identity the sets belong to.

        A persisted set is only reused while this is unchanged (same role, same certificate,
        same key id ...); raising UpstreamError means "can't tell now", and the cache is skipped.
        """
        ...

    async def close(self) -> None: ...

    def describe(self) -> dict[str, object]:
        """What the connection's /status row says about this identity; never a secret."""
        ...

    async def recheck(self) -> bool:
        """Re-read the files the identity comes from (a reload that changed no setting): True
        when they changed and the connection should renew now."""
        ...

    async def rekey(self, connection: Connection) -> bool:
        """Take ``connection`` if it differs from the current one only in its long-term key
        (rotate-keys): True when this source now uses it and should renew at once; False when
        the change needs a new source."""
        ...


class FixedIdentity:
    """For sources whose identity no file or key rotation can change (test doubles)."""

    def describe(self) -> dict[str, object]:
        return {}

    async def recheck(self) -> bool:
        return False

    async def rekey(self, connection: Connection) -> bool:
        return False


def digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()
