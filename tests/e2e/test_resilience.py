"""Fault injection: the daemon and emulator as processes, a botocore client polling throughout.

Time is moved, not waited for: both processes read a shared clock offset from a file
(CREDENTIAL_SIDECAR_TEST_CLOCK_FILE), so hours of renewal schedule pass in seconds.
In every scenario the poller must never get an error while valid credentials existed,
never an empty or expired set, and the upstream call count stays within a stated bound.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from botocore.utils import InstanceMetadataFetcher

from credential_sidecar.devtools import pki
from tests.helpers import harness as h
from tests.helpers.time_machine import STEP, TimeMachine

DURATION = 3600


def _stamp(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@dataclass
class Poll:
    at: float
    access_key: str | None
    expires: float | None


class Poller(threading.Thread):
    """botocore's own IMDS fetcher, as boto3 uses it, asked again and again."""

    def __init__(self, url: str, clock: TimeMachine) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.clock = clock
        self.polls: list[Poll] = []
        self.error: BaseException | None = None  # raised again in the test by stop()
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            self._poll()
        except BaseException as exc:  # an assertion here must fail the test, not warn
            self.error = exc

    def _poll(self) -> None:
        while not self._halt.is_set():
            fetcher = InstanceMetadataFetcher(
                timeout=1, num_attempts=1, base_url=self.url,
                config={"ec2_metadata_v1_disabled": True},
            )
            creds = fetcher.retrieve_iam_role_credentials()
            at = self.clock.now()
            if creds:
                assert creds["secret_key"] and creds["token"], "an empty set was served"
                self.polls.append(Poll(at, creds["access_key"], _stamp(creds["expiry_time"])))
            else:
                self.polls.append(Poll(at, None, None))
            time.sleep(0.01)

    def stop(self) -> None:
        self._halt.set()
        self.join(10)
        assert not self.is_alive(), "the poller did not stop"
        if self.error is not None:
            raise self.error

    def served(self) -> set[str]:
        return {p.access_key for p in self.polls if p.access_key}


def check_polls(polls: list[Poll], issued: list[dict[str, Any]]) -> None:
    """Never expired or nearly so; no error while some issued set was still good."""
    assert polls, "the poller never ran"
    windows = [(_stamp(c["expiration"]) - DURATION, _stamp(c["expiration"])) for c in issued]
    for poll in polls:
        if poll.access_key is not None:
            assert poll.expires is not None
            left = poll.expires - poll.at
            assert left >= 60 - STEP, f"served a set with {left:.0f} s left"
        else:
            good = [w for w in windows if w[0] + STEP <= poll.at and w[1] - poll.at >= 60 + STEP]
            assert not good, f"error at {poll.at:.0f}; a set was valid until {good[0][1]:.0f}"


@dataclass
class Stack:
    tmp: Path
    clock: TimeMachine
    material: h.Pki
    emulator: h.Emulator
    env: dict[str, str]
    imds_port: int

    def connection(self, **extra: Any) -> dict[str, Any]:
        return h.connection("app", self.material, self.emulator.url, **extra)

    def imds(self) -> list[dict[str, Any]]:
        return [{"listen": f"127.0.0.1:{self.imds_port}", "connection": "app"}]

    def calls(self) -> int:
        return int(self.emulator.stats()["calls"])

    def issued(self) -> list[dict[str, Any]]:
        return list(self.emulator.stats()["issued"])


@contextmanager
def stack(tmp: Path) -> Iterator[Stack]:
    clock = TimeMachine(tmp / "clock-offset")
    env = h.clean_env(CREDENTIAL_SIDECAR_TEST_CLOCK_FILE=str(clock.path))
    material = h.make_pki(tmp / "pki")
    with h.emulator(tmp, [material.ca_file], env=env) as emu:
        yield Stack(tmp, clock, material, emu, env, h.free_port())


@contextmanager
def polled(url: str, clock: TimeMachine) -> Iterator[Poller]:
    poller = Poller(url, clock)
    poller.start()
    try:
        h.wait_for(lambda: len(poller.polls) > 3, what="the first polls")
        yield poller
    finally:
        poller.stop()


