"""Real systemd 252 as PID 1: a cached Debian 12 root booted with systemd-nspawn.

Works on hosts WITHOUT systemd or dbus as PID 1 (this project's CI machines): no machined, so no
``machinectl`` and no ``systemd-run -M``; commands enter the guest with ``nsenter``.

- :func:`root_tarball` debootstraps a minimal bookworm root once (keyed by its package list) into
  ``$CS_TEST_CACHE`` (default ``/var/cache/credential-sidecar-test``);
- :func:`wheelhouse` builds the project wheel (from a copy of the tree: an in-tree ``pip wheel``
  leaves ``build/`` behind) and caches its dependency and build-backend wheels on the host, so
  the README's ``pip install .`` runs OFFLINE in the guest (``PIP_NO_INDEX``/``PIP_FIND_LINKS``);
- :func:`source_copy` copies the tree as a clone has it;
- :class:`Machine` mounts an overlayfs over the base, copies files in, boots it, runs commands,
  and always cleans up: overlay, cgroups, nspawn's leftovers, stray ``nsenter`` parents.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import TextIO

CACHE = Path(os.environ.get("CS_TEST_CACHE", "/var/cache/credential-sidecar-test"))
RUN_BASE = Path("/var/tmp/cs-nspawn")  # overlay upper/work must not be on the overlay's fs
SUITE = "bookworm"
FORMAT = "1"  # bump to invalidate cached roots
PACKAGES = {
    "full": ("systemd systemd-sysv dbus libpam-systemd python3 python3-venv iproute2 procps curl "
             "ca-certificates"),
}
VENV = "/opt/credential-sidecar"
GUEST_ENV = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8",
             "SYSTEMD_COLORS=0", "SYSTEMD_PAGER=", "TERM=dumb", "HOME=/root")
MASKED_UNITS = ("systemd-timesyncd.service", "apt-daily.timer", "apt-daily-upgrade.timer",
                "e2scrub_all.timer", "e2scrub_reap.service", "fstrim.timer",
                "dpkg-db-backup.timer")
PIP_NOISE = "is ignored: it is neither a file nor a directory"


def log(message: str) -> None:
    print(f"[nspawn {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def missing_tools() -> list[str]:
    tools = ("debootstrap", "systemd-nspawn", "nsenter", "zstd", "mount")
    return [tool for tool in tools if shutil.which(tool) is None]


def _run(cmd: Sequence[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(cmd), capture_output=True, text=True, check=False,
                            **kwargs)  # type: ignore[call-overload]
    if result.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} exited {result.returncode}:\n"
                           f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result  # type: ignore[no-any-return]


@contextlib.contextmanager
def locked(path: Path) -> Iterator[TextIO]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield handle


def apt_mirror() -> str:
    """The host's own Debian mirror for bookworm (deb822 or one-line sources)."""
    for source in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for stanza in source.read_text().split("\n\n"):
            fields = dict(
                line.split(":", 1) for line in stanza.splitlines()
                if ":" in line and not line.startswith("#")
            )
            uris = fields.get("URIs", "").split()
            suites = fields.get("Suites", "").split()
            if ("deb" in fields.get("Types", "").split() and SUITE in suites
                    and uris and uris[0].rstrip("/").endswith("/debian")):
                return uris[0]
    for path in [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*.list")]:
        if path.exists():
            match = re.search(rf"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+{SUITE}\s", path.read_text(), re.M)
            if match:
                return match.group(1)
    return "http://deb.debian.org/debian"


def root_tarball(flavour: str = "full") -> Path:
    """A debootstrapped bookworm root as a zstd tarball, built once per package list."""
    packages = PACKAGES[flavour].split()
    mirror = apt_mirror()
    # same key as the scratch build_root.sh, so both share one cache
    keyed = "".join(f"{x}\n" for x in (FORMAT, SUITE, "minbase", mirror, *packages))
    key = hashlib.sha256(keyed.encode()).hexdigest()[:16]
    tarball = CACHE / f"{SUITE}-{flavour}-{key}.tar.zst"
    with locked(CACHE / f"{tarball.name}.lock"):
        if tarball.exists():
            return tarball
        started = time.monotonic()
        (CACHE / "debs").mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=CACHE) as work:
            root = Path(work) / "root"
            _run(["debootstrap", "--variant=minbase", "--include=" + ",".join(packages),
                  f"--cache-dir={CACHE / 'debs'}", SUITE, str(root), mirror], timeout=1200)
            _trim_root(root)
            _run(["sh", "-c", "tar --numeric-owner --xattrs --xattrs-include='*' --acls -C "
                  f"{shlex.quote(str(root))} -cf - . | zstd -q -T0 -6 -o "
                  f"{shlex.quote(str(tarball))}.tmp"])
            os.replace(f"{tarball}.tmp", tarball)
        log(f"debootstrapped {tarball.name} in {time.monotonic() - started:.0f}s")
    return tarball


