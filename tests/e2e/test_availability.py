"""Never a client-visible failure while a good set exists: restarts, reloads, refusals, stops.

The daemon and the emulator run as processes; clients are plain HTTP on loopback, or
credential-process runs (the lean client under ``python3 -I -S``, as the installed script runs
it), polling from threads that record every answer (and any exception) for the test to judge.
"""

from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import credential_sidecar.client
from tests.helpers import harness as h

IMDS_TTL = {"X-aws-ec2-metadata-token-ttl-seconds": "21600"}
CREDS = "latest/meta-data/iam/security-credentials/"


def _token(stack_dir: Path, name: str) -> str:
    return (stack_dir / "state" / "tokens" / f"{name}.token").read_text().strip()


def _container(port: int, name: str, token: str) -> tuple[int, str]:
    """One GET on a new connection, as most SDKs make a credential fetch."""
    # Generous: a restart under a loaded machine may keep a queued connection waiting a while;
    # what counts here is that it is answered, not how fast.
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", f"/v1/credentials/{name}", headers={"Authorization": token})
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def _credential_process(socket_path: Path, name: str) -> tuple[int, str]:
    """One credential-process run, as an SDK makes one near each expiry: (0, "") for a set,
    else the exit code and its one line on stderr."""
    done = subprocess.run([sys.executable, "-I", "-S", CLIENT, name, "--socket", str(socket_path)],
                          capture_output=True, text=True, timeout=60, check=False)
    if done.returncode == 0 and json.loads(done.stdout)["Version"] == 1:
        return 200, ""
    return done.returncode or -2, done.stderr.strip()


CLIENT = credential_sidecar.client.__file__


