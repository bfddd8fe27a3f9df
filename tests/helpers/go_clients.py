"""Build the Go client programs (Debian's aws-sdk-go v1 / v2, GOPATH mode) and run them.

    binary = build("v2creds")          # cached by source hash
    result = run("v2creds", ["-provider", "imds"], env)   # parsed JSON

A binary is kept under CACHE_DIR (~/.cache/credential-sidecar-tests/go, or $CSC_GO_CACHE)
named by a hash of its sources (its own and the shared csclients/common), the Go version and
the Debian versions of the SDK packages, so a rebuild happens only when one of those changes.
Go's own build cache (GOCACHE) sits beside it and makes a rebuild after an edit take seconds.

    python -m tests.helpers.go_clients build [NAME...]   # prints name, path, seconds, cached
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.helpers import procs

GO_ROOT = procs.ROOT / "tests" / "go"
SRC = GO_ROOT / "src" / "csclients"
PROGRAMS = ("v1creds", "v2creds")
SHARED = ("common",)  # packages under SRC that every program imports (csclients/common)
DEBIAN_GOPATH = Path("/usr/share/gocode")
# Outside the work tree, so a fresh clone (CI) on the same machine reuses the binaries.
CACHE_DIR = Path(os.environ.get("CSC_GO_CACHE") or Path(
    os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "credential-sidecar-tests" / "go")
SDK_PACKAGES = ("golang-go", "golang-github-aws-aws-sdk-go-dev",
                "golang-github-aws-aws-sdk-go-v2-dev", "golang-github-aws-smithy-go-dev")


@dataclass(frozen=True)
class Built:
    name: str
    path: Path
    seconds: float
    cached: bool


@functools.lru_cache(maxsize=1)
def _toolchain_id() -> str:
    go = subprocess.run(["go", "version"], capture_output=True, text=True, check=True,
                        timeout=60).stdout.strip()
    versions = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package}=${Version}\\n", *SDK_PACKAGES],
        capture_output=True, text=True, check=False, timeout=60).stdout.strip()
    return f"{go}\n{versions}"


def source_hash(name: str) -> str:
    """A hash of the program's sources and of the shared packages it builds with."""
    digest = hashlib.sha256(_toolchain_id().encode())
    for path in sorted(p for part in (name, *SHARED) for p in (SRC / part).rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(SRC)).encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:20]


def go_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        GO111MODULE="off",
        GOPATH=f"{GO_ROOT}:{DEBIAN_GOPATH}",
        GOCACHE=str(CACHE_DIR / "gocache"),
        GOFLAGS="",
        CGO_ENABLED="0",
        GOTOOLCHAIN="local",
    )
    env.pop("GOROOT", None)
    return env


def build(name: str) -> Built:
    if name not in PROGRAMS:
        raise ValueError(f"unknown Go program {name!r}")
    out = CACHE_DIR / "bin" / f"{name}-{source_hash(name)}"
    if out.exists():
        return Built(name, out, 0.0, True)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    start = time.monotonic()
    result = subprocess.run(
        ["go", "build", "-trimpath", "-o", str(tmp), f"csclients/{name}"],
        capture_output=True, text=True, env=go_env(), cwd=GO_ROOT, timeout=900, check=False)
    seconds = time.monotonic() - start
    if result.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"go build {name} failed:\n{result.stderr}")
    tmp.replace(out)  # atomic: a concurrent builder gets a whole file or none
    return Built(name, out, seconds, False)


@dataclass
class Run:
    returncode: int
    result: dict[str, Any]
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and "error" not in self.result


def run(name: str, args: Sequence[str], env: Mapping[str, str], *, timeout: float = 60.0,
        wrap: Sequence[str] = ()) -> Run:
    """Run a Go client (optionally prefixed by `wrap`, e.g. `ip netns exec NS`)."""
    binary = build(name).path
    out = subprocess.run([*wrap, str(binary), *args], capture_output=True, text=True,
                         env=dict(env), timeout=timeout, check=False)
    lines = out.stdout.strip().splitlines()
    if not lines:
        raise AssertionError(f"{name} printed nothing ({out.returncode}):\n{out.stderr}")
    parsed = json.loads(lines[-1])
    if not isinstance(parsed, dict):
        raise AssertionError(f"{name} printed {lines[-1]!r}")
    return Run(out.returncode, parsed, out.stderr)


def main(argv: list[str]) -> int:
    if not argv or argv[0] != "build":
        print(__doc__)
        return 2
    for name in argv[1:] or PROGRAMS:
        built = build(name)
        state = "cached" if built.cached else "built"
        print(f"{name}\t{built.path}\t{built.seconds:.1f}s\t{state}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
