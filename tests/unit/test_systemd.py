"""The systemd protocols: sd_notify datagrams, the watchdog interval, sd_listen_fds, and which
inherited socket each door takes."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from credential_sidecar.config.values import Address
from credential_sidecar.systemd import notify
from credential_sidecar.systemd.activation import SocketPool, fd_names
from credential_sidecar.systemd.notify import Notifier, listen_fds, watchdog_interval

ACTIVATE = Path(__file__).resolve().parent.parent / "helpers" / "activate.py"


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    sock.bind(path)
    sock.settimeout(5)
    yield path, sock
    sock.close()


def fields(datagram: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in datagram.decode().split("\n"))


# --- Notifier --------------------------------------------------------------------------------


def test_ready_and_status_travel_in_one_datagram(receiver: tuple[str, socket.socket]) -> None:
    path, sock = receiver
    env = {"NOTIFY_SOCKET": path}
    notifier = Notifier.from_env(env)
    assert env == {}, "read once, then unset, so that no child process notifies in our name"
    assert notifier.ready("1/1 connections ready")
    assert fields(sock.recv(4096)) == {"READY": "1", "STATUS": "1/1 connections ready"}
    notifier.close()


def test_every_message_kind(receiver: tuple[str, socket.socket]) -> None:
    path, sock = receiver
    notifier = Notifier.from_env({"NOTIFY_SOCKET": path})
    notifier.status("a\nstatus  over\tlines")
    assert fields(sock.recv(4096)) == {"STATUS": "a status over lines"}
    notifier.watchdog()
    assert fields(sock.recv(4096)) == {"WATCHDOG": "1"}
    notifier.stopping()
    assert fields(sock.recv(4096)) == {"STOPPING": "1"}
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.reloading("reloading")
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    got = fields(sock.recv(4096))
    assert got["RELOADING"] == "1" and got["STATUS"] == "reloading"
    assert before <= int(got["MONOTONIC_USEC"]) <= after
    notifier.close()


def test_status_is_kept_to_one_short_line(receiver: tuple[str, socket.socket]) -> None:
    path, sock = receiver
    notifier = Notifier.from_env({"NOTIFY_SOCKET": path})
    notifier.status("x" * 1000)
    status = fields(sock.recv(4096))["STATUS"]
    assert len(status) == notify.STATUS_MAX and status.endswith("…")
    notifier.close()


def test_abstract_namespace_socket() -> None:
    name = f"credential-sidecar-test-{secrets.token_hex(6)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5)
        notifier = Notifier.from_env({"NOTIFY_SOCKET": "@" + name})
        assert notifier.ready()
        assert fields(sock.recv(4096)) == {"READY": "1"}
        notifier.close()


def test_without_systemd_nothing_is_sent_and_nothing_fails() -> None:
    notifier = Notifier.from_env({})
    assert not notifier.enabled
    assert not notifier.ready("x") and not notifier.watchdog()
    bogus = Notifier.from_env({"NOTIFY_SOCKET": "relative/path"})
    assert not bogus.enabled


def test_a_vanished_manager_is_survived(tmp_path: Path) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert notifier.enabled
    assert notifier.ready() is False  # no socket there: reported, not raised
    assert notifier.watchdog() is False
    notifier.close()


# --- watchdog interval -------------------------------------------------------------------------


def test_watchdog_interval_is_ours_only() -> None:
    env = {"WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(os.getpid())}
    assert watchdog_interval(env) == 200000
    assert env == {}
    assert watchdog_interval({"WATCHDOG_USEC": "200000"}) == 200000
    assert watchdog_interval({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({}) is None


# --- listen_fds, in a child started the way systemd starts services ----------------------------

PROBE = """
import json, os, socket
from credential_sidecar.systemd.notify import listen_fds
got = listen_fds()
print(json.dumps({
    "sockets": [[name, s.fileno(), s.getsockname()[1], os.get_inheritable(s.fileno())]
                for name, s in got],
    "env": sorted(k for k in os.environ if k.startswith("LISTEN_")),
}))
"""


def _probe(sockets: list[socket.socket], names: list[str], env: dict[str, str] | None = None,
           via_launcher: bool = True) -> dict[str, object]:
    specs = [f"{s.fileno()}={n}" for s, n in zip(sockets, names, strict=True)]
    command = [sys.executable, "-c", PROBE]
    if via_launcher:
        command = [sys.executable, str(ACTIVATE), *specs, "--", *command]
    out = subprocess.run(command, pass_fds=[s.fileno() for s in sockets], capture_output=True,
                         env={**os.environ, **(env or {})}, check=True, timeout=60)
    return json.loads(out.stdout.splitlines()[-1])  # type: ignore[no-any-return]


def _listening(n: int) -> list[socket.socket]:
    out = []
    for _ in range(n):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        out.append(sock)
    return out


def test_listen_fds_returns_named_sockets_from_fd_3() -> None:
    sockets = _listening(2)
    try:
        got = _probe(sockets, ["imds", "health"])
        ports = [s.getsockname()[1] for s in sockets]
        assert got["sockets"] == [["imds", 3, ports[0], False], ["health", 4, ports[1], False]]
        assert got["env"] == [], "LISTEN_* are unset once read"
    finally:
        for sock in sockets:
            sock.close()


def test_unnamed_fds_are_called_unknown() -> None:
    sockets = _listening(1)
    try:
        got = _probe(sockets, [""])
        assert [entry[0] for entry in got["sockets"]] == ["unknown"]  # type: ignore[attr-defined]
    finally:
        sockets[0].close()


def test_fds_meant_for_another_process_are_left_alone() -> None:
    got = _probe([], [], env={"LISTEN_PID": "1", "LISTEN_FDS": "1"}, via_launcher=False)
    assert got["sockets"] == []
    assert got["env"] == []


def test_no_activation_no_sockets() -> None:
    assert listen_fds({}) == []


# --- SocketPool: which inherited socket each door takes -----------------------------------------


def test_fd_names_per_door() -> None:
    assert fd_names("imds:reports", sole_of_kind=True) == ("imds-reports", "imds")
    assert fd_names("imds:reports", sole_of_kind=False) == ("imds-reports",)
    assert fd_names("health", sole_of_kind=True) == ("health",)


def _addr(sock: socket.socket) -> Address:
    return Address("127.0.0.1", sock.getsockname()[1])


def test_names_win_then_addresses_then_nothing() -> None:
    by_name, by_address, stray = _listening(3)
    pool = SocketPool([("health", by_name), ("credential-sidecar.socket", by_address),
                       ("bogus", stray)])
    doors = {
        "health": Address("127.0.0.1", 0),
        "imds:reports": _addr(by_address),
        "imds:other": Address("127.0.0.1", 0),
    }
    pool.assign(doors)
    health = pool.socket_for("health", doors["health"])
    imds = pool.socket_for("imds:reports", doors["imds:reports"])
    assert health is not None and health.getsockname() == by_name.getsockname()
    assert imds is not None and imds.getsockname() == by_address.getsockname()
    assert pool.socket_for("imds:other", doors["imds:other"]) is None
    pool.release_unclaimed()
    assert stray.fileno() == -1, "a socket no door wants is closed"
    # Each door gets a duplicate: closing it (a listener stopped by a reload) keeps the port.
    health.close()
    again = pool.socket_for("health", doors["health"])
    assert again is not None and again.getsockname() == by_name.getsockname()
    for sock in (again, imds):
        sock.close()
    pool.close()
    assert by_name.fileno() == -1 and by_address.fileno() == -1


def test_an_address_never_steals_a_named_socket() -> None:
    (sock,) = _listening(1)
    pool = SocketPool([("health", sock)])
    # The IMDS door is configured at the socket's address, but the socket is named for health.
    pool.assign({"imds:reports": _addr(sock), "health": Address("127.0.0.1", 0)})
    assert pool.socket_for("imds:reports", _addr(sock)) is None
    dup = pool.socket_for("health", Address("127.0.0.1", 0))
    assert dup is not None
    dup.close()
    pool.close()


def test_a_door_moved_by_reload_binds_anew() -> None:
    (sock,) = _listening(1)
    pool = SocketPool([("x.socket", sock)])
    pool.assign({"health": _addr(sock)})
    assert pool.socket_for("health", Address("127.0.0.1", 1)) is None
    pool.close()


def test_the_control_socket_is_matched_by_name_or_by_its_path(tmp_path: Path) -> None:
    """One .socket unit lists the TCP ports and the control socket's path, all named alike:
    the path decides, as an address does for a TCP door."""
    unix = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(2)]
    paths = [tmp_path / "by-path.sock", tmp_path / "named.sock"]
    for sock, path in zip(unix, paths, strict=True):
        sock.bind(str(path))
        sock.listen()
    (tcp,) = _listening(1)
    pool = SocketPool([("credential-sidecar.socket", tcp), ("credential-sidecar.socket", unix[0])])
    pool.assign({"health": _addr(tcp), "control": paths[0]})
    control = pool.socket_for("control", paths[0])
    assert control is not None and control.getsockname() == str(paths[0])
    assert pool.socket_for("control", tmp_path / "moved.sock") is None, "a reload moved it"
    control.close()
    pool.close()
    pool = SocketPool([("control", unix[1])])
    pool.assign({"control": tmp_path / "elsewhere.sock"})
    named = pool.socket_for("control", tmp_path / "elsewhere.sock")
    assert named is not None and named.getsockname() == str(paths[1])
    named.close()
    pool.close()
