"""The audit trail writes a line per new fact: repeats of a hand-out or refusal cannot flood it."""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any

import structlog

from credential_sidecar.doors.audit import AuditTrail
from credential_sidecar.testing import FakeClock


def _lines(actions: list[tuple[str, tuple[object, ...]]]) -> list[MutableMapping[str, Any]]:
    trail = AuditTrail(FakeClock())
    with structlog.testing.capture_logs() as logs:
        for method, args in actions:
            getattr(trail, method)(*args)
    return logs


def test_a_hand_out_is_a_line_once_per_set_uid_and_door() -> None:
    served = ("served", ("imds:app", "app", 1001, "ASIA1"))
    logs = _lines([served, served, served,
                   ("served", ("imds:app", "app", 1002, "ASIA1")),  # another user
                   ("served", ("container", "app", 1001, "ASIA1")),  # another door
                   ("served", ("imds:app", "app", 1001, "ASIA2")),  # the renewed set
                   served])  # an older set again (a second daemon's?): a fact worth a line
    assert [(e["door"], e["uid"], e["access_key_id"]) for e in logs] == [
        ("imds:app", 1001, "ASIA1"), ("imds:app", 1002, "ASIA1"), ("container", 1001, "ASIA1"),
        ("imds:app", 1001, "ASIA2"), ("imds:app", 1001, "ASIA1")]
    for event in logs:
        assert event["event"] == "credentials handed out" and event["audit"] is True
        assert event["log_level"] == "info"


def test_refusals_are_a_line_a_minute_per_peer_with_what_was_left_out() -> None:
    clock = FakeClock()
    trail = AuditTrail(clock, refusal_interval=60.0)
    with structlog.testing.capture_logs() as logs:
        for _ in range(5):
            trail.refused("imds:app", "app", 1003, "127.0.0.1")
        trail.refused("imds:app", "app", 1004, "127.0.0.1")  # another user: its own line
        asyncio.run(clock.advance(59.0))
        trail.refused("imds:app", "app", 1003, "127.0.0.1")
        asyncio.run(clock.advance(1.0))
        trail.refused("imds:app", "app", 1003, "127.0.0.1")
        trail.refused("imds:app", "app", 1003, "127.0.0.1")
        asyncio.run(clock.advance(60.0))
        trail.refused("imds:app", "app", 1003, "127.0.0.1")
    assert [(e["uid"], e.get("suppressed")) for e in logs] == [
        (1003, None), (1004, None), (1003, 5), (1003, 1)]
    for event in logs:
        assert event["event"] == "credentials refused" and event["audit"] is True
        assert event["log_level"] == "warning" and event["remote"] == "127.0.0.1"


def test_memory_stays_bounded_and_nothing_is_lost_when_it_fills() -> None:
    trail = AuditTrail(FakeClock(), max_keys=3)
    with structlog.testing.capture_logs() as logs:
        for uid in range(10):
            trail.served("container", "app", uid, "ASIA1")
            trail.refused("container", "app", uid, None)
        assert len(trail._served) <= 3 and len(trail._refused) <= 3
    assert sum(e["event"] == "credentials handed out" for e in logs) == 10
    assert sum(e["event"] == "credentials refused" for e in logs) == 10
