"""Soak: is there ever a client-visible failure while a good credential set exists?

The real daemon (process) and the Roles Anywhere emulator (process) on loopback, ``--connections``
connections sharing one certificate, every connection served on the container door and the
control socket, the first few also on an IMDS listener of their own. Clients run the whole time,
each recording (test-clock time, ok or error, access key, expiration):

- ``imds``: botocore's InstanceMetadataFetcher, a new one per poll (token, role, credentials);
- ``imds-token``: one client that keeps one IMDSv2 token for its TTL, as Go SDK v1 does
  (a 401 on a token that has not expired is an error like any other);
- ``container-get``: a plain GET with the connection's Authorization token, round robin over all;
- ``container-fetcher``: botocore's ContainerMetadataFetcher (its own retries), round robin;
- ``boto3``: a worker process resolving ``boto3.Session().get_credentials()`` through
  AWS_CONTAINER_CREDENTIALS_FULL_URI / AWS_CONTAINER_AUTHORIZATION_TOKEN, round robin;
- ``credential-process``: ``credential-sidecar credential-process NAME --socket PATH``.

A fault schedule, fixed by ``--seed``, runs meanwhile: emulator outages (503), throttling (429 and
Retry-After), slow answers, malformed and empty answers, ``kill -9`` and a restart with the same
config and state_dir, SIGHUP storms that change connections (notes, then duration_seconds and
session_name), a full disk under state_dir (a tmpfs filled, then freed; root only), forward
clock jumps (the daemon and the emulator share a file-driven test clock, clock.OffsetClock) and
one deliberate lapse (an outage long enough on the test clock that every set expires: errors
then are not failures, which shows the judge is not fooled by them).

The HTTP doors are socket-activated (the soak holds the listening sockets, as systemd's .socket
unit would), so a client that connects while the daemon restarts waits in the queue instead of
being refused.

Judging. A set "exists" for a connection from the moment the daemon logged it (``credentials
renewed``; ``credentials restored from cache`` after a restart) until the emulator's expiration,
and ends early at a ``kill -9`` when the daemon logged that it could not persist it. An error
(non-200, exception, empty set, credential_process exit != 0) counts as a *failure while a good
set existed* when some set of that connection existed at the request's start and still had at
least 60 s + TOLERANCE left at its end (on the test clock). Not counted, but reported: errors with
no good set (the lapse), errors whose only good set the daemon had replaced on purpose by a
shorter-lived one (a reload that lowered duration_seconds), requests in flight when the daemon
was killed, and connection-level errors (refused, reset, timeout) between a kill and the new
process's doors and control socket being up (the gap's length is reported). Served sets are
checked too: never under 60 s left, never expired, never a key the daemon did not log for that
connection.

    .venv/bin/python bench/soak.py [--connections 300] [--minutes 20] [--seed 1] [--out PATH]
    .venv/bin/python bench/soak.py --short        # CI profile: 40 connections, under 3 minutes
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any

import common as c

from credential_sidecar.renewal.schedule import Policy
from tests.helpers import harness as h

TOLERANCE = 15.0  # seconds of test clock: slack of every time comparison (as test_resilience)
MIN_LEFT = 60.0  # a set with less left is never served
IMDS_LISTENERS = 5
CLIENT_TIMEOUT = 5.0  # generous: a loaded 2-core machine must not turn latency into failures
GAP_SLACK = 1.0  # real seconds after a restarted daemon is up that still count as the gap
STATUS_RE = re.compile(r"\b(?:HTTP|status|response) ?(\d{3})\b")
STAMP_FMT = "%Y-%m-%dT%H:%M:%SZ"
SETTLE_READ = 0.05  # seconds after an offset file is written by which every process reads it
FAULT_SLACK = 60.0  # seconds of test clock added to each failing stretch (event times are early)
FAILING_FAULTS = ("fail_count", "throttle_count", "malformed_count", "empty_count", "deny_count")
JUMP_STEP = 240.0  # seconds of test clock per step of a jump (the upstream allows 300 s of skew)
SETTLED_LEFT = 700.0  # after each fault, wait until every held set has this much left
TOKEN_MARGIN = 3000.0  # the token client renews a token this long (test clock) before its TTL ends
TOKEN_LAPSED = "401: the token's TTL passed on the test clock (a jump), not a failure"
QUIET_EVENTS = ("faults", "faults cleared", "event")  # not what a failure is said to follow


def stamp(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime(STAMP_FMT)


# --- the shared test clock -----------------------------------------------------------------------


class TestClock:
    """Real time plus an offset in a file that the daemon and the emulator read (OffsetClock)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0.0
        self._lock = threading.Lock()
        # When each offset began to apply (before its file was written) and when every process
        # surely applies it (written, plus OffsetClock's 10 ms re-read): see at().
        self._starts: list[float] = [0.0]
        self._ends: list[float] = [0.0]
        self._offsets: list[float] = [0.0]
        self._write()

    def _write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(repr(self.offset))
        tmp.replace(self.path)

    def now(self) -> float:
        return time.time() + self.offset

    def move(self, seconds: float) -> None:
        with self._lock:
            self.offset += seconds
            self._starts.append(time.time())
            self._write()
            self._ends.append(time.time() + SETTLE_READ)
            self._offsets.append(self.offset)

    def drift(self, seconds: float, real_seconds: float, step: float = 15.0,
              stop: threading.Event | None = None) -> None:
        """Forward by ``seconds`` of test time in steps, spread over ``real_seconds``."""
        steps = max(1, math.ceil(seconds / step))
        for _ in range(steps):
            if stop is not None and stop.is_set():
                return
            self.move(seconds / steps)
            time.sleep(real_seconds / steps)

    def jump(self, seconds: float) -> None:
        """Forward at once, as a resumed host sees it, but in steps under the upstream's 5 min
        signature skew: both processes share this clock, and a request signed before one big
        step and checked after it would be refused as expired, which AWS's clock never does."""
        steps = max(1, math.ceil(seconds / JUMP_STEP))
        for _ in range(steps):
            self.move(seconds / steps)
            time.sleep(0.05)

    def at(self, real: float, *, late: bool = False) -> float:
        """The test-clock time at a real (wall) time, from the offset history. While an offset
        is being written other processes may still use the previous one: the earliest time any
        process may have seen by default, the latest with ``late``. Each judgement uses the one
        that cannot make a failure of a success: a request starts early and ends late."""
        with self._lock:
            marks = self._starts if late else self._ends
            i = bisect.bisect_right(marks, real) - 1
            return real + self._offsets[max(0, i)]


# --- observations --------------------------------------------------------------------------------


@dataclass(slots=True)
class Obs:
    kind: str
    conn: str
    t0: float  # test clock, request start
    t1: float  # test clock, request end
    r0: float  # real time, request start
    r1: float
    ok: bool
    error: str = ""
    status: int | None = None  # HTTP status (or its control-socket equivalent); None: no answer
    key: str | None = None
    expires: float | None = None


