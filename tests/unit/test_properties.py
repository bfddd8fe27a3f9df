"""Property-based tests: the schedule under any failure pattern, the IMDS parser under any input."""

from __future__ import annotations

import asyncio
import random
import socket
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from credential_sidecar.clock import utc
from credential_sidecar.credentials import Credentials
from credential_sidecar.doors.container import ContainerApp
from credential_sidecar.doors.container_tokens import TokenBook
from credential_sidecar.doors.guards import HostGuard
from credential_sidecar.doors.imds import ImdsApp, ImdsIdentity
from credential_sidecar.renewal.manager import CredentialManager
from credential_sidecar.testing import FakeClock, FakeSource
from credential_sidecar.upstream.base import UpstreamError

ERRORS = st.sampled_from([
    UpstreamError("InternalServerException", "down", 503),
    UpstreamError("ThrottlingException", "slow down", 429, retry_after=30),
    UpstreamError("AccessDeniedException", "Untrusted signing certificate", 403),
    UpstreamError("MalformedResponse", "truncated"),
    UpstreamError("Timeout", "no answer"),
])


async def _run_schedule(lifetime: int, seed: int, outages: list[tuple[int, int, UpstreamError]],
                        hours: int) -> None:
    clock = FakeClock()
    source = FakeSource(clock, lifetime)
    manager = CredentialManager({"c": source}, clock, rng=random.Random(seed))
    await manager.start()
    start = clock.time()
    try:
        await clock.advance(0)
        for _ in range(hours * 3600 // 20):
            t = clock.time() - start
            source.failing = next((e for s, d, e in outages if s <= t < s + d), None)
            await clock.advance(20)
            creds = manager.get("c")
            now = clock.time()
            if creds is not None:
                assert creds.remaining(now) >= 60
                assert creds.secret_access_key
            else:
                # An error is only honest when nothing good was ever issued that is still good.
                good = [c for c in source.issued if c.remaining(now) >= 60 + 20]
                assert not good, "a good set existed but none was served"
        # Backoff bounds the calls: never more than one per second on average.
        assert source.calls <= hours * 3600
    finally:
        await manager.stop()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lifetime=st.integers(900, 43200),
    seed=st.integers(0, 2**32),
    outages=st.lists(
        st.tuples(st.integers(0, 6 * 3600), st.integers(1, 3 * 3600), ERRORS), max_size=4
    ),
)
def test_schedule_never_serves_a_lapsing_set_whatever_fails(
    lifetime: int, seed: int, outages: list[tuple[int, int, UpstreamError]]
) -> None:
    asyncio.run(_run_schedule(lifetime, seed, outages, hours=8))


class ServerThread:
    """A real aiohttp server on loopback in its own thread, for raw-socket property tests."""

    def __init__(self, app: web.Application) -> None:
        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(app, access_log=None)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = int(self.runner.addresses[0][1])
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

    def send(self, raw: bytes) -> tuple[int, bytes]:
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(raw)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        status_line, _, rest = data.partition(b"\r\n")
        return int(status_line.split()[1]), rest


def _imds() -> ImdsApp:
    clock = FakeClock()
    creds = Credentials("ASIAEXAMPLE", "secret-value-123456", "token-value-123456",
                        utc(clock.time() + 3600), utc(clock.time()))
    return ImdsApp(ImdsIdentity("app", "us-east-1", "111122223333"), lambda: creds, clock,
                   HostGuard("127.0.0.1"))


IMDS = _imds()
SERVER = ServerThread(IMDS.app)
HEADER_NAMES = st.sampled_from([
    "Host", "X-aws-ec2-metadata-token", "X-aws-ec2-metadata-token-ttl-seconds",
    "X-Forwarded-For", "Forwarded", "Content-Type", "Authorization", "X-Random",
])
TEXT = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=80)
PATHS = st.one_of(
    st.sampled_from([
        "/latest/api/token", "/latest/meta-data/iam/security-credentials/",
        "/latest/meta-data/iam/security-credentials/app", "/latest/meta-data/placement/region",
        "/latest/dynamic/instance-identity/document", "/", "//", "/latest/../etc", "//::",
    ]),
    st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=60).map(lambda p: "/" + p),
)