def _trim_root(root: Path) -> None:
    for pattern in ("var/lib/apt/lists/*", "var/cache/apt/*.bin", "usr/share/doc/*",
                    "usr/share/man/*", "usr/share/info/*"):
        for path in root.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    # A fixed machine id: an empty one would run first-boot units.
    (root / "etc/machine-id").write_text(hashlib.md5(b"cs-test").hexdigest() + "\n")
    (root / "etc/hostname").write_text("credsidecar-test\n")
    for unit in MASKED_UNITS:
        link = root / "etc/systemd/system" / unit
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")
    conf = root / "etc/systemd/journald.conf.d/test.conf"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text("[Journal]\nStorage=volatile\n")


def unpacked(tarball: Path) -> Path:
    """The tarball unpacked once (read-only lower layer of every machine)."""
    dest = CACHE / "unpacked" / tarball.name.removesuffix(".tar.zst")
    done = dest.with_name(dest.name + ".complete")
    with locked(dest.with_name(dest.name + ".lock")):
        if not done.exists():
            shutil.rmtree(dest, ignore_errors=True)
            dest.mkdir(parents=True)
            _run(["sh", "-c", f"zstd -dc {shlex.quote(str(tarball))} | tar --numeric-owner "
                  f"--xattrs --xattrs-include='*' --acls -C {shlex.quote(str(dest))} -xf -"])
            done.touch()
    return dest


def _pip(python: str, *args: str, timeout: float = 900) -> None:
    # SOURCE_DATE_EPOCH: the same source gives the same wheel bytes, so the layers and image
    # stages keyed by its content are reused
    env = {**os.environ, "SOURCE_DATE_EPOCH": "315532800"}
    result = subprocess.run([python, "-m", "pip", *args], capture_output=True, text=True,
                            timeout=timeout, check=False, env=env)
    if result.returncode != 0:
        noise = "\n".join(line for line in result.stderr.splitlines() if PIP_NOISE not in line)
        raise RuntimeError(f"pip {' '.join(args[:2])} failed:\n{result.stdout[-2000:]}\n{noise}")


def wheelhouse(src: Path) -> Path:
    """Dependency wheels (cached per dependency set) plus a fresh project wheel of ``src``.

    Built by this interpreter, which must be CPython 3.11 like bookworm's python3.
    """
    if sys.version_info[:2] != (3, 11):
        raise RuntimeError(f"wheels for bookworm need CPython 3.11, not {sys.version}")
    project = tomllib.loads((src / "pyproject.toml").read_text())
    # the build backend too: README's `pip install .` then builds offline from this house
    deps = sorted([*project["project"]["dependencies"], *project["build-system"]["requires"],
                   "wheel"])
    key = hashlib.sha256(("cp311\n" + "\n".join(deps) + "\n").encode()).hexdigest()[:16]
    house = CACHE / f"wheels-{key}"
    with locked(CACHE / f"wheels-{key}.lock"):
        house.mkdir(parents=True, exist_ok=True)
        if not (house / ".deps-complete").exists():
            with tempfile.NamedTemporaryFile("w", suffix=".txt") as reqs:
                reqs.write("\n".join(deps) + "\n")
                reqs.flush()
                _pip(sys.executable, "wheel", "-q", "--only-binary=:all:", "--find-links",
                     str(house), "-w", str(house), "-r", reqs.name)
            (house / ".deps-complete").touch()
        for old in house.glob("credential_sidecar-*.whl"):
            old.unlink()
        build_env = _build_env(project["build-system"]["requires"])
        with tempfile.TemporaryDirectory() as copy:
            source_copy(src, Path(copy))
            _pip(str(build_env / "bin/python"), "wheel", "-q", "--no-deps",
                 "--no-build-isolation", "--no-index", copy, "-w", str(house))
    return house


