"""Throwaway system users and commands run as them (root only)."""

from __future__ import annotations

import os
import pwd
import secrets
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int

    def run(self, args: list[str], env: dict[str, str], timeout: float = 60,
            cwd: str = "/") -> subprocess.CompletedProcess[str]:
        """``args`` as this user (its own uid and gid, no supplementary groups)."""
        prefix = ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups", "--"]
        return subprocess.run(prefix + args, capture_output=True, text=True, env=env,
                              timeout=timeout, check=False, cwd=cwd)


@contextmanager
def throwaway_user(prefix: str = "cstest") -> Iterator[User]:
    if os.geteuid() != 0:
        raise AssertionError("this test needs root (useradd, chown): CI runs as root")
    name = f"{prefix}{secrets.token_hex(3)}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--user-group",
                    "--shell", "/usr/sbin/nologin", name], check=True, capture_output=True)
    try:
        entry = pwd.getpwnam(name)
        yield User(name, entry.pw_uid, entry.pw_gid)
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)