class Recorder:
    def __init__(self, clock: TestClock) -> None:
        self.clock = clock
        self.obs: list[Obs] = []
        self._lock = threading.Lock()

    def start(self) -> tuple[float, float]:
        real = time.time()
        return real, self.clock.at(real)

    def add(self, kind: str, conn: str, begun: tuple[float, float], *, key: str | None = None,
            secret: str | None = None, token: str | None = None, expiration: str | None = None,
            error: str = "", status: int | None = None) -> None:
        r1 = time.time()
        ok = not error
        expires: float | None = None
        if ok:
            if not (key and secret and token and expiration):
                ok, error, status = False, "an empty or incomplete set was served", 200
            else:
                try:
                    expires = stamp(expiration)
                except ValueError:
                    ok, error, status = False, f"unparsable Expiration {expiration!r}", 200
        obs = Obs(kind, conn, begun[1], self.clock.at(r1, late=True), begun[0], r1, ok, error[:300],
                  status, key if ok else None, expires)
        with self._lock:
            self.obs.append(obs)

    def extend(self, more: list[Obs]) -> None:
        with self._lock:
            self.obs.extend(more)


# --- clients -------------------------------------------------------------------------------------


class Clients:
    """Every client loop, each in its own thread, all stopped by one event and a deadline."""

    def __init__(self, rec: Recorder, names: list[str], tokens: dict[str, str],
                 imds: dict[str, str], container: str, socket_path: Path, seed: int,
                 deadline: float) -> None:
        self.rec, self.names, self.tokens, self.imds = rec, names, tokens, imds
        self.container, self.socket_path = container, socket_path
        self.rng = random.Random(seed)
        self.deadline = deadline  # time.monotonic(): no loop outlives it
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.crashes: list[str] = []

    def running(self) -> bool:
        return not self.stop.is_set() and time.monotonic() < self.deadline

    def spawn(self, name: str, target: Callable[[], None]) -> None:
        def guarded() -> None:
            try:
                target()
            except BaseException as exc:  # a client bug must show in the report, not vanish
                self.crashes.append(f"{name}: {exc!r}")

        thread = threading.Thread(target=guarded, name=name, daemon=True)
        self.threads.append(thread)
        thread.start()

    def start(self) -> None:
        for name, url in self.imds.items():
            self.spawn(f"imds-{name}", partial(self.imds_loop, name, url))
        first = next(iter(self.imds))
        self.spawn("imds-token", lambda: self.token_loop(first, self.imds[first]))
        for i in range(2):
            self.spawn(f"container-get-{i}", partial(self.container_get_loop, self.shuffled()))
        self.spawn("container-fetcher", lambda: self.fetcher_loop(self.shuffled()))
        self.spawn("credential-process", lambda: self.credproc_loop(self.shuffled()))

    def shuffled(self) -> list[str]:
        names = list(self.names)
        self.rng.shuffle(names)
        return names

    def join(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)

    # IMDS: botocore's fetcher, new per poll, as boto3 builds one per credential resolution
    def imds_loop(self, name: str, url: str) -> None:
        from botocore.utils import InstanceMetadataFetcher

        class Fetcher(InstanceMetadataFetcher):
            problem = ""

            def _is_non_ok_response(self, response: Any) -> bool:
                if response.status_code != 200:
                    self.problem = f"HTTP {response.status_code}: {response.text[:160]}"
                    return True
                return False

            def _evaluate_expiration(self, credentials: Any) -> None:
                return None  # botocore's real-clock "extension" would disguise what was served

        while self.running():
            fetcher = Fetcher(timeout=int(CLIENT_TIMEOUT), num_attempts=1, base_url=url,
                              config={"ec2_metadata_v1_disabled": True})
            begun = self.rec.start()
            try:
                creds = fetcher.retrieve_iam_role_credentials()
            except Exception as exc:
                error = fetcher.problem or f"{type(exc).__name__}: {exc}"
                self.rec.add("imds", name, begun, error=error, status=status_of(error))
            else:
                if creds:
                    self.rec.add("imds", name, begun, key=creds.get("access_key"),
                                 secret=creds.get("secret_key"), token=creds.get("token"),
                                 expiration=creds.get("expiry_time"))
                else:
                    error = fetcher.problem or "the fetcher returned no credentials"
                    self.rec.add("imds", name, begun, error=error, status=status_of(error))
            time.sleep(0.2)

    # IMDS with one token kept for its TTL (Go SDK v1); a new token only when it has expired
    def token_loop(self, name: str, url: str) -> None:
        ttl = 21600
        token: str | None = None
        token_until = 0.0  # test clock
        while self.running():
            begun = self.rec.start()
            try:
                if token is None or begun[1] > token_until - TOKEN_MARGIN:
                    code, _, body = h.http("PUT", url + "latest/api/token",
                                           {h.IMDS_TTL: str(ttl)})
                    if code != 200:
                        raise _Answer(code, f"token PUT: HTTP {code}: {body[:120]!r}")
                    token, token_until = body.decode(), begun[1] + ttl
                headers = {"X-aws-ec2-metadata-token": token}
                code, _, role = h.http("GET", url + h.IMDS_CREDS, headers)
                if code == 200:
                    code, _, role_body = h.http("GET", url + h.IMDS_CREDS + role.decode(),
                                                headers)
                    role = role_body
                if code != 200:
                    if code == 401:
                        token = None  # the SDK asks for a new token after a 401
                        if self.rec.clock.at(time.time(), late=True) > token_until - TOLERANCE:
                            raise _Answer(code, TOKEN_LAPSED)  # the test clock outran its TTL
                    raise _Answer(code, f"HTTP {code} with a token held since before: "
                                        f"{role[:120]!r}")
                doc = json.loads(role)
                self.rec.add("imds-token", name, begun, key=doc.get("AccessKeyId"),
                             secret=doc.get("SecretAccessKey"), token=doc.get("Token"),
                             expiration=doc.get("Expiration"))
            except _Answer as answer:
                self.rec.add("imds-token", name, begun, error=answer.text, status=answer.status)
            except (OSError, ValueError) as exc:
                self.rec.add("imds-token", name, begun, error=f"{type(exc).__name__}: {exc}")
            time.sleep(0.25)

    def container_get_loop(self, order: list[str]) -> None:
        i = 0
        while self.running():
            name = order[i % len(order)]
            i += 1
            begun = self.rec.start()
            try:
                code, _, body = h.http("GET", f"{self.container}v1/credentials/{name}",
                                       {"Authorization": self.tokens[name]})
                if code != 200:
                    raise _Answer(code, f"HTTP {code}: {body[:160]!r}")
                doc = json.loads(body)
                self.rec.add("container-get", name, begun, key=doc.get("AccessKeyId"),
                             secret=doc.get("SecretAccessKey"), token=doc.get("Token"),
                             expiration=doc.get("Expiration"))
            except _Answer as answer:
                self.rec.add("container-get", name, begun, error=answer.text,
                             status=answer.status)
            except (OSError, ValueError) as exc:
                self.rec.add("container-get", name, begun, error=f"{type(exc).__name__}: {exc}")
            time.sleep(0.02)

    def fetcher_loop(self, order: list[str]) -> None:
        from botocore.utils import ContainerMetadataFetcher

        class Fetcher(ContainerMetadataFetcher):
            TIMEOUT_SECONDS = int(CLIENT_TIMEOUT)  # botocore's 2 s, made generous for CI

        i = 0
        while self.running():
            name = order[i % len(order)]
            i += 1
            begun = self.rec.start()
            try:
                doc = Fetcher().retrieve_full_uri(
                    f"{self.container}v1/credentials/{name}",
                    headers={"Authorization": self.tokens[name]})
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                self.rec.add("container-fetcher", name, begun, error=error,
                             status=status_of(error))
            else:
                self.rec.add("container-fetcher", name, begun, key=doc.get("AccessKeyId"),
                             secret=doc.get("SecretAccessKey"), token=doc.get("Token"),
                             expiration=doc.get("Expiration"))
            time.sleep(0.05)

    def credproc_loop(self, order: list[str]) -> None:
        command = [str(Path(sys.executable).with_name("credential-sidecar")), "credential-process"]
        i = 0
        while self.running():
            name = order[i % len(order)]
            i += 1
            begun = self.rec.start()
            try:
                done = subprocess.run([*command, name, "--socket", str(self.socket_path)],
                                      capture_output=True, text=True, timeout=60,
                                      env=h.clean_env())
            except subprocess.TimeoutExpired:
                self.rec.add("credential-process", name, begun, error="timed out after 60 s")
                continue
            if done.returncode != 0:
                error = f"exit {done.returncode}: {done.stderr.strip()[:200]}"
                status = None if "not reachable" in error else (
                    503 if "no fresh credentials" in error else 500)
                self.rec.add("credential-process", name, begun, error=error, status=status)
            else:
                try:
                    doc = json.loads(done.stdout)
                except ValueError:
                    self.rec.add("credential-process", name, begun, status=200,
                                 error=f"not JSON: {done.stdout[:120]!r}")
                    continue
                self.rec.add("credential-process", name, begun, key=doc.get("AccessKeyId"),
                             secret=doc.get("SecretAccessKey"), token=doc.get("SessionToken"),
                             expiration=doc.get("Expiration"))
            time.sleep(0.1)


