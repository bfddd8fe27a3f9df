"""Metrics: what a scrape says matches the manager's state, on a fake clock."""

from __future__ import annotations

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from credential_sidecar.clock import utc
from credential_sidecar.credentials import iso_z
from credential_sidecar.doors.metrics import Metrics
from credential_sidecar.renewal.manager import CredentialManager
from credential_sidecar.testing import FakeClock, FakeSource
from credential_sidecar.upstream.base import UpstreamError


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return samples(metrics).get((name, tuple(sorted(labels.items()))))


class SlowSource(FakeSource):
    async def fetch(self):  # type: ignore[no-untyped-def]
        await self.clock.advance(0.3)  # the upstream takes 300 ms of (fake) time
        return await super().fetch()


async def test_per_connection_numbers_follow_the_manager() -> None:
    clock = FakeClock()
    ok, down = FakeSource(clock, 3600, "ok"), SlowSource(clock, 3600, "down")
    manager = CredentialManager({"ok": ok, "down": down}, clock)
    not_after = clock.time() + 10 * 86400
    facts = {"ok": {"certificate_not_after": iso_z(utc(not_after)), "key_age_days": None},
             "down": {"key_age_days": 120}}
    metrics = Metrics(manager, facts.__getitem__)
    manager.on_upstream = metrics.observe_upstream
    await manager.renew("ok")
    await manager.renew("down")
    down.failing = UpstreamError("AccessDeniedException", "no")
    await manager.renew("down")
    await manager.renew("down")
    await clock.advance(600)

    assert value(metrics, "credential_sidecar_renewals_total", connection="ok", result="ok") == 1
    assert value(metrics, "credential_sidecar_renewals_total", connection="down",
                 result="error") == 2
    left = value(metrics, "credential_sidecar_credentials_seconds_left", connection="ok")
    assert left is not None and abs(left - (3600 - 600 - 3 * 0.3)) < 1e-6
    assert value(metrics, "credential_sidecar_ready", connection="ok") == 1
    assert value(metrics, "credential_sidecar_consecutive_failures", connection="down") == 2
    days = value(metrics, "credential_sidecar_certificate_days_left", connection="ok")
    assert days is not None and abs(days - (10 - 600 / 86400)) < 1e-3
    assert value(metrics, "credential_sidecar_certificate_days_left", connection="down") is None
    assert value(metrics, "credential_sidecar_key_age_days", connection="down") == 120
    # Latency: one fast call for "ok", three 300 ms calls for "down" (the failures too).
    assert value(metrics, "credential_sidecar_upstream_seconds_count", connection="down") == 3
    assert value(metrics, "credential_sidecar_upstream_seconds_bucket", connection="down",
                 le="0.25") == 0
    assert value(metrics, "credential_sidecar_upstream_seconds_bucket", connection="down",
                 le="0.5") == 3
    assert value(metrics, "credential_sidecar_upstream_seconds_count", connection="ok") == 1

    # The set lapses: nothing to serve, readiness drops to 0, time left to 0 (never negative).
    down.failing = None
    await clock.advance(4000)
    assert value(metrics, "credential_sidecar_ready", connection="ok") == 0
    assert value(metrics, "credential_sidecar_credentials_seconds_left", connection="ok") == 0


async def test_each_registry_is_its_own() -> None:
    clock = FakeClock()
    one = Metrics(CredentialManager({}, clock))
    two = Metrics(CredentialManager({}, clock))
    one.count("container", 200)
    assert value(one, "credential_sidecar_requests_total", door="container", status="200") == 1
    assert value(two, "credential_sidecar_requests_total", door="container", status="200") is None


async def test_every_answer_of_a_door_is_counted() -> None:
    metrics = Metrics(CredentialManager({}, FakeClock()))

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("bug")

    app = web.Application()
    metrics.attach("imds:app", app)
    app.router.add_get("/ok", ok)
    app.router.add_get("/boom", boom)
    async with TestClient(TestServer(app)) as client:
        for path in ("/ok", "/ok", "/missing", "/boom"):
            await client.get(path)
    assert value(metrics, "credential_sidecar_requests_total", door="imds:app", status="200") == 2
    assert value(metrics, "credential_sidecar_requests_total", door="imds:app", status="404") == 1
    assert value(metrics, "credential_sidecar_requests_total", door="imds:app", status="500") == 1
