"""The daemon under a service manager's eyes: READY, STATUS, WATCHDOG, RELOADING, STOPPING.

The test plays systemd's part: it binds a Unix datagram socket, starts the real daemon with
NOTIFY_SOCKET (and WATCHDOG_USEC) pointing at it, and reads what arrives. Arrival times are the
kernel's (SO_TIMESTAMPNS), so a busy test process cannot blur the gaps being measured.
"""

from __future__ import annotations

import itertools
import re
import signal
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import harness as h

SO_TIMESTAMPNS = 35  # Linux, asm-generic (x86-64, arm64): not exported by the socket module
WATCHDOG_USEC = 1_000_000  # keep-alives every 0.5 s; systemd would act after 1 s of silence
BLOCK_SECONDS = 3.0


@dataclass
class Message:
    at: float  # kernel receive time, CLOCK_REALTIME seconds
    fields: dict[str, str]


class NotifyReceiver:
    """What systemd's notify socket would see, collected by a thread."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock.settimeout(0.2)
        self._messages: list[Message] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.error: BaseException | None = None  # raised again in the test by messages()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._receive()
        except BaseException as exc:  # a malformed notification must fail the test
            self.error = exc

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(16))
            except TimeoutError:
                continue
            at = time.time()
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    sec, nsec = struct.unpack("qq", payload[:16])
                    at = sec + nsec / 1e9
            fields = dict(line.split("=", 1) for line in data.decode().split("\n") if line)
            with self._lock:
                self._messages.append(Message(at, fields))

    def messages(self) -> list[Message]:
        if self.error is not None:
            raise self.error
        with self._lock:
            return list(self._messages)

    def with_key(self, key: str) -> list[Message]:
        return [m for m in self.messages() if key in m.fields]

    def wait(self, key: str, count: int = 1, timeout: float = 30.0) -> list[Message]:
        return h.wait_for(lambda: len(self.with_key(key)) >= count and self.with_key(key),
                          timeout=timeout, what=f"{count} x {key}")  # type: ignore[no-any-return]

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@contextmanager
def receiver(tmp: Path) -> Iterator[NotifyReceiver]:
    r = NotifyReceiver(tmp / "notify.sock")
    try:
        yield r
    finally:
        r.close()


def _gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


def test_ready_status_watchdog_reload_and_stop(tmp_path: Path) -> None:
    material = h.make_pki(tmp_path / "pki")
    with receiver(tmp_path) as notify, h.emulator(tmp_path, [material.ca_file]) as emu:
        env = h.clean_env(NOTIFY_SOCKET=notify.path, WATCHDOG_USEC=str(WATCHDOG_USEC),
                          WATCHDOG_PID="", CREDENTIAL_SIDECAR_TEST_BLOCK_LOOP_SECONDS=str(
                              BLOCK_SECONDS))
        conn = h.connection("reports", material, emu.url)
        with h.daemon(tmp_path, [conn], env=env, wait_ready=False) as d:
            # READY=1 once credentials are held, with a one-line summary for systemctl status.
            (ready,) = notify.wait("READY")
            assert d.ready(), "READY=1 is sent only once /readyz says ready"
            assert re.fullmatch(r"1/1 connections ready; next renewal in \d+m",
                                ready.fields["STATUS"]), ready.fields
            assert any(e.get("event") == "credentials renewed" for e in d.events())

            # Keep-alives at half the interval while the loop runs...
            before = len(notify.with_key("WATCHDOG"))
            notify.wait("WATCHDOG", before + 6)
            steady = [m.at for m in notify.with_key("WATCHDOG")]
            gaps = _gaps(steady[-6:])
            assert max(gaps) < WATCHDOG_USEC / 1e6, gaps  # systemd would never fire
            assert 0.3 < sum(gaps) / len(gaps) < 0.8, gaps  # about every 0.5 s

            # ...and none while it is blocked (SIGUSR2 runs time.sleep on the loop thread).
            blocked_at = time.time()
            d.process.proc.send_signal(signal.SIGUSR2)
            h.wait_for(lambda: any(e.get("event") == "blocking the event loop (test hook)"
                                   for e in d.events()), what="the loop to block")
            count = len(notify.with_key("WATCHDOG"))
            notify.wait("WATCHDOG", count + 3)  # they resume once the loop runs again
            times = [m.at for m in notify.with_key("WATCHDOG") if m.at >= blocked_at - 1]
            longest = max(_gaps(times))
            assert longest >= BLOCK_SECONDS - 0.5, (longest, _gaps(times))
            assert longest > WATCHDOG_USEC / 1e6, "systemd would have restarted the service"

            # Reload: RELOADING=1 with MONOTONIC_USEC on the shared clock, then READY=1 again.
            mono_before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            d.process.proc.send_signal(signal.SIGHUP)
            (reloading,) = notify.wait("RELOADING")
            mono_after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            assert mono_before <= int(reloading.fields["MONOTONIC_USEC"]) <= mono_after
            readies = notify.wait("READY", 2)
            assert readies[1].at >= reloading.at
            assert readies[1].fields["STATUS"].startswith("1/1 connections ready")

            # A broken config is refused; the refusal shows in STATUS, the service stays up.
            good = d.config_path.read_text()
            d.config_path.write_text(good + "\n[daemon]\nbogus = 1\n")
            d.process.proc.send_signal(signal.SIGHUP)
            readies = notify.wait("READY", 3)
            assert readies[2].fields["STATUS"].startswith(
                "reload refused: config invalid"), readies[2].fields
            assert len(notify.with_key("RELOADING")) == 2
            assert d.ready()
            d.config_path.write_text(good)

            # SIGTERM: STOPPING=1 first, then a clean exit, and nothing after it.
            assert d.process.stop() == 0
            assert len(notify.with_key("STOPPING")) == 1
            assert notify.messages()[-1].fields.get("STOPPING") == "1", "no keep-alive after it"


def test_ready_after_the_timeout_while_the_upstream_is_down(tmp_path: Path) -> None:
    """Units ordered after us must not wait forever; /readyz goes on saying what is missing."""
    material = h.make_pki(tmp_path / "pki")
    nowhere = f"http://127.0.0.1:{h.free_port()}"  # nothing listens: every renewal fails
    conn = h.connection("reports", material, nowhere)
    with receiver(tmp_path) as notify:
        env = h.clean_env(NOTIFY_SOCKET=notify.path)
        daemon = {"state_dir": str(tmp_path / "state"), "log_format": "json",
                  "log_level": "debug", "ready_timeout_seconds": 2}
        started = time.time()
        with h.daemon(tmp_path, [conn], env=env, wait_ready=False,
                      extra={"daemon": daemon}) as d:
            (ready,) = notify.wait("READY")
            assert ready.at - started >= 2.0
            # While it waited, systemctl status already showed why.
            waiting = [m for m in notify.messages() if m.at < ready.at]
            assert waiting and all(set(m.fields) == {"STATUS"} for m in waiting)
            waiting_for = "0/1 connections ready; not ready: reports ("
            statuses = [m.fields["STATUS"] for m in waiting]
            assert all(text.startswith(waiting_for) for text in statuses), statuses
            assert waiting_for + "ConnectionError)" in statuses
            assert ready.fields["STATUS"].startswith(waiting_for)
            assert not d.ready()
            assert any(e.get("event") == "not every connection is ready; telling systemd the "
                       "service is up anyway" for e in d.events())


def test_no_notify_socket_no_notifications(tmp_path: Path) -> None:
    """Run outside systemd (or with NOTIFY_SOCKET unset) the daemon just runs."""
    material = h.make_pki(tmp_path / "pki")
    with h.emulator(tmp_path, [material.ca_file]) as emu:
        env = h.clean_env()
        env.pop("NOTIFY_SOCKET", None)
        with h.daemon(tmp_path, [h.connection("reports", material, emu.url)], env=env) as d:
            assert d.ready()
            assert not any(e.get("event") in ("cannot notify systemd", "watchdog enabled")
                           for e in d.events())
