"""When to renew and when to retry: pure functions of a set, a failure count and the policy.

Kept free of the event loop so that the manager and the fleet simulation (bench/) run the very
same rules: renew at about half life with jitter, so what clients are served stays well above the
SDKs' 900 s window and hosts started together drift apart; retry with capped, jittered
exponential backoff, faster as the set still served nears its end.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from credential_sidecar.credentials import Credentials
from credential_sidecar.upstream.base import UpstreamError


@dataclass(frozen=True)
class Policy:
    refresh_fraction: float = 0.5  # renew when this share of the lifetime is left...
    refresh_jitter: float = 0.1  # ...plus up to this share more, drawn per set
    min_serve_seconds: float = 60.0
    retry_base: float = 5.0
    retry_cap: float = 120.0
    persistent_retry_base: float = 60.0
    persistent_retry_cap: float = 900.0
    tick_seconds: float = 30.0  # longest single sleep: re-checks wall time after host suspend
    max_concurrent_renewals: int = 32


def refresh_point(creds: Credentials, policy: Policy, rng: random.Random) -> float:
    """Seconds left on ``creds`` at which to renew it."""
    lifetime = max(creds.lifetime, 0.0)
    share = policy.refresh_fraction + policy.refresh_jitter * rng.random()
    floor = min(lifetime, policy.min_serve_seconds + 60.0)
    return max(lifetime * share, floor)


def backoff(
    failures: int,
    error: UpstreamError,
    seconds_left: float | None,
    policy: Policy,
    rng: random.Random,
) -> float:
    """Seconds to wait after the ``failures``-th failure in a row.

    ``seconds_left`` is what remains of the set still served (None when there is none).
    """
    p = policy
    base, cap = (
        (p.persistent_retry_base, p.persistent_retry_cap)
        if error.persistent
        else (p.retry_base, p.retry_cap)
    )
    delay = min(cap, base * 2.0 ** (failures - 1))
    delay *= 0.5 + 0.5 * rng.random()
    if seconds_left is not None:
        # Retry more often as the set we still serve nears the end of its life (but once
        # it has lapsed there is nothing to save: plain backoff again).
        left = seconds_left - p.min_serve_seconds
        if left > 0:
            delay = min(delay, max(1.0, left / 4))
    if error.retry_after:
        delay = max(delay, error.retry_after)
    return delay


__all__ = ["Policy", "backoff", "refresh_point"]
