"""``state_dir/daemon.pid``: how commands such as rotate-keys find the running daemon to reload.

systemd knows the main PID, but rotate-keys also runs on hosts without systemd and in tests, and
must not signal a stranger: a PID is only trusted while ``/proc/PID/cmdline`` still shows a
credential-sidecar ``run`` (PIDs are recycled after a crash leaves a stale file behind).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from credential_sidecar.files import atomic_write

FILE_NAME = "daemon.pid"


def pid_path(state_dir: Path) -> Path:
    return Path(state_dir) / FILE_NAME


def write(state_dir: Path) -> Path | None:
    """Record this process; None (and no error) when state_dir cannot be written."""
    path = pid_path(state_dir)
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write(path, f"{os.getpid()}\n".encode("ascii"), mode=0o644)
    except OSError:
        return None
    return path


def remove(path: Path | None) -> None:
    """Remove our own pid file, never another daemon's that replaced it meanwhile."""
    if path is None:
        return
    with contextlib.suppress(OSError, ValueError):
        if int(path.read_text().strip()) == os.getpid():
            path.unlink()


def is_daemon(pid: int) -> bool:
    """True when pid is alive and runs ``credential-sidecar run``
    (or ``python -m credential_sidecar run``)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    words = [os.path.basename(a.decode(errors="replace")) for a in argv if a]
    if "run" not in words:
        return False
    return "credential-sidecar" in words or ("-m" in words and "credential_sidecar" in words)


def find(state_dir: Path) -> int | None:
    """The running daemon's PID from state_dir, or None when none is running there."""
    try:
        pid = int(pid_path(state_dir).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid > 0 and is_daemon(pid) else None


__all__ = ["find", "is_daemon", "pid_path", "remove", "write"]
