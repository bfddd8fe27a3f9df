"""Real other Unix users for tests: throwaway accounts, and code run as them with setpriv.

The snippets run under the system's python3 (standard library only), so they need nothing from
the venv, which another user may not be able to read.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import secrets
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

PYTHON = "/usr/bin/python3"


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    groups: tuple[int, ...] = ()


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("acting as other users needs root (CI runs as root)")


@contextmanager
def throwaway_user(*, groups: tuple[str, ...] = ()) -> Iterator[User]:
    """A system user that exists for the test only (``userdel`` after, whatever happens)."""
    need_root()
    name = f"csx-peer-{secrets.token_hex(4)}"
    command = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin"]
    if groups:
        command += ["--groups", ",".join(groups)]
    subprocess.run([*command, name], check=True, capture_output=True)
    try:
        entry = pwd.getpwnam(name)
        gids = tuple(os.getgrouplist(name, entry.pw_gid))
        yield User(name, entry.pw_uid, entry.pw_gid, gids)
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)


@contextmanager
def throwaway_group() -> Iterator[tuple[str, int]]:
    need_root()
    name = f"csx-grp-{secrets.token_hex(4)}"
    subprocess.run(["groupadd", "--system", name], check=True, capture_output=True)
    try:
        yield name, grp.getgrnam(name).gr_gid
    finally:
        subprocess.run(["groupdel", name], check=False, capture_output=True)


def as_user(user: User, code: str, *args: str, timeout: float = 60,
            stdin: str | None = None, keep_groups: bool = False,
            ) -> subprocess.CompletedProcess[str]:
    """Run ``code`` under python3 as ``user`` (its uid, its primary gid, no other groups unless
    ``keep_groups``)."""
    groups = (["--groups", ",".join(map(str, user.groups))] if keep_groups and user.groups
              else ["--clear-groups"])
    return subprocess.run(
        ["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", *groups, PYTHON, "-c", code,
         *args],
        capture_output=True, text=True, timeout=timeout, input=stdin, cwd="/",
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
    )


def popen_as(user: User, code: str, *args: str) -> subprocess.Popen[str]:
    """Like as_user, but running: talk to it over stdin/stdout."""
    return subprocess.Popen(
        ["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--clear-groups", PYTHON,
         "-c", code, *args],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd="/", env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
    )


NOBODY = User("nobody", 65534, 65534)

# Fetches a URL with urllib; prints "status body" (the body JSON-quoted). argv: url [header=value]
FETCH = """
import json, sys, urllib.request, urllib.error
url, *pairs = sys.argv[1:]
headers = dict(p.split("=", 1) for p in pairs)
method = headers.pop("method", "GET")
request = urllib.request.Request(url, method=method, headers=headers)
try:
    with urllib.request.urlopen(request, timeout=10) as r:
        print(r.status, json.dumps(r.read().decode()))
except urllib.error.HTTPError as e:
    print(e.code, json.dumps(e.read().decode()))
"""


def fetch_as(user: User, url: str, headers: dict[str, str] | None = None,
             method: str = "GET") -> tuple[int, str]:
    pairs = [f"{k}={v}" for k, v in (headers or {}).items()] + [f"method={method}"]
    out = as_user(user, FETCH, url, *pairs)
    assert out.returncode == 0, out.stderr
    status, body = out.stdout.split(" ", 1)
    return int(status), json.loads(body)