def source_copy(src: Path, dst: Path) -> None:
    """The source tree as a clone has it: no venv, build output, caches or node_modules."""
    ignore = shutil.ignore_patterns(".git", ".venv", "build", "dist", "wheels", "*.egg-info",
                                    "node_modules", "__pycache__", ".hypothesis", ".*_cache")
    shutil.copytree(src, dst, ignore=ignore, dirs_exist_ok=True, symlinks=True)


def _build_env(requires: list[str]) -> Path:
    """A cached venv holding the build backend, so the project wheel builds offline in ~2 s."""
    key = hashlib.sha256((" ".join(requires) + "\n").encode()).hexdigest()[:12]
    env = CACHE / f"buildenv-{key}"
    with locked(CACHE / f"buildenv-{key}.lock"):
        if not (env / ".complete").exists():
            shutil.rmtree(env, ignore_errors=True)
            _run([sys.executable, "-m", "venv", str(env)])
            _pip(str(env / "bin/python"), "install", "-q", *requires, "wheel")
            (env / ".complete").touch()
    return env


def host_has_systemd() -> bool:
    return Path("/run/systemd/system").is_dir() and Path("/proc/1/comm").read_text() == "systemd\n"


def cgroup_hierarchies() -> list[Path]:
    root = Path("/sys/fs/cgroup")
    if (root / "cgroup.controllers").exists():
        return [root]
    return [root / h for h in ("systemd", "unified") if (root / h / "cgroup.procs").exists()]


def _rmdir_tree(path: Path, timeout: float = 10) -> None:
    """Remove a cgroup tree once its processes are gone (killed ones take a moment to exit)."""
    if not path.is_dir():
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(
            procs.read_text().strip() for procs in path.rglob("cgroup.procs")):
        time.sleep(0.05)
    for sub in sorted((d for d in path.rglob("*") if d.is_dir()), key=lambda d: -len(d.parts)):
        with contextlib.suppress(OSError):
            sub.rmdir()
    with contextlib.suppress(OSError):
        path.rmdir()


def _is_mount(path: Path) -> bool:
    with open("/proc/self/mounts") as mounts:
        return any(line.split()[1] == str(path) for line in mounts)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError, IndexError):
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


