"""What the daemon knows about a long-term key besides its secret: whose it is and how old.

Learned once per key in the background (GetCallerIdentity, IAM ListAccessKeys) or taken from the
config's ``created``, for /status, /metrics and the rotation warning. Never secret.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, time

from credential_sidecar.config.model import AccessKeysConnection

DAY = 86400.0


@dataclass
class KeyFacts:
    """Non-secret facts about one long-term key, for /status, /metrics and warnings."""

    key_id: str
    created: datetime | None = None
    created_from: str | None = None  # "iam" or "config"
    status: str | None = None  # Active / Inactive, when IAM told us
    arn: str | None = None
    account: str | None = None

    @property
    def is_root(self) -> bool:
        return bool(self.arn) and self.arn.endswith(":root")  # type: ignore[union-attr]

    def age_days(self, now: float) -> float | None:
        if self.created is None:
            return None
        return max(0.0, (now - self.created.timestamp()) / DAY)


def config_created(connection: AccessKeysConnection) -> datetime | None:
    if connection.created is None:
        return None
    return datetime.combine(connection.created, time(0, 0), tzinfo=UTC)

