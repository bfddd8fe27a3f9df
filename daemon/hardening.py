"""The daemon's process keeps its secrets to itself: no core dump, no ptrace by its own user.

A core file (or ``gcore``) holds every key and token in memory. ``PR_SET_DUMPABLE`` 0 stops the
kernel writing cores and stops processes of the same uid from attaching (ptrace) or reading
``/proc/<pid>/mem``; its /proc files become root's. ``RLIMIT_CORE`` 0 as well, belt and braces.
Under the systemd unit ``setrlimit`` is filtered (``SystemCallFilter=~@resources``): the unit's
``LimitCORE=0`` has set it already, which is what counts.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import resource

PR_SET_DUMPABLE = 4
PR_GET_DUMPABLE = 3


def _prctl() -> ctypes._NamedFuncPointer:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    func = libc.prctl
    func.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                     ctypes.c_ulong]
    func.restype = ctypes.c_int
    return func


def dumpable() -> int:
    """PR_GET_DUMPABLE of this process."""
    return int(_prctl()(PR_GET_DUMPABLE, 0, 0, 0, 0))


def harden() -> dict[str, object]:
    """Make this process non-dumpable with no core limit; returns what holds (for the log)."""
    prctl = _prctl()
    if prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed")
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (OSError, ValueError):
        pass  # filtered under the unit, whose LimitCORE=0 applies: reported below
    soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
    return {"dumpable": dumpable(), "core_limit": [soft, hard]}


__all__ = ["dumpable", "harden"]