@settings(max_examples=300, deadline=None)
@given(
    method=st.sampled_from(["GET", "HEAD", "PUT", "POST", "DELETE", "PATCH", "OPTIONS", "TRACE"]),
    path=PATHS,
    headers=st.dictionaries(HEADER_NAMES, TEXT, max_size=5),
    body=st.binary(max_size=64),
)
def test_imds_answers_any_request_with_a_client_error_or_success_never_a_crash(
    method: str, path: str, headers: dict[str, str], body: bytes
) -> None:
    lines = [f"{method} {path} HTTP/1.1", "Connection: close", f"Content-Length: {len(body)}"]
    headers.setdefault("Host", f"127.0.0.1:{SERVER.port}")
    lines += [f"{name}: {value}" for name, value in headers.items()]
    status, rest = SERVER.send(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    assert status < 500
    if b"SecretAccessKey" in rest:
        # Credentials only ever go out with a valid token (IMDSv1 is off here).
        assert status == 200
        assert IMDS.tokens.valid(headers.get("X-aws-ec2-metadata-token", "").strip())


@dataclass(frozen=True)
class _Owner:
    name: str
    container_token_file: Path
    allowed_uids: tuple[int, ...] = ()
    allowed_gids: tuple[int, ...] = ()


def _container(directory: Path) -> tuple[ContainerApp, dict[str, str]]:
    clock = FakeClock()
    creds = Credentials("ASIAEXAMPLE", "secret-value-123456", "token-value-123456",
                        utc(clock.time() + 3600), utc(clock.time()))
    owners = [_Owner(n, directory / f"{n}.token") for n in ("alpha", "beta")]
    book = TokenBook()
    book.sync(owners, directory)
    tokens = {o.name: o.container_token_file.read_text() for o in owners}
    app = ContainerApp(book, lambda name: creds if name in tokens else None, HostGuard("127.0.0.1"))
    return app, tokens


CONTAINER, CONTAINER_TOKENS = _container(Path(tempfile.mkdtemp(prefix="container-props-")))
CONTAINER_SERVER = ServerThread(CONTAINER.app)
CONTAINER_PATHS = st.one_of(
    st.sampled_from(["/v1/credentials/alpha", "/v1/credentials/beta", "/v1/credentials/",
                     "/v1/credentials/gamma", "/v1/credentials/alpha/", "/", "//::"]),
    PATHS,
)
AUTH = st.one_of(st.none(), TEXT, st.sampled_from(sorted(CONTAINER_TOKENS.values())))


@settings(max_examples=300, deadline=None)
@given(
    method=st.sampled_from(["GET", "HEAD", "PUT", "POST", "DELETE", "OPTIONS"]),
    path=CONTAINER_PATHS,
    auth=AUTH,
    headers=st.dictionaries(HEADER_NAMES.filter(lambda n: n != "Authorization"), TEXT, max_size=4),
    body=st.binary(max_size=64),
)
def test_container_door_answers_any_request_below_500_and_only_the_owner_gets_a_set(
    method: str, path: str, auth: str | None, headers: dict[str, str], body: bytes
) -> None:
    lines = [f"{method} {path} HTTP/1.1", "Connection: close", f"Content-Length: {len(body)}"]
    headers.setdefault("Host", f"127.0.0.1:{CONTAINER_SERVER.port}")
    if auth is not None:
        headers["Authorization"] = auth
    lines += [f"{name}: {value}" for name, value in headers.items()]
    status, rest = CONTAINER_SERVER.send(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    assert status < 500
    if b"SecretAccessKey" in rest:
        name = path.rstrip("/").rsplit("/", 1)[-1]
        assert status == 200 and CONTAINER_TOKENS.get(name) == (auth or "").strip()
