"""credential-process rides out a restart without socket activation: a socket that is missing
(ENOENT) or refuses (ECONNREFUSED) is tried again, briefly and for a bounded time; nothing
else is, and no answer the daemon gives is. The clock is the test's: no test here sleeps."""

from __future__ import annotations

import json
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from credential_sidecar import client
from credential_sidecar.client import RETRY_DELAYS, RETRY_SECONDS, Unreachable, ask

CREDENTIALS = {"Version": 1, "AccessKeyId": "ASIAEXAMPLE", "SecretAccessKey": "s",
               "SessionToken": "t", "Expiration": "2026-12-01T00:00:00Z"}


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    # Short paths: a Unix socket path must fit in 108 bytes, pytest's tmp_path may not.
    with tempfile.TemporaryDirectory(prefix="cs-") as name:
        yield Path(name)


@dataclass
class Clock:
    """``now`` and ``sleep`` for the client; ``at_sleep`` runs at the given sleep (0-based)."""

    t: float = 0.0
    sleeps: list[float] = field(default_factory=list)
    at_sleep: dict[int, Callable[[], None]] = field(default_factory=dict)

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        action = self.at_sleep.get(len(self.sleeps))
        self.sleeps.append(seconds)
        self.t += seconds
        if action is not None:
            action()


@dataclass
class Daemon:
    """A stand-in for the control socket: answers ``answer`` to each connection it accepts."""

    path: Path
    answer: dict[str, object]
    accepted: int = 0
    sock: socket.socket | None = None
    thread: threading.Thread | None = None

    def bind(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(self.path))
        self.sock.listen()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        assert self.sock is not None
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed by stop()
                return
            with conn:
                self.accepted += 1
                conn.settimeout(5)
                conn.recv(4096)
                conn.sendall(json.dumps(self.answer).encode() + b"\n")

    def stop(self) -> None:
        if self.sock is not None:
            self.sock.shutdown(socket.SHUT_RDWR)
            self.sock.close()
        if self.thread is not None:
            self.thread.join(5)


@pytest.fixture
def daemon(sock_dir: Path) -> Iterator[Daemon]:
    stand_in = Daemon(sock_dir / "control.sock", {"ok": True, "credentials": CREDENTIALS})
    yield stand_in
    stand_in.stop()


def _ask(path: Path, clock: Clock) -> dict[str, object]:
    return ask(path, {"op": "credentials", "name": "app"}, retry_for=RETRY_SECONDS,
               now=clock.now, sleep=clock.sleep)


def test_a_socket_that_appears_during_the_wait_is_used(daemon: Daemon) -> None:
    clock = Clock(at_sleep={3: daemon.bind})
    assert _ask(daemon.path, clock) == {"ok": True, "credentials": CREDENTIALS}
    assert clock.sleeps == list(RETRY_DELAYS)
    assert daemon.accepted == 1


def test_a_socket_that_refuses_until_the_new_daemon_binds_is_waited_for(daemon: Daemon) -> None:
    """What a kill -9 leaves: the file, and nobody listening on it."""
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(daemon.path))
    stale.close()

    def rebind() -> None:
        daemon.path.unlink()
        daemon.bind()

    clock = Clock(at_sleep={1: rebind})
    assert _ask(daemon.path, clock)["ok"] is True
    assert len(clock.sleeps) == 2


@pytest.mark.parametrize("answer", [
    {"ok": False, "code": "Forbidden", "message": "uid 1001 may not read connection app"},
    {"ok": False, "code": "NotFound", "message": 'no connection named "app"'},
    {"ok": False, "code": "CredentialsUnavailable", "message": "connection app has no fresh"},
])
def test_an_answer_is_never_retried(daemon: Daemon, answer: dict[str, object],
                                    capsys: pytest.CaptureFixture[str]) -> None:
    daemon.answer = answer
    daemon.bind()
    clock = Clock()
    assert client.print_credentials("app", str(daemon.path), now=clock.now,
                                    sleep=clock.sleep) == 1
    assert capsys.readouterr().err == f"credential-sidecar: {answer['message']}\n"
    assert daemon.accepted == 1 and clock.sleeps == []


def test_the_wait_is_bounded_and_ends_with_todays_message(
    sock_dir: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    absent = sock_dir / "absent.sock"
    clock = Clock()
    assert client.print_credentials("app", str(absent), now=clock.now, sleep=clock.sleep) == 1
    assert capsys.readouterr().err == (
        f"credential-sidecar: daemon not reachable at {absent}: No such file or directory\n")
    assert clock.t == pytest.approx(RETRY_SECONDS)
    assert max(clock.sleeps) <= RETRY_DELAYS[-1]
    assert len(clock.sleeps) <= RETRY_SECONDS / RETRY_DELAYS[-1] + len(RETRY_DELAYS)


def test_other_errors_fail_at_once(sock_dir: Path) -> None:
    """Not a socket's directory, no permission, and the like: waiting changes nothing."""
    not_a_dir = sock_dir / "file"
    not_a_dir.write_text("")
    clock = Clock()
    with pytest.raises(Unreachable, match="Not a directory"):
        _ask(not_a_dir / "control.sock", clock)
    assert clock.sleeps == []


def test_a_socket_whose_directory_does_not_exist_fails_at_once(sock_dir: Path) -> None:
    """A mistyped --socket, or a daemon never started: no restart is under way to wait for."""
    clock = Clock()
    assert client.print_credentials("app", str(sock_dir / "nowhere" / "control.sock"),
                                    now=clock.now, sleep=clock.sleep) == 1
    assert clock.sleeps == []


def test_status_and_rotate_keys_ask_once(sock_dir: Path) -> None:
    """Only credential-process waits: status falls back to the health listener instead."""
    clock = Clock()
    with pytest.raises(Unreachable, match="No such file"):
        ask(sock_dir / "absent.sock", {"op": "status"}, now=clock.now, sleep=clock.sleep)
    assert clock.sleeps == []
