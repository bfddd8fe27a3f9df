"""podman on this project's CI machines: rootful, no systemd as PID 1, hybrid cgroups.

What it takes (each found by trying, see :func:`engine`):
- no systemd/dbus: ``cgroup_manager = "cgroupfs"``, ``events_logger = "file"``; HEALTHCHECK
  timers cannot be scheduled ("unable to get systemd connection to add healthchecks"), so tests run
  ``podman healthcheck run`` themselves (with ``--health-interval=disable``);
- hybrid cgroups with a controller on the v2 side: crun 1.8 refuses ("cgroups in hybrid mode not
  supported, drop all controllers from cgroupv2"), runc works;
- root without CAP_SYS_RESOURCE: podman's default rlimits (nofile 1048576, nproc) cannot be set
  ("setrlimit RLIMIT_NOFILE: Operation not permitted"): default_ulimits within the hard limits.
"""

from __future__ import annotations

import hashlib
import re
import resource
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from tests.helpers import nspawn
from tests.helpers.readme import block

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "localhost/credential-sidecar:latest"  # what README's build tags
DEFAULT_BASE = "docker.io/library/python:3.11-slim-bookworm"  # the Containerfile's BASE


def engine() -> tuple[list[str], dict[str, str]]:
    """The podman command line and environment (CONTAINERS_CONF) for this host."""
    root = Path("/sys/fs/cgroup")
    hybrid_v2 = root / "unified" / "cgroup.controllers"
    runtime = "crun"
    if not (root / "cgroup.controllers").exists() and hybrid_v2.exists() \
            and hybrid_v2.read_text().strip():
        runtime = "runc"
    manager, events = ("systemd", "journald") if nspawn.host_has_systemd() else ("cgroupfs", "file")
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nofile = 1048576 if hard == resource.RLIM_INFINITY else hard
    conf = nspawn.CACHE / "containers.conf"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(
        "[containers]\n"
        f'default_ulimits = ["nofile={min(nofile, 65536)}:{nofile}", "nproc=4096:4096"]\n'
        "[engine]\n"
        f'runtime = "{runtime}"\ncgroup_manager = "{manager}"\nevents_logger = "{events}"\n'
    )
    env = {"CONTAINERS_CONF": str(conf), "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:"
           "/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}
    cmd = ["podman", "--runtime", runtime, "--cgroup-manager", manager, "--events-backend", events]
    return cmd, env


def podman(*args: str, check: bool = True, timeout: float = 600,
           input: str | None = None) -> subprocess.CompletedProcess[str]:
    cmd, env = engine()
    result = subprocess.run([*cmd, *args], capture_output=True, text=True, env=env,
                            timeout=timeout, input=input, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args[:3])} ... exited {result.returncode}:\n"
                             f"{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    return result


def base_image(tarball: Path) -> str:
    """The debootstrapped root as a local image (no registry needed)."""
    tag = "localhost/cs-test-base:" + tarball.name.removesuffix(".tar.zst").rsplit("-", 1)[-1]
    if podman("image", "exists", tag, check=False).returncode != 0:
        cmd, env = engine()
        with subprocess.Popen(["zstd", "-dc", str(tarball)], stdout=subprocess.PIPE) as unzip:
            result = subprocess.run(
                [*cmd, "import", "--change", 'CMD ["/bin/bash"]', "--change", "ENV LANG=C.UTF-8",
                 "-", tag], stdin=unzip.stdout, capture_output=True, text=True, env=env,
                timeout=600, check=False)
        assert result.returncode == 0, result.stderr
    return tag


def build_image(tarball: Path, wheels: Path) -> str:
    """README's "container-build" block, verbatim, in a clean copy of the source: wheels on
    the host (offline, from ``wheels`` through pip's environment), then the top-level
    Containerfile with --network=none. Its default BASE, a registry image, is the imported
    debootstrap root tagged with that name: nothing is pulled.

    Only old dangling images are pruned afterwards: the untagged stage-1 images are the cache."""
    podman("tag", base_image(tarball), DEFAULT_BASE)
    _, env = engine()
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        nspawn.source_copy(ROOT, src)
        (src / ".venv").symlink_to(ROOT / ".venv")  # README command 1 made it
        started = time.monotonic()
        result = subprocess.run(
            ["/bin/bash", "-euo", "pipefail", "-c", block("container-build")], cwd=src,
            env={**env, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheels),
                 "PIP_DISABLE_PIP_VERSION_CHECK": "1", "SOURCE_DATE_EPOCH": "315532800"},
            capture_output=True, text=True, timeout=900, check=False)
        if result.returncode != 0:
            raise AssertionError(f"README container-build failed:\n{result.stdout[-2000:]}\n"
                                 f"{result.stderr[-3000:]}")
        nspawn.log(f"image {IMAGE} built in {time.monotonic() - started:.1f}s")
    # Dangling images are this build's layer cache: keep a week of them, not every build's
    podman("image", "prune", "-f", "--filter", "until=168h", check=False)
    return IMAGE


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def healthy(container: str, timeout: float = 60) -> bool:
    """Run the image's HEALTHCHECK until it passes (podman cannot schedule it without systemd)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if podman("healthcheck", "run", container, check=False).returncode == 0:
            return True
        if podman("inspect", container, "--format", "{{.State.Running}}",
                  check=False).stdout.strip() != "true":
            return False
        time.sleep(0.2)
    return False


def sweep(prefix: str = "cs-pod-") -> None:
    """Remove pods (and their containers and volumes) left by killed test runs: their names end
    in the pid of a test process that is gone."""
    names = podman("pod", "ps", "--format", "{{.Name}}", check=False).stdout.split()
    names += podman("volume", "ls", "--format", "{{.Name}}", check=False).stdout.split()
    for name in names:
        match = re.fullmatch(re.escape(prefix) + r"(\d+)(-\w+)?", name)
        if match and not Path(f"/proc/{match.group(1)}").exists():
            pod = prefix + match.group(1)
            remove([pod], [], [f"{pod}-keys", f"{pod}-state"])


def remove(pods: Sequence[str] = (), containers: Sequence[str] = (),
           volumes: Sequence[str] = ()) -> None:
    for pod in pods:
        podman("pod", "rm", "-f", "-t", "5", pod, check=False)
    for container in containers:
        podman("rm", "-f", "-t", "5", container, check=False)
    for volume in volumes:
        podman("volume", "rm", "-f", volume, check=False)
