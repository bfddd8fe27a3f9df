"""Prometheus metrics on the health listener's ``/metrics``: counts, latency, time left. No secret.

Each daemon has its own registry (not the library's global one), so several daemons in one process
(tests) never mix their numbers. Per-connection gauges are computed at scrape time from the
manager's state, so they are never stale and need no bookkeeping when connections come and go.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest

from daemon.manager import CredentialManager

PREFIX = "credential_sidecar"
# CreateSession and STS answer in tens of milliseconds; the client times out at 10 s.
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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


class Metrics:
    def __init__(
        self,
        manager: CredentialManager,
        describe: Callable[[str], dict[str, object]] | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            f"{PREFIX}_requests", "Requests answered, by door and status.",
            ["door", "status"], registry=self.registry)
        self.upstream = Histogram(
            f"{PREFIX}_upstream_seconds", "Time an upstream renewal call took.",
            ["connection"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.registry.register(_StateCollector(manager, describe))

    def count(self, door: str, status: int) -> None:
        self.requests.labels(door, str(status)).inc()

    def observe_upstream(self, connection: str, seconds: float) -> None:
        self.upstream.labels(connection).observe(max(0.0, seconds))

    def middleware(self, door: str) -> Any:
        """Counts every answer of one door's aiohttp app, errors included."""

        @web.middleware
        async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                self.count(door, exc.status)
                raise
            except Exception:
                self.count(door, 500)
                raise
            self.count(door, response.status)
            return response

        return count

    def render(self) -> bytes:
        return generate_latest(self.registry)

    async def handle(self, request: web.Request) -> web.Response:
        response = web.Response(body=self.render())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response