@dataclass
class Pollers:
    """Threads asking again and again (``fetch(name)``: status, body); every answer is kept."""

    fetch: Callable[[str], tuple[int, str]]
    names: list[str]
    answers: list[tuple[float, str, int, str]] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    _halt: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def _run(self, names: list[str]) -> None:
        try:
            while not self._halt.is_set():
                for name in names:
                    try:
                        status, body = self.fetch(name)
                    except OSError as exc:
                        status, body = -1, repr(exc)
                    self.answers.append((time.monotonic(), name, status, body))
        except BaseException as exc:  # raised again in the test by stop()
            self.errors.append(exc)

    def start(self, threads: int) -> None:
        names = sorted(self.names)
        for i in range(threads):
            thread = threading.Thread(target=self._run, args=(names[i::threads] or names,),
                                      daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._halt.set()
        for thread in self._threads:
            thread.join(15)
            assert not thread.is_alive(), "a poller did not stop"
        if self.errors:
            raise self.errors[0]

    def failures(self) -> list[tuple[float, str, int, str]]:
        return [a for a in self.answers if a[2] != 200]


@contextmanager
def polling(port: int, tokens: dict[str, str], threads: int = 4) -> Iterator[Pollers]:
    """The container door, a new connection per request."""
    with _polling(Pollers(lambda name: _container(port, name, tokens[name]), list(tokens)),
                  threads) as pollers:
        yield pollers


@contextmanager
def polling_process(socket_path: Path, names: list[str], threads: int = 2) -> Iterator[Pollers]:
    """credential-process, a new process per request."""
    with _polling(Pollers(lambda name: _credential_process(socket_path, name), names),
                  threads) as pollers:
        yield pollers


@contextmanager
def _polling(pollers: Pollers, threads: int) -> Iterator[Pollers]:
    pollers.start(threads)
    try:
        h.wait_for(lambda: len(pollers.answers) > 10, what="the first answers")
        yield pollers
    finally:
        pollers.stop()


def _connections(material: h.Pki, url: str, count: int) -> list[dict[str, Any]]:
    return [h.connection(f"c{i:02d}", material, url) for i in range(count)]


def _wait_exit(process: h.Process, timeout: float = 30.0) -> int:
    return process.proc.wait(timeout)


def _start(tmp: Path, config: dict[str, Any], log: str, **kwargs: Any) -> h.Process:
    path = tmp / "config.toml"
    path.write_text(h.to_toml(config))
    return h.start(["run", "--config", str(path)], tmp / log, **kwargs)


def _events(process: h.Process) -> list[dict[str, Any]]:
    return h.Daemon(process, Path()).events()


def test_a_restart_answers_from_the_cache_from_the_first_request(tmp_path: Path) -> None:
    """kill -9, then a restart: every answer is 200 with the cached set, no 503 ever."""
    material = h.make_pki(tmp_path / "pki")
    with h.emulator(tmp_path, [material.ca_file]) as emu:
        conns = _connections(material, emu.url, 30)
        port = h.free_port()
        config = h.daemon_config(tmp_path, conns, imds=[],
                                 extra={"container": {"listen": f"127.0.0.1:{port}"}})
        first = _start(tmp_path, config, "first.log")
        try:
            h.wait_for(lambda: _readyz(first), timeout=60, what="the first daemon to be ready")
            tokens = {c["name"]: _token(tmp_path, c["name"]) for c in conns}
            calls = emu.stats()["calls"]
            with polling(port, tokens) as pollers:
                first.stop(signal.SIGKILL)
                emu.faults(fail_status=503, fail_count=-1)  # only the cache can serve now
                second = _start(tmp_path, config, "second.log")
                try:
                    h.wait_for(lambda: _listening(second), timeout=60, what="the restart")
                    served_after = len(pollers.answers)
                    h.wait_for(lambda: len(pollers.answers) > served_after + 60,
                               what="answers after the restart")
                finally:
                    second.stop()
            # Refused connections while no process listened are not answers; every answer
            # given was a set, and the restart asked the upstream nothing.
            bad = [a for a in pollers.failures() if a[2] != -1]
            assert not bad, bad[:5]
            assert emu.stats()["calls"] == calls
            restored = [e for e in _events(second)
                        if e.get("event") == "credentials restored from cache"]
            assert len(restored) == len(conns)
            listening = min(i for i, e in enumerate(_events(second))
                            if e.get("event") == "listening")
            last_restore = max(i for i, e in enumerate(_events(second))
                               if e.get("event") == "credentials restored from cache")
            assert last_restore < listening, "a door opened before the cache was restored"
        finally:
            first.stop()


def _readyz(process: h.Process) -> bool:
    doors = {e["door"]: e["address"] for e in _events(process) if e.get("event") == "listening"}
    if "health" not in doors:
        return False
    return h.http("GET", doors["health"] + "readyz")[0] == 200


def _listening(process: h.Process) -> bool:
    return any(e.get("event") == "listening" for e in _events(process))


def test_an_imds_token_outlives_a_restart(tmp_path: Path) -> None:
    material = h.make_pki(tmp_path / "pki")
    with h.emulator(tmp_path, [material.ca_file]) as emu:
        conn = h.connection("app", material, emu.url)
        port = h.free_port()
        imds = [{"listen": f"127.0.0.1:{port}", "connection": "app"}]
        base = f"http://127.0.0.1:{port}/"
        with h.daemon(tmp_path, [conn], imds=imds, log_name="first.log"):
            code, _, token = h.http("PUT", base + "latest/api/token", IMDS_TTL)
            assert code == 200
        with h.daemon(tmp_path, [conn], imds=imds, log_name="second.log"):
            held = {"X-aws-ec2-metadata-token": token.decode()}
            code, _, role = h.http("GET", base + CREDS, held)
            assert code == 200, "a token from before the restart must still work (Go SDK v1)"
            code, _, _ = h.http("GET", base + CREDS + role.decode(), held)
            assert code == 200
            forged = {"X-aws-ec2-metadata-token": token.decode()[:-4] + "AAAA"}
            assert h.http("GET", base + CREDS, forged)[0] == 401


def _status(d: h.Daemon) -> dict[str, Any]:
    import json

    code, _, body = h.http("GET", d.url("health") + "status")
    assert code == 200
    return {row["name"]: row for row in json.loads(body)["connections"]}


def _readyz_body(d: h.Daemon) -> tuple[int, dict[str, Any]]:
    import json

    code, _, body = h.http("GET", d.url("health") + "readyz")
    return code, json.loads(body)


def _reload(d: h.Daemon, config: dict[str, Any], count: int) -> None:
    d.config_path.write_text(h.to_toml(config))
    d.process.proc.send_signal(signal.SIGHUP)
    h.wait_for(lambda: sum(e.get("event") in ("reloaded", "reload refused: the new config is "
                                                "invalid; still serving the old one")
                           for e in d.events()) >= count, what=f"reload {count}")


def test_reloads_keep_serving_and_swap_only_when_the_new_settings_have_a_set(
    tmp_path: Path,
) -> None:
    material = h.make_pki(tmp_path / "pki")
    with h.emulator(tmp_path, [material.ca_file]) as emu:
        conns = [h.connection("app", material, emu.url), h.connection("other", material, emu.url)]
        port = h.free_port()
        extra = {"container": {"listen": f"127.0.0.1:{port}"}}
        with h.daemon(tmp_path, conns, imds=[], extra=extra) as d:
            tokens = {c["name"]: _token(tmp_path, c["name"]) for c in conns}
            first = _status(d)["app"]["access_key_id"]
            calls = emu.stats()["calls"]
            with polling(port, tokens) as pollers:
                # 1. Notes and who may fetch: nothing about credentials changes.
                conns[0]["notes"] = "moved to rack 7"
                conns[0]["allowed_uids"] = [0]
                _reload(d, h.daemon_config(tmp_path, conns, imds=[], extra=extra), 1)
                assert emu.stats()["calls"] == calls, "a notes change asked the upstream"
                assert _status(d)["app"]["access_key_id"] == first
                # 2. How credentials are obtained changes while the upstream is down: the old
                # set keeps being served, and readiness says why the new one is pending.
                emu.faults(fail_status=503, fail_count=-1)
                conns[0]["duration_seconds"] = 1800
                _reload(d, h.daemon_config(tmp_path, conns, imds=[], extra=extra), 2)
                h.wait_for(lambda: emu.stats()["failed"] >= 1, what="the new source's attempt")
                row = _status(d)["app"]
                assert row["state"] == "reload pending"
                assert row["access_key_id"] == first
                assert "duration_seconds" in row["reload_pending"]
                assert "503" in row["reload_pending"]
                code, body = _readyz_body(d)
                assert code == 200 and "app" in body["reload_pending"]
                # 3. The upstream is back: the new settings get their set, and it is served.
                emu.faults(fail_status=0, fail_count=0)
                h.wait_for(lambda: _status(d)["app"]["access_key_id"] != first, timeout=60,
                           what="the new set")
                assert _status(d)["app"]["reload_pending"] is None
                assert "reload_pending" not in _readyz_body(d)[1]
                seen = len(pollers.answers)
                h.wait_for(lambda: len(pollers.answers) > seen + 20, what="more answers")
        assert not pollers.failures(), pollers.failures()[:5]


NESTED = "x = " + "[" * 600 + "]" * 600 + "\n"


@pytest.mark.parametrize("breakage", ["nul-path", "nested", "readable-key"])
def test_a_reload_that_check_config_refuses_never_kills(tmp_path: Path, breakage: str) -> None:
    material = h.make_pki(tmp_path / "pki")
    with h.emulator(tmp_path, [material.ca_file]) as emu:
        conn = h.connection("app", material, emu.url)
        with h.daemon(tmp_path, [conn]) as d:
            before = h.imds_read(d.url("imds:app"))[1]["AccessKeyId"]
            good = d.config_path.read_text()
            bad = tmp_path / "bad.toml"
            if breakage == "nul-path":
                text = good.replace(str(material.key), str(material.key) + "\\u0000x")
            elif breakage == "nested":
                text = good + NESTED
            else:
                exposed = tmp_path / "exposed.key"
                exposed.write_bytes(material.key.read_bytes())
                exposed.chmod(0o644)
                text = good.replace(str(material.key), str(exposed))
            assert text != good
            bad.write_text(text)
            checked = h.run_cli(["check-config", "--config", str(bad)])
            assert checked.returncode == 2, checked.stdout + checked.stderr
            assert "Traceback" not in checked.stderr
            if breakage == "readable-key":
                assert "0644" in checked.stderr and "chmod 600" in checked.stderr
            d.config_path.write_text(text)
            d.process.proc.send_signal(signal.SIGHUP)
            h.wait_for(lambda: any(e.get("event", "").startswith("reload refused")
                                   for e in d.events()), what="the refusal")
            assert d.process.proc.poll() is None, "the daemon died on a bad reload"
            assert h.imds_read(d.url("imds:app"))[1]["AccessKeyId"] == before


def test_sigterm_is_bounded_even_with_a_half_sent_request(tmp_path: Path) -> None:
    """aiohttp waited 60 s for such a request; the unit gives 20 s before SIGKILL."""
    material = h.make_pki(tmp_path / "pki")
    with h.emulator(tmp_path, [material.ca_file]) as emu:
        conn = h.connection("app", material, emu.url)
        with h.daemon(tmp_path, [conn]) as d:
            url = d.url("imds:app")
            host, port = url.split("//")[1].rstrip("/").rsplit(":", 1)
            with socket.create_connection((host, int(port)), timeout=5) as half:
                half.sendall(b"GET /latest/meta-data/ HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                idle = socket.create_connection((host, int(port)), timeout=5)
                started = time.monotonic()
                d.process.proc.send_signal(signal.SIGTERM)
                code = _wait_exit(d.process, timeout=60)
                took = time.monotonic() - started
                idle.close()
            assert code == 0
            assert took < 15, f"stop took {took:.1f} s (systemd's TimeoutStopSec is 20 s)"


@contextmanager
def _short_dir() -> Iterator[Path]:
    """For a control socket: a Unix socket's path must fit in 108 bytes, tmp_path's may not."""
    with tempfile.TemporaryDirectory(prefix="cs-") as name:
        yield Path(name)


def _held_unix(path: Path) -> socket.socket:
    """A listening control socket as systemd makes it (SocketMode=0660)."""
    held = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    held.bind(str(path))
    path.chmod(0o660)
    held.listen(128)
    return held


def test_socket_activated_restarts_never_answer_an_error(tmp_path: Path) -> None:
    """The test holds the listening sockets as systemd's .socket unit does (the container door
    by name, the control socket by its path, as the shipped unit's); the daemon is stopped and
    started again and again while clients poll both: every answer is a set, and no connection is
    ever reset or closed unanswered (the old process stops accepting before it closes anything,
    and answers every connection it accepted; the rest wait in the queue)."""
    material = h.make_pki(tmp_path / "pki")
    with h.emulator(tmp_path, [material.ca_file]) as emu, _short_dir() as run_dir:
        conns = _connections(material, emu.url, 8)
        held = socket.socket()
        held.bind(("127.0.0.1", 0))
        held.listen(128)
        port = held.getsockname()[1]
        control = run_dir / "control.sock"
        held_control = _held_unix(control)
        sockets = [("container", held), ("credential-sidecar.socket", held_control)]
        config = h.daemon_config(tmp_path, conns, imds=[],
                                 extra={"container": {"listen": f"127.0.0.1:{port}"},
                                        "control": {"socket": str(control)}})
        try:
            process = _start(tmp_path, config, "run-0.log", sockets=sockets)
            h.wait_for(lambda: _readyz(process), timeout=60, what="the first start")
            activated = {e["door"] for e in _events(process)
                         if e.get("event") == "listening" and e["activated"]}
            assert activated == {"container", "control"}, activated
            tokens = {c["name"]: _token(tmp_path, c["name"]) for c in conns}
            with polling(port, tokens, threads=4) as pollers, \
                    polling_process(control, sorted(tokens)) as processes:
                for run in range(1, 9):
                    process.proc.send_signal(signal.SIGTERM)
                    assert _wait_exit(process) == 0
                    process = _start(tmp_path, config, f"run-{run}.log", sockets=sockets)
                    h.wait_for(lambda p=process: _readyz(p), timeout=60, what=f"restart {run}")
                    seen, ran = len(pollers.answers), len(processes.answers)
                    h.wait_for(lambda s=seen, r=ran: len(pollers.answers) > s + 10
                               and len(processes.answers) > r + 4,
                               what="answers after the restart")
        finally:
            process.stop()
            held.close()
            held_control.close()
        assert control.is_socket(), "the daemon removed systemd's socket file"
        assert len(pollers.answers) > 100 and len(processes.answers) > 30
        resets = [a for a in pollers.failures() if a[2] == -1]
        print(f"connection resets during 8 restarts: {len(resets)} of {len(pollers.answers)};"
              f" credential-process runs: {len(processes.answers)}")
        assert not pollers.failures(), pollers.failures()[:5]
        assert not processes.failures(), processes.failures()[:5]


def test_credential_process_never_fails_through_restarts_without_activation(
    tmp_path: Path,
) -> None:
    """No socket held for the daemon: each stop removes its socket file first and answers every
    connection it had taken; credential-process waits out the moment with no socket (ENOENT)
    until the next process binds. Six SIGTERM restarts under polling runs: not one failed.
    Then kill -9 restarts: the file a killed daemon leaves refuses (ECONNREFUSED) and is waited
    out too; only a run whose request was in flight at the kill may fail, as it must."""
    material = h.make_pki(tmp_path / "pki")
    with h.emulator(tmp_path, [material.ca_file]) as emu, _short_dir() as run_dir:
        conns = _connections(material, emu.url, 2)
        control = run_dir / "control.sock"
        config = h.daemon_config(tmp_path, conns, imds=[],
                                 extra={"control": {"socket": str(control)}})
        process = _start(tmp_path, config, "run-0.log")
        try:
            h.wait_for(lambda: _readyz(process), timeout=60, what="the first start")
            with polling_process(control, [c["name"] for c in conns]) as processes:
                kills_from = 0
                for run in range(1, 9):
                    if run > 6:
                        kills_from = kills_from or len(processes.answers)
                        process.proc.kill()
                        assert _wait_exit(process) == -signal.SIGKILL
                        assert control.is_socket(), "a killed daemon leaves its socket file"
                    else:
                        process.proc.send_signal(signal.SIGTERM)
                        assert _wait_exit(process) == 0
                    process = _start(tmp_path, config, f"run-{run}.log")
                    h.wait_for(lambda p=process: _readyz(p), timeout=60, what=f"restart {run}")
                    ran = len(processes.answers)
                    h.wait_for(lambda r=ran: len(processes.answers) > r + 4,
                               what="runs after the restart")
        finally:
            process.stop()
        stopped = processes.answers[:kills_from]
        assert len(stopped) > 30
        assert not [a for a in stopped if a[2] != 200], stopped[:5]
        in_flight = ("hung up without an answer", "Connection reset by peer")
        after_kills = [a for a in processes.answers[kills_from:] if a[2] != 200]
        assert all(any(why in a[3] for why in in_flight) for a in after_kills), after_kills[:5]
        print(f"credential-process runs: {len(processes.answers)}; in flight at 2 kill -9:"
              f" {len(after_kills)}")