def status_of(daemon: h.Daemon) -> dict[str, Any]:
    code, _, body = h.http("GET", daemon.url("health") + "status")
    assert code == 200
    return json.loads(body)["connections"][0]  # type: ignore[no-any-return]


def test_outage_longer_than_the_renewal_margin(tmp_path: Path) -> None:
    with stack(tmp_path) as s, h.daemon(tmp_path, [s.connection()], imds=s.imds(), env=s.env) as d:
        with polled(d.url("imds:app"), s.clock) as poller:
            first = s.issued()[0]
            s.clock.advance(1400)  # renewal falls due 1440..1800 s after issue
            s.emulator.faults(fail_status=503, fail_count=-1)
            calls = s.calls()
            s.clock.advance(2400)  # past the first set's expiry
            h.wait_for(lambda: poller.polls[-1].access_key is None, what="the lapsed set withdrawn")
            outage_calls = s.calls() - calls
            state = status_of(d)
            assert state["state"] == "failed" and "503" in state["last_error"]
            code, _, body = h.http("GET", d.url("health") + "readyz")
            assert code == 503 and "app" in json.loads(body)["not_ready"]
            s.emulator.faults(fail_count=0)
            s.clock.advance(150)  # the backoff cap is 120 s
            h.wait_for(lambda: poller.polls[-1].access_key not in (None, first["accessKeyId"]),
                       what="recovery after the outage")
        check_polls(poller.polls, s.issued())
        assert first["accessKeyId"] in poller.served()
    # 40 minutes of outage: backoff 5 s doubling to 120 s, a little faster near expiry.
    assert 10 <= outage_calls <= 60


def test_throttling_storm_honours_retry_after(tmp_path: Path) -> None:
    with stack(tmp_path) as s, h.daemon(tmp_path, [s.connection()], imds=s.imds(), env=s.env) as d:
        with polled(d.url("imds:app"), s.clock) as poller:
            s.clock.advance(1400)
            s.emulator.faults(throttle_count=-1, retry_after=120)
            calls = s.calls()
            s.clock.advance(600)
            storm_calls = s.calls() - calls
            assert "ThrottlingException" in (status_of(d)["last_error"] or "")
            code, _, body = h.http("GET", d.url("health") + "readyz")
            assert code == 200 and "app" in json.loads(body)["degraded"]
            s.emulator.faults(throttle_count=0)
            s.clock.advance(150)
            h.wait_for(lambda: status_of(d)["state"] == "ready", what="recovery")
        check_polls(poller.polls, s.issued())
        assert all(p.access_key for p in poller.polls), "no client error during the storm"
    assert 1 <= storm_calls <= 7  # at most one call per Retry-After


def test_malformed_and_empty_answers_never_replace_a_good_set(tmp_path: Path) -> None:
    with stack(tmp_path) as s, h.daemon(tmp_path, [s.connection()], imds=s.imds(), env=s.env) as d:
        with polled(d.url("imds:app"), s.clock) as poller:
            first = s.issued()[0]["accessKeyId"]
            s.emulator.faults(malformed_count=3, empty_count=2)
            s.clock.advance(1800)
            assert "MalformedResponse" in (status_of(d)["last_error"] or "") or (
                status_of(d)["state"] == "ready"
            )
            s.clock.advance(300)
            h.wait_for(lambda: poller.polls[-1].access_key not in (None, first),
                       what="a good renewal after the bad answers")
            log = d.process.log.read_text()
        check_polls(poller.polls, s.issued())
        assert all(p.access_key for p in poller.polls)
        assert log.count("MalformedResponse") >= 5
        assert s.emulator.stats()["failed"] >= 5


