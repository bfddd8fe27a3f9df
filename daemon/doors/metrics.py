"""Prometheus metrics on the health listener's ``/metrics``: counts, latency, time left. No secret.

Each daemon has its own registry (not the library's global one), so several daemons in one process
(tests) never mix their numbers. Per-connection gauges are computed at scrape time from the
manager's state, so they are never stale and need no bookkeeping when connections come and go.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest

from credential_sidecar.renewal.manager import CredentialManager

PREFIX = "credential_sidecar"
# CreateSession and STS answer in tens of milliseconds; the client times out at 10 s.
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def _days_until(text: object, now: float) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return (when.timestamp() - now) / 86400


class _StateCollector:
    """Per-connection numbers read from the manager at scrape time."""

    def __init__(
        self, manager: CredentialManager, describe: Callable[[str], dict[str, object]] | None
    ) -> None:
        self.manager = manager
        self.facts = describe  # not "describe": the registry would call that as a method

    def collect(self) -> Iterator[Metric]:
        manager = self.manager
        now = manager.clock.time()
        renewals = CounterMetricFamily(
            f"{PREFIX}_renewals", "Upstream renewal attempts by result.",
            labels=["connection", "result"])
        left = GaugeMetricFamily(
            f"{PREFIX}_credentials_seconds_left",
            "Seconds until the held set expires (0 when none is held).", labels=["connection"])
        ready = GaugeMetricFamily(
            f"{PREFIX}_ready", "1 when the connection has a fresh set to serve.",
            labels=["connection"])
        failures = GaugeMetricFamily(
            f"{PREFIX}_consecutive_failures", "Renewals failed since the last success.",
            labels=["connection"])
        cert_days = GaugeMetricFamily(
            f"{PREFIX}_certificate_days_left", "Days until the client certificate expires.",
            labels=["connection"])
        key_age = GaugeMetricFamily(
            f"{PREFIX}_key_age_days", "Age of a long-term access key, in days.",
            labels=["connection"])
        for name, state in list(manager.states.items()):
            for result, count in state.renewals.items():
                renewals.add_metric([name, result], count)
            creds = state.current
            left.add_metric([name], max(0.0, creds.remaining(now)) if creds else 0.0)
            ready.add_metric([name], 1.0 if manager.get(name) is not None else 0.0)
            failures.add_metric([name], state.failures)
            facts = self.facts(name) if self.facts else {}
            days = _days_until(facts.get("certificate_not_after"), now)
            if days is not None:
                cert_days.add_metric([name], days)
            age = facts.get("key_age_days")
            if isinstance(age, int | float):
                key_age.add_metric([name], float(age))
        yield from (renewals, left, ready, failures, cert_days, key_age)


class _RequestCounts:
    """Answers by door and status, in a plain dict rendered at scrape time.

    prometheus_client's labelled Counter cost about 11 us per answer (label lookup and locks),
    a sixth of what an IMDS answer costs in all; the doors run on one event loop, so a dict
    needs no lock.
    """

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}
        # (door, connection, result) -> count: sets handed out ("served") or refused to a peer
        # its allowed_uids/allowed_gids leave out ("refused")
        self.handouts: dict[tuple[str, str, str], int] = {}
        # (door, reason) -> TCP connections closed at accept ("door_full", "peer_full")
        self.rejected: dict[tuple[str, str], int] = {}

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(f"{PREFIX}_requests", "Requests answered, by door and status.",
                                     labels=["door", "status"])
        for (door, status), count in sorted(self.counts.items()):
            family.add_metric([door, status], count)
        yield family
        handouts = CounterMetricFamily(
            f"{PREFIX}_handouts", "Credential sets handed out or refused, by door, connection "
            "and result (served, refused).", labels=["door", "connection", "result"])
        for key, count in sorted(self.handouts.items()):
            handouts.add_metric(list(key), count)
        yield handouts
        rejected = CounterMetricFamily(
            f"{PREFIX}_connections_rejected", "TCP connections closed at accept because the "
            "door (door_full) or the peer's uid (peer_full) held too many.",
            labels=["door", "reason"])
        for pair, count in sorted(self.rejected.items()):
            rejected.add_metric(list(pair), count)
        yield rejected


class Metrics:
    def __init__(
        self,
        manager: CredentialManager,
        describe: Callable[[str], dict[str, object]] | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        self.requests = _RequestCounts()
        self.registry.register(self.requests)
        self.upstream = Histogram(
            f"{PREFIX}_upstream_seconds", "Time an upstream renewal call took.",
            ["connection"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.registry.register(_StateCollector(manager, describe))

    def count(self, door: str, status: int) -> None:
        key = (door, str(status))
        counts = self.requests.counts
        counts[key] = counts.get(key, 0) + 1

    def handout(self, door: str, connection: str, result: str) -> None:
        handouts = self.requests.handouts
        handouts[door, connection, result] = handouts.get((door, connection, result), 0) + 1

    def rejected(self, door: str, reason: str) -> None:
        rejected = self.requests.rejected
        rejected[door, reason] = rejected.get((door, reason), 0) + 1

    def observe_upstream(self, connection: str, seconds: float) -> None:
        self.upstream.labels(connection).observe(max(0.0, seconds))

    def attach(self, door: str, app: web.Application) -> None:
        """Count every answer of one door's aiohttp app, errors included.

        A response-prepare signal rather than a middleware: aiohttp's middleware chain cost
        about 5 us per request, 7% of an IMDS fetch (bench/serving.py).
        """

        async def count(request: web.Request, response: web.StreamResponse) -> None:
            self.count(door, response.status)

        app.on_response_prepare.append(count)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    async def handle(self, request: web.Request) -> web.Response:
        response = web.Response(body=self.render())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response