class Machine:
    """One booted guest. ``layers``: overlay dirs, topmost first; ``copies``: (host, guest) paths
    placed before boot. ``unified``: cgroup v2 in the guest even on a hybrid host."""

    def __init__(self, name: str, tarball: Path, *, layers: Sequence[Path] = (),
                 copies: Sequence[tuple[Path, str]] = (), unified: bool = True,
                 boot_timeout: float = 90) -> None:
        if not re.fullmatch(r"[a-z0-9-]{1,40}", name):
            raise ValueError(f"bad machine name {name!r}")
        self.name = name
        self.tarball = tarball
        self.layers = list(layers)
        self.copies = list(copies)
        self.unified = unified
        self.boot_timeout = boot_timeout
        self.run_dir = RUN_BASE / name
        self.root = self.run_dir / "root"
        self.proc: subprocess.Popen[bytes] | None = None
        self.leader = 0
        self.timings: dict[str, float] = {}

    def __enter__(self) -> Machine:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- lifecycle ---------------------------------------------------------------------------
    def prepare(self) -> None:
        if self.run_dir.exists():
            self.stop()  # a leftover of a killed run under the same name
        base = unpacked(self.tarball)
        for sub in ("upper", "work", "root"):
            (self.run_dir / sub).mkdir(parents=True, exist_ok=True)
        lower = ":".join(str(p) for p in [*self.layers, base])
        _run(["mount", "-t", "overlay", "overlay", "-o",
              f"lowerdir={lower},upperdir={self.run_dir}/upper,workdir={self.run_dir}/work",
              str(self.root)])
        for src, dst in self.copies:
            target = self.root / dst.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, target, symlinks=True, dirs_exist_ok=True)
            else:
                shutil.copy2(src, target)

    def nspawn_command(self, *, boot: bool = True, extra: Sequence[str] = ()) -> list[str]:
        cmd = ["systemd-nspawn", "--quiet", f"--directory={self.root}", f"--machine={self.name}",
               "--console=read-only" if boot else "--console=pipe", "--link-journal=no",
               "--private-network"]
        if not host_has_systemd():
            # No machined to register with ("Failed to open system bus"); the process's own
            # cgroup (see _enter_cgroups) becomes the container's.
            cmd += ["--register=no", "--keep-unit"]
        return [*cmd, *(["--boot"] if boot else []), *extra]

    def _cgroups(self) -> list[Path]:
        return [] if host_has_systemd() else [h / f"cs-test-{self.name}"
                                             for h in cgroup_hierarchies()]

    def _preexec(self) -> Callable[[], None]:
        cgroups = self._cgroups()

        def enter() -> None:
            # Without this, --keep-unit nspawn would use the hierarchy ROOT and leave payload/
            # and supervisor/ cgroups there.
            os.setsid()
            for cgroup in cgroups:
                cgroup.mkdir(exist_ok=True)
                (cgroup / "cgroup.procs").write_text(str(os.getpid()))
        return enter

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if k not in ("NOTIFY_SOCKET", "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY")}
        if self.unified:
            env["SYSTEMD_NSPAWN_UNIFIED_HIERARCHY"] = "1"
        return env

    def start(self) -> None:
        started = time.monotonic()
        try:
            self.prepare()
            with (self.run_dir / "console.log").open("wb") as console:
                self.proc = subprocess.Popen(self.nspawn_command(), stdin=subprocess.DEVNULL,
                                             stdout=console, stderr=subprocess.STDOUT,
                                             env=self.env(), preexec_fn=self._preexec())
            self.leader = self._find_leader()
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        self.timings["boot"] = time.monotonic() - started

    def console(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            text = (self.run_dir / "console.log").read_text(errors="replace")
            return "\n".join(text.splitlines()[-lines:])
        return ""

    def _find_leader(self, timeout: float = 30) -> int:
        """The guest's PID 1 seen from here: NSpid ends in 1 and it has exec'd systemd (before
        that, nspawn is still building the root and entering it would see half of it)."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"systemd-nspawn exited {self.proc.returncode}:\n"
                                   + self.console())
            for pid in self._descendants(self.proc.pid):
                with contextlib.suppress(OSError):
                    status = Path(f"/proc/{pid}/status").read_text()
                    fields = dict(line.split(":", 1) for line in status.splitlines()
                                  if ":" in line)
                    nspid = fields.get("NSpid", "").split()
                    if len(nspid) > 1 and nspid[-1] == "1" and fields["Name"].strip() == "systemd":
                        return pid
            time.sleep(0.05)
        raise RuntimeError(f"no guest PID 1 after {timeout}s:\n{self.console()}")

    @staticmethod
    def _descendants(pid: int) -> list[int]:
        found: list[int] = []
        todo = [pid]
        while todo:
            for task in Path(f"/proc/{todo.pop()}/task").glob("*"):
                with contextlib.suppress(OSError):
                    kids = [int(x) for x in (task / "children").read_text().split()]
                    found += kids
                    todo += kids
        return found

    def wait_ready(self) -> str:
        """``systemctl is-system-running --wait`` (retried until the guest's manager answers)."""
        deadline = time.monotonic() + self.boot_timeout
        state = ""
        while time.monotonic() < deadline:
            left = max(1, int(deadline - time.monotonic()))
            state = self.run(["timeout", str(left), "systemctl", "is-system-running", "--wait"],
                             check=False, timeout=left + 5).stdout.strip()
            if state in ("running", "degraded", "maintenance", "stopping"):
                break
            assert self.proc is not None
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)  # "offline" / no bus until the guest's manager is up
        if state not in ("running", "degraded"):
            raise RuntimeError(f"guest not up ({state!r}):\n{self.console()}")
        return state

    def _nsenter_pids(self) -> list[int]:
        want = f"--target={self.leader}".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    argv = (entry / "cmdline").read_bytes().split(b"\0")
                    if argv[0].endswith(b"nsenter") and want in argv:
                        found.append(int(entry.name))
        return found

    def _wait_exit(self, timeout: float) -> bool:
        """Wait for nspawn to exit. Meanwhile wake our nsenter parents: systemd-shutdown does
        kill(-1, SIGSTOP) ... kill(-1, SIGCONT) in the guest, a stopped child makes its nsenter
        parent (outside) stop itself, and nothing would ever continue it: the child's zombie is
        never reaped and the guest waits 90 s ("Waiting for process: N")."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return True
            if self.leader:
                for pid in self._nsenter_pids():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGCONT)
            time.sleep(0.05)
        return False

    def _orphans(self) -> list[int]:
        """nspawn processes of a killed run that booted this root (no Popen to wait on)."""
        want = f"--directory={self.root}".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    argv = (entry / "cmdline").read_bytes().split(b"\0")
                    if argv[0].endswith(b"systemd-nspawn") and want in argv:
                        found.append(int(entry.name))
        return found

    def stop(self, timeout: float = 20) -> None:
        started = time.monotonic()
        for pid in [] if self.proc is not None else self._orphans():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)  # the guest's PID 1 dies with its namespace
            deadline = time.monotonic() + 10
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # nspawn --boot: halt the guest
            if not self._wait_exit(3) and self.leader and _alive(self.leader):
                # lost if it came before systemd set up its handlers: ask PID 1 itself
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.leader, signal.SIGRTMIN + 4)
            if not self._wait_exit(timeout):
                log(f"{self.name}: guest did not halt in {timeout}s, SIGKILL")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        if self.leader and _alive(self.leader):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.leader, signal.SIGKILL)
        if _is_mount(self.root):
            if subprocess.run(["umount", str(self.root)], capture_output=True,
                              check=False).returncode != 0:
                subprocess.run(["umount", "-l", str(self.root)], capture_output=True, check=False)
        for cgroup in self._cgroups():
            # a guest whose nspawn was killed outlives it (its PID 1 is nspawn's child, not
            # nspawn): whatever is still in the machine's cgroups is killed, PID 1 with it
            for procs in cgroup.rglob("cgroup.procs"):
                with contextlib.suppress(OSError, ValueError):
                    for pid in procs.read_text().split():
                        os.kill(int(pid), signal.SIGKILL)
            _rmdir_tree(cgroup)
        shutil.rmtree(f"/run/systemd/nspawn/propagate/{self.name}", ignore_errors=True)
        if self.run_dir.exists() and not _is_mount(self.root):
            shutil.rmtree(self.run_dir, ignore_errors=True)
        self.leader = 0
        self.timings["stop"] = time.monotonic() - started

    # -- inside --------------------------------------------------------------------------------
    def run(self, argv: Sequence[str], *, check: bool = True, input: str | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """argv in every namespace of the guest, as root, with a clean environment.

        ``--root --wd`` without values: the guest PID 1's root and cwd (``--wd=/`` would leave
        the cwd unresolvable: "getcwd() failed")."""
        if not self.leader:
            raise RuntimeError("machine not running")
        cmd = ["nsenter", f"--target={self.leader}", "--all", "--root", "--wd",
               "env", "-i", *GUEST_ENV, *argv]
        result = subprocess.run(cmd, input=input, capture_output=True, text=True,
                                timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"in guest: {shlex.join(argv)} exited {result.returncode}\n"
                                 f"stdout: {result.stdout[-2000:]}\n"
                                 f"stderr: {result.stderr[-2000:]}")
        return result

    def sh(self, script: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        return self.run(["/bin/bash", "-euo", "pipefail", "-c", script],
                        **kwargs)  # type: ignore[arg-type]

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.run(["systemctl", "show", unit, *(f"--property={p}" for p in props)]).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def write(self, path: str, data: str | bytes, mode: int = 0o644) -> None:
        """Write a file in the running guest (through its root, seen from here)."""
        target = Path(f"/proc/{self.leader}/root") / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data.encode() if isinstance(data, str) else data)
        target.chmod(mode)

    def journal(self, unit: str) -> list[dict[str, object]]:
        out = self.run(["journalctl", "-u", unit, "-o", "json", "--no-pager"]).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]


def sweep() -> None:
    """Stop machines left by killed test runs (names end in the pid of their test process)."""
    names = [d.name for d in RUN_BASE.iterdir()] if RUN_BASE.is_dir() else []
    names += [cg.name.removeprefix("cs-test-") for h in cgroup_hierarchies()
              for cg in h.glob("cs-test-*")]
    for name in sorted(set(names)):
        match = re.search(r"(\d+)$", name)
        if match and not _alive(int(match.group(1))):
            log(f"removing the leftover machine {name}")
            Machine(name, Path("unused.tar.zst")).stop()
