"""What the daemon knows about one connection: the set it serves, its failures, who used it.

Plain data, read by the doors and /status and changed only by the manager.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Protocol

from credential_sidecar.clock import utc
from credential_sidecar.credentials import Credentials, iso_z
from credential_sidecar.renewal.schedule import Policy
from credential_sidecar.upstream.base import UpstreamError

USED_BY_LIMIT = 64


class CredentialStore(Protocol):
    """Where sets are persisted between runs (see credential_sidecar.state.cache)."""

    async def save(self, name: str, binding: str, creds: Credentials) -> None: ...

    async def load(self, name: str, binding: str) -> Credentials | None: ...

    async def mark_pending(self, name: str, reason: str | None) -> None:
        """Remember (None: forget) that a reload left this connection's new settings without
        a set of their own, so a restart keeps serving the old one and keeps trying."""

    async def pending(self, name: str) -> str | None: ...


@dataclass
class ConnectionState:
    name: str
    current: Credentials | None = None
    refresh_remaining: float = 0.0  # renew once the current set has this many seconds left
    last_renewal: float | None = None  # wall time
    last_attempt: float | None = None
    last_error: UpstreamError | None = None
    last_error_at: float | None = None
    failures: int = 0
    next_attempt_mono: float = 0.0
    renewals: dict[str, int] = field(default_factory=lambda: {"ok": 0, "error": 0})
    used_by: dict[tuple[str, str], list[float]] = field(default_factory=dict)  # -> [last, count]
    restored: bool = False  # the current set came from the persistent cache
    restoring: bool = False  # the cache is being read for this connection
    # Why a reload changed how this connection gets credentials and its new source has no set
    # yet; the set from before the reload keeps being served meanwhile (make before break).
    reload_pending: str | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def servable(self, now: float, policy: Policy) -> Credentials | None:
        if self.current is not None and self.current.remaining(now) >= policy.min_serve_seconds:
            return self.current
        return None

    def phase(self, now: float, policy: Policy) -> str:
        if self.servable(now, policy) is None:
            if self.restoring:
                return "restoring"
            return "failed" if self.last_error is not None else "starting"
        if self.reload_pending is not None:
            return "reload pending"
        return "degraded" if self.failures else "ready"

    def problem(self) -> str:
        """Why nothing is served, in a few words (only meaningful when nothing is)."""
        if self.restoring:
            return "restoring from the cache"
        return str(self.last_error) if self.last_error else "no credentials yet"

    def pending(self) -> str | None:
        """"reload pending" with the reason the new settings have no set yet, or None."""
        if self.reload_pending is None:
            return None
        why = f": {self.last_error}" if self.last_error else ": waiting for the first set"
        return f"reload pending ({self.reload_pending}){why}"


def status_of(
    state: ConnectionState, now: float, policy: Policy, due_in: float | None = None
) -> dict[str, object]:
    """The non-secret facts about one connection, for /status and the CLI."""
    creds = state.current
    return {
        "next_renewal": iso_z(utc(now + due_in)) if due_in is not None else None,
        "name": state.name,
        "state": state.phase(now, policy),
        "access_key_id": creds.access_key_id if creds else None,
        "expires_at": iso_z(creds.expiration) if creds else None,
        "seconds_left": round(creds.remaining(now)) if creds else None,
        "last_renewal": iso_z(utc(state.last_renewal)) if state.last_renewal else None,
        "last_error": str(state.last_error) if state.last_error else None,
        "last_error_at": iso_z(utc(state.last_error_at)) if state.last_error_at else None,
        "consecutive_failures": state.failures,
        "renewals": dict(state.renewals),
        "restored_from_cache": state.restored,
        "reload_pending": state.pending(),
        "used_by": [
            {"door": door, "peer": peer or None, "last": iso_z(utc(last)), "count": int(count)}
            for (door, peer), (last, count) in sorted(state.used_by.items())
        ],
    }