class _Answer(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status, self.text = status, text


def status_of(error: str) -> int | None:
    found = STATUS_RE.search(error)
    return int(found.group(1)) if found else None


# --- boto3, in a worker process of its own (its environment is per process) ----------------------


def boto3_worker(spec_path: str) -> None:
    """Round robin over connections: boto3.Session().get_credentials() through the env vars."""
    import boto3  # type: ignore[import-untyped]
    from botocore.utils import ContainerMetadataFetcher

    # botocore's 2 s per attempt, made generous: a loaded CI machine is not a failure.
    ContainerMetadataFetcher.TIMEOUT_SECONDS = int(CLIENT_TIMEOUT)

    spec = json.loads(Path(spec_path).read_text())
    clock_file, stop_file = Path(spec["clock_file"]), Path(spec["stop_file"])
    conns: list[list[str]] = spec["conns"]

    def test_time(real: float) -> float:
        try:
            return real + float(clock_file.read_text().strip() or 0)
        except (OSError, ValueError):
            return real

    with open(spec["out"], "a") as out:
        i = 0
        while not stop_file.exists() and time.time() < spec["deadline"]:
            name, token = conns[i % len(conns)]
            i += 1
            url = f"{spec['base']}v1/credentials/{name}"
            os.environ["AWS_CONTAINER_CREDENTIALS_FULL_URI"] = url
            os.environ["AWS_CONTAINER_AUTHORIZATION_TOKEN"] = token
            r0 = time.time()
            t0 = test_time(r0)
            row: dict[str, Any] = {"conn": name, "r0": r0, "t0": t0}
            try:
                creds = boto3.Session(region_name=h.REGION).get_credentials()
                if creds is None:
                    raise RuntimeError("boto3 resolved no credentials")
                frozen = creds.get_frozen_credentials()
                expiry = getattr(creds, "_expiry_time", None)
                row.update(key=frozen.access_key, secret=frozen.secret_key, token=frozen.token,
                           expiration=expiry.strftime(STAMP_FMT) if expiry else None)
            except Exception as exc:
                row["error"] = f"{type(exc).__name__}: {exc}"[:300]
            r1 = time.time()
            row.update(r1=r1, t1=test_time(r1))
            out.write(json.dumps(row) + "\n")
            out.flush()
            time.sleep(0.1)


def read_boto3(path: Path, clock: TestClock) -> list[Obs]:
    out: list[Obs] = []
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        error = row.get("error", "")
        if not error and not (row.get("key") and row.get("secret") and row.get("token")
                              and row.get("expiration")):
            error = "an empty or incomplete set was resolved"
        ok = not error
        out.append(Obs("boto3", row["conn"], clock.at(row["r0"]), clock.at(row["r1"], late=True),
                       row["r0"], row["r1"], ok,
                       error, status_of(error) if error else 200,
                       row.get("key") if ok else None,
                       stamp(row["expiration"]) if ok else None))
    return out


# --- the daemon, restartable ---------------------------------------------------------------------


class StartFailed(RuntimeError):
    pass


@dataclass
class Event:
    real: float
    test: float
    kind: str
    detail: str = ""


class Sidecar:
    """The daemon as a process, restarted with the same config, state_dir and sockets."""

    def __init__(self, tmp: Path, conns: list[dict[str, Any]], env: dict[str, str],
                 clock: TestClock) -> None:
        self.tmp, self.conns, self.env, self.clock = tmp, conns, env, clock
        self.socket_path = tmp / "run" / "control.sock"
        self.sockets: list[tuple[str, socket.socket]] = []
        listen: dict[str, str] = {}
        doors = [f"imds-{conn['name']}" for conn in conns[:IMDS_LISTENERS]]
        for door in [*doors, "container", "health"]:
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sock.listen(1024)
            sock.set_inheritable(True)
            self.sockets.append((door, sock))
            listen[door] = f"127.0.0.1:{sock.getsockname()[1]}"
        self.listen = listen
        self.imds = [{"listen": listen[f"imds-{conn['name']}"], "connection": conn["name"]}
                     for conn in conns[:IMDS_LISTENERS]]
        self.config_path = tmp / "config.toml"
        self.process: h.Process | None = None
        self.incarnation = 0
        self.logs: list[Path] = []
        self.events: list[Event] = []
        self.write_config()

    def url(self, door: str) -> str:
        return f"http://{self.listen[door]}/"

    def note(self, kind: str, detail: str = "") -> Event:
        real = time.time()
        event = Event(real, self.clock.at(real), kind, detail)
        self.events.append(event)
        print(f"  [{time.strftime('%H:%M:%S')}] {kind} {detail}", flush=True)
        return event

    def write_config(self) -> None:
        config = h.daemon_config(self.tmp, self.conns, imds=self.imds, log_level="info", extra={
            "container": {"listen": self.listen["container"]},
            "control": {"socket": str(self.socket_path)},
        })
        config["health"] = {"listen": self.listen["health"]}
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(h.to_toml(config))
        tmp.replace(self.config_path)

    @property
    def pid(self) -> int | None:
        if self.process is None or self.process.proc.poll() is not None:
            return None
        return self.process.proc.pid

    def start(self, timeout: float = 90.0) -> None:
        self.incarnation += 1
        log = self.tmp / f"daemon-{self.incarnation}.log"
        self.logs.append(log)
        self.process = h.start(["run", "--config", str(self.config_path)], log, self.env,
                               sockets=self.sockets)
        process = self.process
        expected = {door.replace("imds-", "imds:") for door in self.listen}

        def up() -> bool:
            if process.proc.poll() is not None:
                raise StartFailed(f"daemon exited with {process.proc.returncode}:\n"
                                  + "\n".join(process.lines()[-15:]))
            doors = {e.get("door") for e in h.Daemon(process, self.config_path).events()
                     if e.get("event") == "listening"}
            return expected <= doors and self.socket_path.exists()

        h.wait_for(up, timeout=timeout, what="the daemon's doors and control socket")
        self.note("up", f"incarnation {self.incarnation} pid {process.proc.pid}")

    def kill9(self) -> Event:
        assert self.process is not None
        event = self.note("kill -9", f"pid {self.process.proc.pid}")
        self.process.stop(signal.SIGKILL)
        return event

    def sighup(self, detail: str) -> None:
        assert self.process is not None
        self.write_config()
        self.note("sighup", detail)
        self.process.proc.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def status(self) -> list[dict[str, Any]]:
        code, _, body = h.http("GET", self.url("health") + "status")
        if code != 200:
            return []
        return list(json.loads(body)["connections"])

    def ready(self) -> bool:
        try:
            return h.http("GET", self.url("health") + "readyz")[0] == 200
        except OSError:
            return False

    def min_left(self) -> float:
        """Least time left on any held set (test clock), per /status; inf when none is held."""
        try:
            lefts = [float(r["seconds_left"]) for r in self.status()
                     if r.get("seconds_left") is not None and r["seconds_left"] >= MIN_LEFT]
        except OSError:
            return 0.0
        return min(lefts, default=math.inf)

    def parsed_logs(self) -> list[tuple[int, dict[str, Any]]]:
        out: list[tuple[int, dict[str, Any]]] = []
        for n, path in enumerate(self.logs, start=1):
            if not path.exists():
                continue
            for line in path.read_text(errors="replace").splitlines():
                try:
                    doc = json.loads(line)
                except ValueError:
                    continue
                if isinstance(doc, dict):
                    out.append((n, doc))
        return out


# --- the full disk -------------------------------------------------------------------------------


class Disk:
    """state_dir on a small tmpfs, filled and freed on demand (root only)."""

    def __init__(self, path: Path, size_mib: int) -> None:
        self.path = path
        self.mounted = False
        self.filler = path / "filler"
        path.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m,mode=0700",
                                   "tmpfs", str(path)], capture_output=True, text=True)
            self.mounted = done.returncode == 0
            self.why = done.stderr.strip()
        else:
            self.why = "not root"

    def fill(self) -> int:
        written = 0
        block = b"\0" * (1 << 16)
        with contextlib.suppress(OSError), open(self.filler, "ab", buffering=0) as handle:
            while True:
                handle.write(block)
                handle.flush()
                written += len(block)
        with contextlib.suppress(OSError), open(self.filler, "ab", buffering=0) as handle:
            while True:  # the last few bytes too
                handle.write(b"\0" * 512)
                handle.flush()
                written += 512
        return written

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def unmount(self) -> None:
        if self.mounted:
            self.free()
            done = subprocess.run(["umount", str(self.path)], capture_output=True)
            if done.returncode != 0:
                subprocess.run(["umount", "-l", str(self.path)], capture_output=True)
            self.mounted = False