def test_slow_upstream_does_not_slow_the_endpoint(tmp_path: Path) -> None:
    with stack(tmp_path) as s, h.daemon(tmp_path, [s.connection()], imds=s.imds(), env=s.env) as d:
        with polled(d.url("imds:app"), s.clock) as poller:
            s.emulator.faults(delay_seconds=4)
            calls = s.calls()
            # Step to just past the renewal point, then hold still: the call takes 4 s of real time.
            s.clock.advance(_stamp(status_of(d)["next_renewal"]) - s.clock.now() + 1)
            h.wait_for(lambda: s.calls() > calls, what="the slow renewal to start")
            during = len(poller.polls)
            assert status_of(d)["renewals"]["ok"] == 1, "still waiting on the slow upstream"
            h.wait_for(lambda: status_of(d)["renewals"]["ok"] >= 2, timeout=30,
                       what="the slow renewal to finish")
            assert len(poller.polls) - during >= 10, "the poller kept being served meanwhile"
        check_polls(poller.polls, s.issued())
        # botocore's 1 s timeout: any slow answer would have been recorded as an error.
        assert all(p.access_key for p in poller.polls)


def test_kill_9_mid_renewal_then_restart_serves_from_the_cache(tmp_path: Path) -> None:
    with stack(tmp_path) as s:
        conn = s.connection()
        with h.daemon(tmp_path, [conn], imds=s.imds(), env=s.env, expect_exit=-9,
                      log_name="first.log") as d:
            first = s.issued()[0]["accessKeyId"]
            s.emulator.faults(delay_seconds=30)
            calls = s.calls()
            s.clock.advance(_stamp(status_of(d)["next_renewal"]) - s.clock.now() + 1)
            h.wait_for(lambda: s.calls() > calls, what="a renewal in flight")
            assert status_of(d)["renewals"]["ok"] == 1
            d.process.stop(signal.SIGKILL)
        # The upstream is now down: the restarted daemon can only serve what it persisted.
        s.emulator.faults(delay_seconds=0, fail_status=503, fail_count=-1)
        with h.daemon(tmp_path, [conn], imds=s.imds(), env=s.env, log_name="second.log") as d2:
            with polled(d2.url("imds:app"), s.clock) as poller:
                h.wait_for(lambda: len(poller.polls) > 20, what="polls after the restart")
            assert poller.served() == {first}
            assert all(p.access_key for p in poller.polls)
            assert any(e.get("event") == "credentials restored from cache" for e in d2.events())
            check_polls(poller.polls, s.issued())
        files = list((tmp_path / "state" / "cache").iterdir())
        assert [f.name for f in files] == ["app.cred"]
        assert first.encode() not in files[0].read_bytes()


def test_corrupt_cache_is_ignored_and_the_upstream_asked(tmp_path: Path) -> None:
    with stack(tmp_path) as s:
        conn = s.connection()
        with h.daemon(tmp_path, [conn], imds=s.imds(), env=s.env, log_name="first.log"):
            pass
        cache_file = tmp_path / "state" / "cache" / "app.cred"
        blob = cache_file.read_bytes()
        cache_file.write_bytes(blob[:20] + bytes(b ^ 0x55 for b in blob[20:40]) + blob[40:])
        calls = s.calls()
        with h.daemon(tmp_path, [conn], imds=s.imds(), env=s.env, log_name="second.log") as d:
            with polled(d.url("imds:app"), s.clock) as poller:
                pass
            ignored = [e for e in d.events() if e.get("event") == "cache file ignored"]
        assert ignored and "app" == ignored[0]["connection"]
        assert s.calls() == calls + 1
        assert poller.served() == {s.issued()[-1]["accessKeyId"]}


