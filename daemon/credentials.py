"""The credential set that flows from upstream clients to the doors."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime


def iso_z(when: datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SSZ``: the only shape botocore's IMDS expiry parser accepts."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime:
    """RFC 3339 / ISO 8601 with ``Z`` or an offset, always returned in UTC."""
    value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class Credentials:
    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str = field(repr=False)
    expiration: datetime
    issued_at: datetime
    account_id: str | None = None

    def remaining(self, now: float) -> float:
        return self.expiration.timestamp() - now

    @property
    def lifetime(self) -> float:
        return (self.expiration - self.issued_at).total_seconds()

    def secrets(self) -> tuple[str, str]:
        return (self.secret_access_key, self.session_token)

    def imds_document(self) -> dict[str, str]:
        return {
            "Code": "Success",
            "LastUpdated": iso_z(self.issued_at),
            "Type": "AWS-HMAC",
            "AccessKeyId": self.access_key_id,
            "SecretAccessKey": self.secret_access_key,
            "Token": self.session_token,
            "Expiration": iso_z(self.expiration),
        }

    def container_document(self) -> dict[str, str]:
        doc = {
            "AccessKeyId": self.access_key_id,
            "SecretAccessKey": self.secret_access_key,
            "Token": self.session_token,
            "Expiration": iso_z(self.expiration),
        }
        if self.account_id:
            doc["AccountId"] = self.account_id
        return doc

    def process_document(self) -> dict[str, object]:
        return {
            "Version": 1,
            "AccessKeyId": self.access_key_id,
            "SecretAccessKey": self.secret_access_key,
            "SessionToken": self.session_token,
            "Expiration": iso_z(self.expiration),
        }