# --- the fault schedule --------------------------------------------------------------------------


class Soak:
    def __init__(self, args: argparse.Namespace, tmp: Path, clock: TestClock,
                 emulator: h.Emulator, sidecar: Sidecar, disk: Disk) -> None:
        self.args, self.tmp, self.clock = args, tmp, clock
        self.emu, self.d, self.disk = emulator, sidecar, disk
        self.rng = random.Random(args.seed)
        self.stop = threading.Event()
        self.gaps: list[tuple[float, float]] = []  # real [kill, back up] windows
        self.kills: list[tuple[float, int]] = []  # (real time, incarnation killed)
        self.counts: Counter[str] = Counter()
        self.reload_serial = 0

    # helpers
    def faults(self, **faults: Any) -> None:
        self.emu.faults(**faults)
        self.d.note("faults", json.dumps(faults))

    def clear_faults(self) -> None:
        code, _, _ = h.http("DELETE", self.emu.url + "/_emulator/faults")
        assert code == 200
        self.d.note("faults cleared")

    def bound(self, wanted: float) -> float:
        """How far the clock may move without any held set falling under 60 s + margin."""
        return max(0.0, min(wanted, self.d.min_left() - MIN_LEFT - 240))

    def drift(self, wanted: float, real_seconds: float) -> float:
        amount = self.bound(wanted)
        self.clock.drift(amount, real_seconds, stop=self.stop)
        return amount

    def settle(self, timeout: float | None = None) -> None:
        """Until every connection holds a servable set with SETTLED_LEFT or more left, nudging
        the clock (backoffs run on the test clock), so that the next fault has room to act."""
        timeout = timeout or (20.0 if self.args.short else 45.0)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.stop.is_set():
            if self.d.ready() and self.d.min_left() >= SETTLED_LEFT:
                return
            self.clock.move(min(15.0, self.bound(15.0)))  # backoffs run on the test clock
            time.sleep(0.5)
        self.d.note("not settled", f"after {timeout:.0f} s: ready {self.d.ready()}, least "
                    f"left {self.d.min_left():.0f} s")

    def restart(self, why: str) -> None:
        killed_incarnation = self.d.incarnation
        kill = self.d.kill9()
        self.kills.append((kill.real, killed_incarnation))
        self.counts["kill -9 + restart"] += 1
        try:
            self.d.start()
        except (StartFailed, AssertionError) as exc:
            self.d.note("start failed", f"{why}: {str(exc)[:300]}")
            self.counts["failed starts"] += 1
            if self.disk.mounted:
                self.disk.free()
                self.d.note("disk freed to let the daemon start")
            self.d.start()
        self.gaps.append((kill.real, time.time()))

    def fault_window(self, label: str, faults: dict[str, Any], low: float, high: float,
                     real_seconds: float, *, backoff: bool = True) -> None:
        """Upstream ``faults`` while the test clock moves a random stretch (bounded so no held
        set falls under 60 s), then clear them; ``backoff`` first lets the clock run past the
        retry backoff's 120 s cap, so renewals resume before the next fault."""
        self.faults(**faults)
        moved = self.drift(self.rng.uniform(low, high), real_seconds)
        self.d.note(f"{label} drift", f"{moved:.0f} s")
        self.clear_faults()
        if backoff:
            self.clock.drift(150, 2)
        self.settle()

    # the faults
    def ev_outage(self) -> None:
        self.fault_window("outage", {"fail_status": 503, "fail_count": -1}, 1200, 1700, 8)

    def ev_throttle(self) -> None:
        self.fault_window("throttle", {"throttle_count": -1, "retry_after": 60}, 900, 1500, 7)

    def ev_slow(self) -> None:
        self.fault_window("slow", {"delay_seconds": self.rng.choice([2, 3, 4])}, 600, 1200, 8,
                          backoff=False)

    def ev_malformed(self) -> None:
        n = max(2, len(self.d.conns) // 3)
        self.fault_window("malformed", {"malformed_count": n, "empty_count": n}, 900, 1500, 6)

    def ev_kill(self) -> None:
        # Half the time with renewals in flight (a slow upstream) when the daemon dies.
        if self.rng.random() < 0.5:
            self.faults(delay_seconds=30)
            self.drift(self.rng.uniform(600, 1000), 3)
        self.restart("kill -9")
        self.clear_faults()
        time.sleep(3)
        self.settle()

    def ev_sighup(self) -> None:
        conns = self.d.conns
        k = max(2, len(conns) // 10)
        self.reload_serial += 1
        serial = self.reload_serial
        for conn in self.rng.sample(conns, k):
            conn["notes"] = f"soak reload {serial}"
        self.d.sighup(f"notes changed on {k}")
        time.sleep(0.3)
        changed = self.rng.sample(conns, k)
        for conn in changed:
            conn["duration_seconds"] = 1800 if conn.get("duration_seconds") == 3600 else 3600
        self.d.sighup(f"duration_seconds changed on {k}")
        time.sleep(0.3)
        renamed = self.rng.sample(conns, k)
        for conn in renamed:
            conn["session_name"] = f"{conn['name']}-r{serial}"
        self.d.sighup(f"session_name changed on {k}")
        time.sleep(0.3)
        self.d.sighup("unchanged")
        time.sleep(0.2)
        self.d.sighup("unchanged")
        self.counts["sighup"] += 5
        time.sleep(3)
        self.settle()

    def ev_reload_restart(self) -> None:
        """A reload changes how some connections get credentials while the upstream is slow,
        then the daemon dies before their new sets arrive: the old sets are still good."""
        self.faults(delay_seconds=30)
        self.reload_serial += 1
        k = max(2, len(self.d.conns) // 10)
        for conn in self.rng.sample(self.d.conns, k):
            conn["session_name"] = f"{conn['name']}-x{self.reload_serial}"
        self.d.sighup(f"session_name changed on {k}, upstream slow")
        self.counts["sighup"] += 1
        time.sleep(3)
        self.restart("kill -9 before the changed connections' new sets arrive")
        time.sleep(2)
        self.clear_faults()
        self.settle()

    def ev_disk(self) -> None:
        if not self.disk.mounted:
            self.d.note("disk skipped", self.disk.why)
            return
        written = self.disk.fill()
        self.d.note("disk full", f"{written >> 10} KiB filler")
        moved = self.drift(self.rng.uniform(900, 1500), 4)  # renewals that cannot be persisted
        self.d.note("disk-full drift", f"{moved:.0f} s")
        for conn in self.rng.sample(self.d.conns, max(2, len(self.d.conns) // 10)):
            conn["notes"] = f"changed while the disk is full {self.reload_serial}"
        self.d.sighup("notes changed while the disk is full")
        self.counts["sighup"] += 1
        time.sleep(2)
        self.restart("kill -9 while the disk is full")
        time.sleep(3)
        self.disk.free()
        self.d.note("disk freed")
        self.settle()

    def ev_jump(self) -> None:
        amount = self.bound(self.rng.uniform(1200, 2400))
        self.clock.jump(amount)
        self.d.note("clock jump", f"+{amount:.0f} s")
        time.sleep(2)
        self.settle()

    def ev_lapse(self) -> None:
        """Every set expires during an outage: errors then are not failures."""
        self.faults(fail_status=503, fail_count=-1)
        longest = max((float(r["seconds_left"]) for r in self.d.status()
                       if r.get("seconds_left") is not None), default=3600.0)
        self.clock.jump(longest + 120)
        self.d.note("lapse jump", f"+{longest + 120:.0f} s: every set has expired")
        time.sleep(4)
        self.clear_faults()
        self.clock.drift(150, 2)
        self.settle(90)

    def schedule(self) -> Iterator[Callable[[], None]]:
        kinds: list[Callable[[], None]] = [self.ev_outage, self.ev_throttle, self.ev_slow,
                                           self.ev_malformed, self.ev_kill, self.ev_sighup,
                                           self.ev_disk, self.ev_lapse,
                                           self.ev_reload_restart]
        while True:
            order = list(kinds)
            self.rng.shuffle(order)
            for i, kind in enumerate(order):
                yield kind
                if i % 2 == 1:
                    yield self.ev_jump

    def run(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        cycle = 13  # one of each fault (9), with a clock jump after every second one
        done = 0
        for event in self.schedule():
            # --short runs exactly one cycle (about 2 minutes), however slow the machine: the
            # test must see every fault; a full run stops starting faults when time is up.
            if self.stop.is_set() or (self.args.short and done >= cycle):
                break
            if not self.args.short and time.monotonic() >= end:
                break
            self.counts["events"] += 1
            self.d.note("event", event.__name__.removeprefix("ev_"))
            event()
            done += 1
            time.sleep(1)


# --- judging -------------------------------------------------------------------------------------


@dataclass
class HeldSet:
    key: str
    conn: str
    start: float  # test clock: first logged (or served)
    expires: float
    incarnation: int
    end: float | None = None  # test clock: lost (not persisted) at a kill -9
    sources: set[str] = field(default_factory=set)


def held_sets(sidecar: Sidecar, clock: TestClock, issued: dict[str, float],
              obs: list[Obs], kills: list[tuple[float, int]]) -> dict[str, list[HeldSet]]:
    by_key: dict[str, HeldSet] = {}
    persist_failed: dict[tuple[int, str], list[float]] = {}
    renewed: dict[tuple[int, str], list[tuple[float, str]]] = {}
    for n, e in sidecar.parsed_logs():
        event, conn, when = e.get("event"), e.get("connection"), e.get("timestamp")
        if not (isinstance(conn, str) and isinstance(when, str)):
            continue
        real = stamp(when)
        if event in ("credentials renewed", "credentials restored from cache"):
            key = str(e["access_key_id"])
            expires = issued.get(key, stamp(str(e["expires"])))
            start = clock.at(real, late=True)
            held = by_key.setdefault(key, HeldSet(key, conn, start, expires, n))
            held.start = min(held.start, start)
            held.sources.add("restored" if "restored" in event else "renewed")
            if event == "credentials renewed":
                renewed.setdefault((n, conn), []).append((real, key))
        elif event in ("cannot persist credentials", "credentials not persisted"):
            persist_failed.setdefault((n, conn), []).append(real)
    # A set whose persisting failed is gone when its process is killed (unless restored later).
    restored = {k for k, s in by_key.items() if "restored" in s.sources}
    for kill_real, n in kills:
        for (inc, conn), sets in renewed.items():
            if inc != n or not sets:
                continue
            last_real, last_key = sets[-1]
            fails = persist_failed.get((inc, conn), [])
            if any(last_real <= f <= kill_real for f in fails) and last_key not in restored:
                by_key[last_key].end = clock.at(kill_real)
    # Keys clients were served that the logs do not attribute (should not happen): still held.
    for o in obs:
        if o.ok and o.key and o.key not in by_key and o.key in issued:
            by_key[o.key] = HeldSet(o.key, o.conn, o.t0, issued[o.key], 0, sources={"served"})
    out: dict[str, list[HeldSet]] = {}
    for held in by_key.values():
        out.setdefault(held.conn, []).append(held)
    return out


def connection_log(sidecar: Sidecar) -> dict[str, list[tuple[float, int, str]]]:
    """Per connection, what the daemon logged about it: (real time, incarnation, event)."""
    out: dict[str, list[tuple[float, int, str]]] = {}
    for n, e in sidecar.parsed_logs():
        conn, when, event = e.get("connection"), e.get("timestamp"), e.get("event")
        if e.get("audit"):
            continue  # "credentials handed out": one per answer, says nothing of the state
        if isinstance(conn, str) and isinstance(when, str) and isinstance(event, str):
            out.setdefault(conn, []).append((stamp(when), n, event))
    for rows in out.values():
        rows.sort()
    return out


def daemon_said(log: dict[str, list[tuple[float, int, str]]], o: Obs) -> str | None:
    """The daemon's last log line about the connection before the answer, with its process."""
    rows = [r for r in log.get(o.conn, []) if r[0] <= o.r1]
    if not rows:
        return None
    real, n, event = rows[-1]
    return f"{event} (daemon #{n}, {o.r1 - real:.1f} s before)"


def replaced_by_shorter(sets: list[HeldSet], good: HeldSet, o: Obs) -> bool:
    """Whether the daemon had since taken a set that expires sooner (duration_seconds lowered
    by a reload): the good set still existed, but the daemon had let go of it on purpose."""
    return any(good.start < s.start <= o.t0 and s.expires < good.expires for s in sets)


def good_set(sets: list[HeldSet], o: Obs) -> HeldSet | None:
    """The good set with the most time left when the request ended, if any."""
    good = [s for s in sets if s.start <= o.t0 and s.expires - o.t1 >= MIN_LEFT + TOLERANCE
            and (s.end is None or s.end >= o.t1)]
    return max(good, key=lambda s: s.expires, default=None)


def context_of(o: Obs, events: list[Event]) -> str:
    """The last schedule step before the request (what the failure most likely follows)."""
    before = [e for e in events if e.real <= o.r1 and e.kind not in QUIET_EVENTS]
    if not before:
        return "start"
    last = before[-1]
    return f"{last.kind} (+{o.r1 - last.real:.1f} s before the answer)"


def error_class(error: str) -> str:
    text = re.sub(r"ASIA[A-Z0-9]{16}", "ASIA...", error)
    text = re.sub(r"\b\d+(\.\d+)?\b", "N", text)
    return text[:110]


def judge(sidecar: Sidecar, clock: TestClock, stats: dict[str, Any], obs: list[Obs],
          kills: list[tuple[float, int]], gaps: list[tuple[float, float]]) -> dict[str, Any]:
    issued = {str(s["accessKeyId"]): stamp(str(s["expiration"])) for s in stats["issued"]}
    sets = held_sets(sidecar, clock, issued, obs, kills)
    logged_keys = {s.key: s.conn for held in sets.values() for s in held if s.sources - {"served"}}
    kinds: dict[str, Counter[str]] = {}
    failures: list[Obs] = []
    excused: Counter[str] = Counter()
    no_good: list[Obs] = []
    replaced: list[Obs] = []
    least_left = math.inf
    below_60: list[Obs] = []
    expired: list[Obs] = []
    foreign: list[Obs] = []
    for o in sorted(obs, key=lambda o: o.r0):
        counts = kinds.setdefault(o.kind, Counter())
        counts["requests"] += 1
        if o.ok:
            counts["ok"] += 1
            assert o.expires is not None
            left = o.expires - o.t0  # the daemon served it at or after t0
            least_left = min(least_left, left)
            if left < MIN_LEFT - TOLERANCE:
                below_60.append(o)
            if left <= 0:
                expired.append(o)
            if o.key not in logged_keys or logged_keys[o.key] != o.conn:
                foreign.append(o)
            continue
        counts["errors"] += 1
        if any(o.r0 <= k <= o.r1 for k, _ in kills) and o.status is None:
            excused["in flight at kill -9"] += 1
            counts["excused"] += 1
            continue
        if o.status is None and any(o.r1 >= a and o.r0 <= b + GAP_SLACK for a, b in gaps):
            excused["connection-level error in the restart gap"] += 1
            counts["excused"] += 1
            continue
        if o.error == TOKEN_LAPSED:
            excused["IMDS token past its TTL after a clock jump"] += 1
            counts["excused"] += 1
            continue
        best = good_set(sets.get(o.conn, []), o)
        if best is None:
            no_good.append(o)
            counts["errors without a good set"] += 1
            continue
        if replaced_by_shorter(sets[o.conn], best, o):
            # A reload lowered duration_seconds: the daemon let the longer set go on purpose.
            excused["the good set had been replaced by a shorter-lived one (a reload)"] += 1
            counts["excused"] += 1
            replaced.append(o)
            continue
        counts["failures while good"] += 1
        failures.append(o)

    conn_log = connection_log(sidecar)

    def show(o: Obs) -> dict[str, Any]:
        s = good_set(sets.get(o.conn, []), o)
        return {"test_time": iso(o.t0), "real_time": iso(o.r0), "kind": o.kind,
                "connection": o.conn, "error": o.error, "status": o.status,
                "after": context_of(o, sidecar.events), "daemon_said": daemon_said(conn_log, o),
                "good_set": None if s is None else
                {"key": s.key[:8] + "...", "seconds_left": round(s.expires - o.t1),
                 "logged_by_incarnation": s.incarnation, "how": sorted(s.sources),
                 "replaced_by_a_shorter_lived_set": replaced_by_shorter(sets[o.conn], s, o)}}

    classes: Counter[tuple[str, str, str]] = Counter()
    examples: dict[tuple[str, str, str], Obs] = {}
    said: Counter[str] = Counter()
    for o in failures:
        ctx = context_of(o, sidecar.events).split(" (+")[0]
        cls = (o.kind, ctx, error_class(o.error))
        said[(daemon_said(conn_log, o) or "nothing").split(" (daemon")[0]] += 1
        classes[cls] += 1
        examples.setdefault(cls, o)
    return {
        "requests_by_kind": {k: dict(v) for k, v in sorted(kinds.items())},
        "failures_while_good": {
            "count": len(failures),
            "first": [show(o) for o in failures[:20]],
            "classes": [{"kind": k, "after": ctx, "error": err, "count": n,
                         "first": show(examples[(k, ctx, err)])}
                        for (k, ctx, err), n in classes.most_common()],
            "connections": len({o.conn for o in failures}),
            "daemon_last_said": dict(said.most_common()),
            "all": [[iso(o.r0), o.kind, o.conn, o.status, context_of(o, sidecar.events)]
                    for o in failures[:5000]],
        },
        "errors_without_a_good_set": {"count": len(no_good),
                                      "first": [show(o) for o in no_good[:5]]},
        "excused": dict(excused),
        "replaced_by_a_shorter_lived_set_first": [show(o) for o in replaced[:5]],
        "served": {
            "least_seconds_left": None if least_left == math.inf else round(least_left, 1),
            "under_60_s": len(below_60), "expired": len(expired),
            "under_60_s_first": [show(o) | {"left": round((o.expires or 0) - o.t0)}
                                 for o in below_60[:5]],
            "key_not_logged_for_that_connection": len(foreign),
            "foreign_first": [asdict(o) | {"secret": None} for o in foreign[:5]],
        },
        "restart_gaps_s": [round(b - a, 1) for a, b in gaps],
        "sets_held": sum(len(v) for v in sets.values()),
        "sets_lost_unpersisted_at_kill": sum(1 for v in sets.values() for s in v if s.end),
    }


# --- resources -----------------------------------------------------------------------------------


class Monitor(threading.Thread):
    def __init__(self, sidecar: Sidecar, every: float, deadline: float) -> None:
        super().__init__(daemon=True, name="monitor")
        self.sidecar, self.every, self.deadline = sidecar, every, deadline
        self.samples: list[dict[str, Any]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(self.every) and time.monotonic() < self.deadline:
            pid = self.sidecar.pid
            if pid is None:
                continue
            with contextlib.suppress(OSError, RuntimeError):
                self.samples.append({"real": round(time.time(), 1), "pid": pid,
                                     "incarnation": self.sidecar.incarnation,
                                     "rss_mib": round(c.rss_mib(pid), 1),
                                     "fds": len(os.listdir(f"/proc/{pid}/fd"))})

    def summary(self) -> dict[str, Any]:
        if not self.samples:
            return {}
        by_inc: dict[int, list[dict[str, Any]]] = {}
        for s in self.samples:
            by_inc.setdefault(int(s["incarnation"]), []).append(s)
        longest = max(by_inc.values(), key=len)
        return {
            "samples": len(self.samples),
            "rss_mib": {"first": self.samples[0]["rss_mib"], "last": self.samples[-1]["rss_mib"],
                        "max": max(s["rss_mib"] for s in self.samples),
                        "longest_process_first": longest[0]["rss_mib"],
                        "longest_process_last": longest[-1]["rss_mib"]},
            "fds": {"first": self.samples[0]["fds"], "last": self.samples[-1]["fds"],
                    "max": max(s["fds"] for s in self.samples),
                    "longest_process_first": longest[0]["fds"],
                    "longest_process_last": longest[-1]["fds"]},
            "longest_process_samples": len(longest),
            "series": [[s["real"], s["incarnation"], s["rss_mib"], s["fds"]]
                       for s in self.samples],
        }


# --- main ----------------------------------------------------------------------------------------


def upstream(stats: dict[str, Any], conns: list[dict[str, Any]], span: float,
             events: list[Event]) -> dict[str, Any]:
    """CreateSession calls made vs the ideal: one initial set per connection, then one renewal
    per half lifetime (the daemon renews with 50-60 % of the life left). Failed calls are held
    to what the retry policy allows at its fastest (every jittered delay at its floor) over the
    test-clock time the upstream was failing: a bound that holds however fast the machine."""
    ideal = sum(1 + math.floor(span / (0.5 * float(conn.get("duration_seconds", 3600))))
                for conn in conns)
    budget = len(conns) * sum(policy_attempts(seconds) for seconds in failing_spans(events))
    return {"calls": stats["calls"], "succeeded": stats["succeeded"], "failed": stats["failed"],
            "issued": len(stats["issued"]), "ideal": ideal, "test_clock_span_s": round(span),
            "calls_per_ideal": round(stats["calls"] / ideal, 2) if ideal else None,
            "failed_budget": budget}


def failing_spans(events: list[Event]) -> list[float]:
    """Test-clock seconds of each stretch with faults set, cut where the daemon restarted (a
    new process starts its backoff afresh)."""
    spans, since = [], None
    for event in events:
        if event.kind == "faults" and any(f in event.detail for f in FAILING_FAULTS):
            since = event.test if since is None else since
        elif since is not None and event.kind in ("faults cleared", "up"):
            spans.append(event.test - since + FAULT_SLACK)
            since = event.test if event.kind == "up" else None
    return spans


def policy_attempts(seconds: float) -> int:
    """The most calls one connection may make in ``seconds`` of failures: the first, then one
    after each backoff delay at its jitter floor (half the nominal), plus one in flight at each
    end of the stretch."""
    policy, attempts, elapsed = Policy(), 1, 0.0
    while True:
        elapsed += 0.5 * min(policy.retry_cap, policy.retry_base * 2.0 ** (attempts - 1))
        if elapsed > seconds:
            return attempts + 2
        attempts += 1


def emulator_stats(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "/_emulator/stats", timeout=120) as response:
        return dict(json.loads(response.read()))


def table(result: dict[str, Any]) -> str:
    rows = []
    for kind, counts in result["requests_by_kind"].items():
        rows.append([kind, counts.get("requests", 0), counts.get("ok", 0), counts.get("errors", 0),
                     counts.get("errors without a good set", 0), counts.get("excused", 0),
                     counts.get("failures while good", 0)])
    head = ["client", "requests", "ok", "errors", "no good set", "excused", "failures while good"]
    served = result["served"]
    up = result["upstream"]
    lines = [c.markdown(head, rows), "",
             f"failures while a good set existed: {result['failures_while_good']['count']}",
             f"served: least {served['least_seconds_left']} s left; under 60 s: "
             f"{served['under_60_s']}; expired: {served['expired']}; key not the connection's: "
             f"{served['key_not_logged_for_that_connection']}",
             f"upstream CreateSession: {up['calls']} calls ({up['failed']} failed) vs ideal "
             f"{up['ideal']} over {up['test_clock_span_s']} s of test clock; failed calls the "
             f"retry policy allows at most: {up['failed_budget']}",
             f"done: {json.dumps(result['done'])}"]
    res = result.get("resources", {})
    if res:
        lines.append(f"daemon RSS MiB first/last/max {res['rss_mib']['first']}/"
                     f"{res['rss_mib']['last']}/{res['rss_mib']['max']}; fds first/last/max "
                     f"{res['fds']['first']}/{res['fds']['last']}/{res['fds']['max']}")
    for what, n in result["failures_while_good"]["daemon_last_said"].items():
        lines.append(f"  {n:5d} failures; the daemon's last line on that connection: {what}")
    for cls in result["failures_while_good"]["classes"][:12]:
        lines.append(f"  {cls['count']:5d} x {cls['kind']:<18} after {cls['after']:<24} "
                     f"{cls['error']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=None,
                        help="Roles Anywhere connections (default 300; 40 with --short)")
    parser.add_argument("--minutes", type=float, default=None,
                        help="wall time of the fault schedule (default 20; --short runs one cycle)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None,
                        help="write the JSON results here (default bench/results/soak.json, "
                        "none with --short)")
    parser.add_argument("--short", action="store_true",
                        help="CI profile: 40 connections, one cycle of faults, under 3 minutes")
    parser.add_argument("--keep", type=Path, default=None,
                        help="copy the daemon's and the emulator's logs into this directory")
    parser.add_argument("--boto3-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.boto3_worker:
        boto3_worker(args.boto3_worker)
        return
    if args.connections is None:
        args.connections = 40 if args.short else 300
    if args.minutes is None:
        args.minutes = 2.2 if args.short else 20.0
    if args.connections < IMDS_LISTENERS:
        parser.error(f"--connections must be at least {IMDS_LISTENERS}")

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    began = time.monotonic()
    result = run(args)
    result["wall_seconds"] = round(time.monotonic() - began, 1)
    text = table(result)
    result["tables"] = [text]
    print(text)
    print(f"wall time {result['wall_seconds']} s")
    if args.out is None and not args.short:
        args.out = c.RESULTS / "soak.json"
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        doc = {"benchmark": "soak", "when": iso(time.time()), "machine": c.machine(), **result}
        args.out.write_text(json.dumps(doc, indent=2, default=str) + "\n")
        print(f"written to {args.out}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="soak-")))
        clock = TestClock(tmp / "clock-offset")
        env = c.clock_env(clock.path)
        disk = Disk(tmp / "state", size_mib=max(4, args.connections // 8))
        stack.callback(disk.unmount)
        material = h.make_pki(tmp / "pki")
        emu = stack.enter_context(h.emulator(tmp, [material.ca_file], env=env))
        conns = c.connections(args.connections, material, emu.url)
        sidecar = Sidecar(tmp, conns, env, clock)
        for _, sock in sidecar.sockets:
            stack.callback(sock.close)
        stack.callback(sidecar.stop)
        print(f"soak: {args.connections} connections, seed {args.seed}, "
              f"{args.minutes:g} min of faults; state_dir on tmpfs: {disk.mounted}", flush=True)
        sidecar.start()
        h.wait_for(sidecar.ready, timeout=300, what="every connection to be ready")
        start_test = clock.now()
        tokens = {conn["name"]: (tmp / "state" / "tokens" / f"{conn['name']}.token").read_text()
                  for conn in conns}
        deadline = time.monotonic() + args.minutes * 60 + 120
        rec = Recorder(clock)
        clients = Clients(rec, [conn["name"] for conn in conns], tokens,
                          {conn["name"]: sidecar.url(f"imds-{conn['name']}")
                           for conn in conns[:IMDS_LISTENERS]},
                          sidecar.url("container"), sidecar.socket_path, args.seed, deadline)
        stop_file, boto3_out = tmp / "boto3.stop", tmp / "boto3.jsonl"
        spec = {"clock_file": str(clock.path), "stop_file": str(stop_file), "out": str(boto3_out),
                "deadline": time.time() + args.minutes * 60 + 120,
                "base": sidecar.url("container"),
                "conns": [[n, tokens[n]] for n in random.Random(args.seed).sample(
                    list(tokens), len(tokens))]}
        (tmp / "boto3.json").write_text(json.dumps(spec))
        empty = tmp / "aws-empty"
        empty.write_text("")
        worker_env = h.clean_env(AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE=str(empty),
                                 AWS_SHARED_CREDENTIALS_FILE=str(empty))
        worker = stack.enter_context(c.process(
            [sys.executable, str(Path(__file__).resolve()), "--boto3-worker",
             str(tmp / "boto3.json")], tmp / "boto3.log", worker_env))
        stack.callback(stop_file.touch)
        monitor = Monitor(sidecar, 2.0 if args.short else 5.0, deadline)
        monitor.start()
        clients.start()
        soak = Soak(args, tmp, clock, emu, sidecar, disk)
        time.sleep(3)
        try:
            soak.run(args.minutes * 60)
            time.sleep(3)  # a last quiet stretch
        except KeyboardInterrupt:
            soak.stop.set()
            print("soak: interrupted; judging what was recorded", flush=True)
        finally:
            soak.stop.set()
            clients.join()
            stop_file.touch()
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.wait(30)
            monitor.halt.set()
            monitor.join(10)
        stats = emulator_stats(emu.url)
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            for path in [*sidecar.logs, tmp / "emulator.log", boto3_out, sidecar.config_path]:
                if path.exists():
                    shutil.copy(path, args.keep / path.name)
        rec.extend(read_boto3(boto3_out, clock))
        result = judge(sidecar, clock, stats, rec.obs, soak.kills, soak.gaps)
        if args.keep:
            with (args.keep / "observations.jsonl").open("w") as out:
                for o in sorted(rec.obs, key=lambda o: o.r0):
                    out.write(json.dumps(asdict(o)) + "\n")
        reloads = Counter(str(e.get("event")) for _, e in sidecar.parsed_logs()
                          if str(e.get("event", "")).startswith(("reloaded", "reload")))
        result.update(
            parameters={"connections": args.connections, "minutes": args.minutes,
                        "seed": args.seed, "short": args.short,
                        "imds_listeners": IMDS_LISTENERS, "tolerance_s": TOLERANCE,
                        "client_timeout_s": CLIENT_TIMEOUT, "disk_on_tmpfs": disk.mounted},
            upstream=upstream(stats, conns, clock.now() - start_test, sidecar.events),
            done=dict(soak.counts) | {"daemon_reload_log": dict(reloads)},
            resources=monitor.summary(),
            client_crashes=clients.crashes,
            schedule=[{"real": iso(e.real), "test": iso(e.test), "kind": e.kind,
                       "detail": e.detail} for e in sidecar.events],
        )
        return result
    raise AssertionError("unreachable")


if __name__ == "__main__":
    main()