def test_sighup_with_a_broken_config_keeps_serving_then_applies_a_good_one(
    tmp_path: Path,
) -> None:
    with stack(tmp_path) as s, h.daemon(tmp_path, [s.connection()], imds=s.imds(), env=s.env) as d:
        with polled(d.url("imds:app"), s.clock) as poller:
            good = d.config_path.read_text()
            d.config_path.write_text(good.replace("duration_seconds = 3600",
                                                  "duration_seconds = 60"))
            d.process.proc.send_signal(signal.SIGHUP)
            h.wait_for(lambda: any(e.get("event", "").startswith("reload refused")
                                   for e in d.events()), what="the refusal")
            refused = next(e for e in d.events() if e.get("event", "").startswith("reload refused"))
            assert "connections[0].duration_seconds" in " ".join(refused["problems"])
            calls = s.calls()
            # Now a valid config that adds a second connection with its own IMDS door.
            second_port = h.free_port()
            config = h.daemon_config(
                tmp_path, [s.connection(), h.connection("second", s.material, s.emulator.url)],
                imds=[*s.imds(), {"listen": f"127.0.0.1:{second_port}", "connection": "second"}],
            )
            d.config_path.write_text(h.to_toml(config))
            d.process.proc.send_signal(signal.SIGHUP)
            h.wait_for(lambda: h.http("GET", d.url("health") + "readyz")[0] == 200
                       and len(s.issued()) == 2, what="the second connection")
            assert s.calls() == calls + 1, "the unchanged connection made no upstream call"
            second = f"http://127.0.0.1:{second_port}/"
            code, _, _ = h.http("PUT", second + "latest/api/token",
                                {"X-aws-ec2-metadata-token-ttl-seconds": "60"})
            assert code == 200
            # And remove it again: its door closes, the first keeps serving.
            d.config_path.write_text(good)
            d.process.proc.send_signal(signal.SIGHUP)
            h.wait_for(lambda: sum(e.get("event") == "reloaded" for e in d.events()) == 2,
                       what="the second reload")
            try:
                h.http("PUT", second + "latest/api/token",
                       {"X-aws-ec2-metadata-token-ttl-seconds": "60"})
                closed = False
            except OSError:
                closed = True
            assert closed
        check_polls(poller.polls, s.issued())
        assert poller.served() == {s.issued()[0]["accessKeyId"]}
        assert all(p.access_key for p in poller.polls)


def test_certificate_files_replaced_on_disk(tmp_path: Path) -> None:
    with stack(tmp_path) as s, h.daemon(tmp_path, [s.connection()], imds=s.imds(), env=s.env) as d:
        with polled(d.url("imds:app"), s.clock) as poller:
            # A renewed certificate from the same CA: picked up at once on SIGHUP.
            renewed = pki.make_leaf(s.material.ca, "client.test.invalid", "p256")
            s.material.cert.write_bytes(renewed.cert_pem())
            pki.write_private(s.material.key, renewed.key_pem())
            d.process.proc.send_signal(signal.SIGHUP)
            h.wait_for(lambda: len(s.issued()) == 2, what="a renewal with the new certificate")
            loaded = [e for e in d.events() if e.get("event") == "identity loaded"]
            assert loaded[-1]["serial"] == renewed.certificate.serial_number
            # A certificate from a CA the trust anchor does not know: refused plainly,
            # and the good set keeps being served.
            stranger = pki.make_leaf(pki.make_ca("stranger CA"), "client.test.invalid")
            s.material.cert.write_bytes(stranger.cert_pem())
            pki.write_private(s.material.key, stranger.key_pem())
            d.process.proc.send_signal(signal.SIGHUP)
            h.wait_for(lambda: "Untrusted" in (status_of(d)["last_error"] or ""),
                       what="the refusal in /status")
            assert any("retrying will not fix it" in (e.get("hint") or "") for e in d.events())
            s.clock.advance(900)
        check_polls(poller.polls, s.issued())
        assert all(p.access_key for p in poller.polls)
        assert poller.served() <= {c["accessKeyId"] for c in s.issued()}


def test_sigterm_persists_and_exits_zero(tmp_path: Path) -> None:
    with stack(tmp_path) as s:
        with h.daemon(tmp_path, [s.connection()], imds=s.imds(), env=s.env) as d:
            pass
        assert d.process.proc.returncode == 0
        assert (tmp_path / "state" / "cache" / "app.cred").exists()
        assert os.stat(tmp_path / "state" / "cache" / "app.cred").st_mode & 0o077 == 0
        assert any(e.get("event") == "stopped" for e in d.events())
