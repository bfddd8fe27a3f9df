"""A uniquely named network namespace with only loopback (and the IMDS addresses on it).

    with NetNS(imds_v4=True, imds_v6=True) as ns:
        ns.run(["s3cmd", "ls"])              # a command inside the namespace
        with ns.started("moto", [...], log)  # a server inside it, always stopped
        ns.call(lambda: http("GET", "http://169.254.169.254/..."))  # Python code inside it

The namespace has no route out: its only interface is `lo`, so a client inside it reaches the
servers started inside it and nothing else. Exit kills every process we started in it (each by
its pid) and deletes the namespace, on success and on failure alike.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import subprocess
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from tests.helpers import procs

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
IMDS_V4 = "169.254.169.254"
IMDS_V6 = "fd00:ec2::254"
NETNS_DIR = Path("/run/netns")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


class NetNS:
    def __init__(self, *, imds_v4: bool = True, imds_v6: bool = False,
                 prefix: str = "csc") -> None:
        self.name = f"{prefix}-{os.getpid()}-{secrets.token_hex(3)}"
        self.imds_v4 = imds_v4
        self.imds_v6 = imds_v6
        self._procs: list[procs.Proc] = []
        self._created = False

    # --- lifecycle ------------------------------------------------------------------------------

    def __enter__(self) -> NetNS:
        _ip("netns", "add", self.name)
        self._created = True
        try:
            _ip("-n", self.name, "link", "set", "lo", "up")
            if self.imds_v4:
                _ip("-n", self.name, "addr", "add", f"{IMDS_V4}/32", "dev", "lo")
            if self.imds_v6:
                _ip("-n", self.name, "addr", "add", f"{IMDS_V6}/128", "dev", "lo", "nodad")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        for proc in reversed(self._procs):
            proc.stop()
        self._procs.clear()
        if self._created:
            subprocess.run(["ip", "netns", "delete", self.name], check=False,
                           capture_output=True, timeout=30)
            self._created = False

    # --- inside the namespace -------------------------------------------------------------------

    def wrap(self, args: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *args]

    def run(self, args: Sequence[str], *, env: Mapping[str, str] | None = None,
            timeout: float = 120.0, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.wrap(args), capture_output=True, text=True, timeout=timeout,
                              env=dict(env) if env is not None else None, cwd=cwd, check=False)

    @contextlib.contextmanager
    def started(self, name: str, args: Sequence[str], log_path: Path,
                env: Mapping[str, str] | None = None) -> Iterator[procs.Proc]:
        # `ip netns exec` execs the command: the pid is the server's own.
        with procs.started(name, self.wrap(args), log_path, env) as proc:
            self._procs.append(proc)
            try:
                yield proc
            finally:
                proc.stop()
                if proc in self._procs:
                    self._procs.remove(proc)

    def pids(self) -> list[int]:
        out = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True, text=True,
                             check=False, timeout=30)
        return [int(p) for p in out.stdout.split()]

    def call(self, fn: Callable[[], T], timeout: float = 60.0) -> T:
        """Run `fn` in a thread that joined this namespace; its sockets are created inside it.

        setns(CLONE_NEWNET) moves only the calling thread, and the thread ends afterwards.
        """
        result: list[T] = []
        error: list[BaseException] = []

        def target() -> None:
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                fd = os.open(NETNS_DIR / self.name, os.O_RDONLY)
                try:
                    if libc.setns(fd, CLONE_NEWNET) != 0:
                        err = ctypes.get_errno()
                        raise OSError(err, f"setns({self.name}): {os.strerror(err)}")
                finally:
                    os.close(fd)
                result.append(fn())
            except BaseException as exc:
                error.append(exc)

        thread = threading.Thread(target=target, name=f"netns-{self.name}", daemon=True)
        thread.start()
        thread.join(timeout)
        if thread.is_alive():
            raise AssertionError(f"call inside {self.name} still running after {timeout}s")
        if error:
            raise error[0]
        return result[0]


def reap_stale(prefix: str = "csc") -> list[str]:
    """Delete namespaces an earlier, killed test run of ours left: named PREFIX-PID-* where PID
    is no longer alive. Processes still inside them were started by that run; each is killed by
    its pid. Returns the names deleted."""
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                             check=False, timeout=30).stdout
    reaped: list[str] = []
    for line in listing.splitlines():
        name = line.split()[0] if line.split() else ""
        parts = name.split("-")
        if len(parts) != 3 or parts[0] != prefix or not parts[1].isdigit():
            continue
        if Path(f"/proc/{parts[1]}").exists():
            continue  # its run is still going
        pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True,
                              check=False, timeout=30).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), 9)
        subprocess.run(["ip", "netns", "delete", name], check=False, capture_output=True,
                       timeout=30)
        reaped.append(name)
    return reaped
