"""The two things systemd hands a service: a notification socket and listening sockets.

Both are small, stable, documented protocols (sd_notify(3), sd_listen_fds(3)), implemented here
directly rather than through a library: ``sdnotify`` has not been released since 2017 and covers
only notification, while ``systemd-python`` and ``cysystemd`` need libsystemd and a compiler on
every host for what is one ``sendto()`` and a few environment variables.

- Notification: ``$NOTIFY_SOCKET`` names an AF_UNIX datagram socket (a path, or ``@name`` in the
  abstract namespace); each message is one datagram of ``KEY=VALUE`` lines.
- Watchdog: ``$WATCHDOG_USEC`` (and ``$WATCHDOG_PID``, when set, must be ours) asks for
  ``WATCHDOG=1`` more often than that interval.
- Socket activation: ``$LISTEN_PID`` must be ours; ``$LISTEN_FDS`` sockets start at fd 3, named by
  ``$LISTEN_FDNAMES`` (``FileDescriptorName=`` in the socket unit).

Every variable is removed from the environment once read, so that no child process mistakes
itself for the service.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import time
from collections.abc import MutableMapping

from credential_sidecar.logs import get_logger

log = get_logger()

SD_LISTEN_FDS_START = 3
STATUS_MAX = 200  # systemctl shows one line; keep it readable


def _socket_address(value: str) -> str | bytes | None:
    """``/path`` or ``@abstract``; anything else is not a socket systemd would give us."""
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    return None


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= STATUS_MAX else line[: STATUS_MAX - 1] + "…"


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds: the clock systemd compares RELOADING=1 against."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Notifier:
    """sd_notify(3) for one process; every method is a no-op when systemd did not ask."""

    def __init__(self, address: str | bytes | None, watchdog_usec: int | None = None) -> None:
        self.address = address
        self.watchdog_usec = watchdog_usec
        self._sock: socket.socket | None = None
        self._warned = False

    @classmethod
    def from_env(cls, env: MutableMapping[str, str] | None = None) -> Notifier:
        env = os.environ if env is None else env
        raw = env.pop("NOTIFY_SOCKET", "")
        address = _socket_address(raw) if raw else None
        if raw and address is None:
            log.warning("NOTIFY_SOCKET is not a socket path or @name; not notifying", value=raw)
        return cls(address, watchdog_interval(env))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **fields: str | int) -> bool:
        """One datagram; never blocks and never raises (the service outlives a lost notice)."""
        if self.address is None:
            return False
        message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(message, self.address)
        except OSError as exc:
            if not self._warned:  # once: a gone manager would otherwise fill the log
                log.warning("cannot notify systemd", error=str(exc))
                self._warned = True
            return False
        self._warned = False
        return True

    def ready(self, status: str | None = None) -> bool:
        fields: dict[str, str | int] = {"READY": 1}
        if status:
            fields["STATUS"] = _one_line(status)
        return self.send(**fields)

    def status(self, text: str) -> bool:
        return self.send(STATUS=_one_line(text))

    def reloading(self, status: str | None = None) -> bool:
        """RELOADING=1 with MONOTONIC_USEC (required by Type=notify-reload, systemd 253+)."""
        fields: dict[str, str | int] = {"RELOADING": 1, "MONOTONIC_USEC": monotonic_usec()}
        if status:
            fields["STATUS"] = _one_line(status)
        return self.send(**fields)

    def stopping(self, status: str | None = None) -> bool:
        fields: dict[str, str | int] = {"STOPPING": 1}
        if status:
            fields["STATUS"] = _one_line(status)
        return self.send(**fields)

    def watchdog(self) -> bool:
        return self.send(WATCHDOG=1)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval(env: MutableMapping[str, str] | None = None) -> int | None:
    """The watchdog interval in microseconds when systemd watches this very process, else None."""
    env = os.environ if env is None else env
    usec, pid = env.pop("WATCHDOG_USEC", ""), env.pop("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value if value > 0 else None


def listen_fds(env: MutableMapping[str, str] | None = None) -> list[tuple[str, socket.socket]]:
    """The sockets systemd passed us, as (name, socket), in fd order.

    Names come from ``$LISTEN_FDNAMES``; systemd names an unnamed fd after its socket unit, and
    ``"unknown"`` stands in when no names were passed at all (as sd_listen_fds_with_names does).
    A passed fd that is not a socket is closed and logged.
    """
    env = os.environ if env is None else env
    pid, count = env.pop("LISTEN_PID", ""), env.pop("LISTEN_FDS", "")
    names = env.pop("LISTEN_FDNAMES", "")
    if not pid or not count:
        return []
    if pid != str(os.getpid()):
        log.info("ignoring LISTEN_FDS meant for another process", listen_pid=pid)
        return []
    try:
        n = int(count)
    except ValueError:
        log.warning("LISTEN_FDS is not a number; ignoring it", value=count)
        return []
    labels = names.split(":") if names else []
    if labels and len(labels) != n:
        log.warning("LISTEN_FDNAMES does not name every fd; ignoring the names",
                    listen_fds=n, names=len(labels))
        labels = []
    out: list[tuple[str, socket.socket]] = []
    for i in range(n):
        fd = SD_LISTEN_FDS_START + i
        name = labels[i] if labels else "unknown"
        try:
            mode = os.fstat(fd).st_mode
        except OSError:
            log.warning("passed fd is not open", fd=fd, name=name)
            continue
        if not stat.S_ISSOCK(mode):
            log.warning("passed fd is not a socket; closing it", fd=fd, name=name)
            with contextlib.suppress(OSError):
                os.close(fd)
            continue
        os.set_inheritable(fd, False)  # ours now: children must not hold the port open
        out.append((name, socket.socket(fileno=fd)))
    return out
