"""A reverse proxy in front of moto that lets through only requests signed with a served set.

    python tests/helpers/sigcheck_proxy.py --listen 127.0.0.1:0 --upstream http://127.0.0.1:PORT \
        --credentials CREDS.json --log LOG.jsonl --ready-file READY.json

CREDS.json holds the served sets (a list of {AccessKeyId, SecretAccessKey, Token}); it is read
again whenever it changes, so a test can name the sets the daemon serves once it serves them.
Every request must carry a SigV4 ``Authorization`` header whose Credential names a served
AccessKeyId, an ``X-Amz-Security-Token`` equal to that set's token, and a signature that
verifies with the served secret (canonical request rebuilt from what arrived; a hex payload hash
is checked against the body; ``STREAMING-AWS4-HMAC-SHA256-PAYLOAD`` chunk signatures are checked
chunk by chunk). Anything else — unsigned, presigned, SigV2, another key, a bad signature — gets
a 403 S3 ``AccessDenied`` and never reaches moto. Every verdict is appended to the log before the
response goes out, so a test that has seen its client exit can read a complete log.

In tests:

    with sigcheck_proxy(tmp, moto_url, creds, netns=ns) as proxy:
        proxy.url; proxy.verdicts()  # one per request, in order
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import re
import signal
import socket
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

if __package__ in (None, ""):  # run as a script: make `tests.helpers` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from aiohttp import ClientSession, ClientTimeout, web
from yarl import URL

from tests.helpers import procs
from tests.helpers.netns import NetNS

ALGORITHM = "AWS4-HMAC-SHA256"
STREAMING = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
AUTH_RE = re.compile(
    r"^AWS4-HMAC-SHA256\s+Credential=(?P<cred>[^,\s]+),\s*SignedHeaders=(?P<signed>[^,\s]+),"
    r"\s*Signature=(?P<sig>[0-9a-f]{64})\s*$")
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
              "trailer", "transfer-encoding", "upgrade", "content-length", "expect"}
MAX_SKEW_SECONDS = 15 * 60


class Rejected(Exception):
    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class Served:
    access_key_id: str
    secret_access_key: str
    token: str | None


@dataclass
class Verdict:
    ok: bool
    code: str
    reason: str
    access_key_id: str = ""
    payload: str = ""
    chunks: int = 0


# --- SigV4 --------------------------------------------------------------------------------------

def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    key = _hmac(("AWS4" + secret).encode(), date)
    key = _hmac(key, region)
    key = _hmac(key, service)
    return _hmac(key, "aws4_request")


def _uri_encode(value: str, *, keep_slash: bool) -> str:
    return quote(value, safe="/-_.~" if keep_slash else "-_.~")


def canonical_query(raw_query: str) -> str:
    pairs: list[tuple[str, str]] = []
    for part in raw_query.split("&") if raw_query else []:
        key, _, value = part.partition("=")
        pairs.append((_uri_encode(unquote(key.replace("+", "%20")), keep_slash=False),
                      _uri_encode(unquote(value.replace("+", "%20")), keep_slash=False)))
    return "&".join(f"{k}={v}" for k, v in sorted(pairs))


def canonical_headers(headers: Sequence[tuple[str, str]], signed: list[str]) -> str:
    values: dict[str, list[str]] = {}
    for name, value in headers:
        values.setdefault(name.lower(), []).append(" ".join(value.split()))
    missing = [name for name in signed if name not in values]
    if missing:
        raise Rejected("AccessDenied", f"signed headers missing from the request: {missing}")
    return "".join(f"{name}:{','.join(values[name])}\n" for name in signed)


def string_to_sign(amz_date: str, scope: str, canonical_request: str) -> str:
    digest = hashlib.sha256(canonical_request.encode()).hexdigest()
    return f"{ALGORITHM}\n{amz_date}\n{scope}\n{digest}"


def _header(headers: Sequence[tuple[str, str]], name: str) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def verify(method: str, raw_path: str, headers: Sequence[tuple[str, str]], body: bytes,
           served: Served | Sequence[Served], now: datetime | None = None) -> Verdict:
    """Check one request against the served set(s); never raises."""
    sets = [served] if isinstance(served, Served) else list(served)
    try:
        return _verify(method, raw_path, headers, body, sets, now or datetime.now(UTC))
    except Rejected as exc:
        return Verdict(False, exc.code, exc.reason)


def _verify(method: str, raw_path: str, headers: Sequence[tuple[str, str]], body: bytes,
            sets: list[Served], now: datetime) -> Verdict:
    path, _, query = raw_path.partition("?")
    if "X-Amz-Signature=" in query or "Signature=" in query:
        raise Rejected("AccessDenied", "presigned (query) authentication is not accepted here")
    auth = _header(headers, "authorization")
    if auth is None:
        raise Rejected("AccessDenied", "unsigned request (no Authorization header)")
    if auth.startswith("AWS "):
        raise Rejected("AccessDenied", f"SigV2 request ({auth.split(':')[0]}), SigV4 required")
    match = AUTH_RE.match(auth)
    if match is None:
        raise Rejected("AccessDenied", f"unparseable Authorization: {auth[:80]}")
    cred = match["cred"].split("/")
    if len(cred) != 5 or cred[4] != "aws4_request":
        raise Rejected("AccessDenied", f"bad credential scope {match['cred']}")
    key_id, date, region, service = cred[:4]
    served = next((one for one in sets if one.access_key_id == key_id), None)
    if served is None:
        raise Rejected("InvalidAccessKeyId", f"signed with {key_id}, not a served key")
    token = _header(headers, "x-amz-security-token")
    if served.token is not None and token != served.token:
        raise Rejected("InvalidToken", "X-Amz-Security-Token missing or not the served token"
                       if token is None or token else "empty X-Amz-Security-Token")
    amz_date = _header(headers, "x-amz-date")
    if amz_date is None or not amz_date.startswith(date):
        raise Rejected("AccessDenied", f"x-amz-date {amz_date!r} does not match scope {date}")
    when = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    if abs((now - when).total_seconds()) > MAX_SKEW_SECONDS:
        raise Rejected("RequestTimeTooSkewed", f"x-amz-date {amz_date} too far from now")
    signed = match["signed"].split(";")
    if "host" not in signed:
        raise Rejected("AccessDenied", "host is not a signed header")
    if served.token is not None and "x-amz-security-token" not in signed and service != "s3":
        raise Rejected("AccessDenied", "x-amz-security-token not signed")
    payload = _header(headers, "x-amz-content-sha256")
    payload_hash = payload if payload is not None else hashlib.sha256(body).hexdigest()
    scope = f"{date}/{region}/{service}/aws4_request"
    key = signing_key(served.secret_access_key, date, region, service)
    header_block = canonical_headers(headers, signed)
    # The canonical URI as sent, then as S3 would rebuild it from its decoded form.
    candidates = dict.fromkeys([path or "/", _uri_encode(unquote(path), keep_slash=True) or "/"])
    signature = ""
    for uri in candidates:
        request = "\n".join([method, uri, canonical_query(query), header_block,
                             ";".join(signed), payload_hash])
        signature = hmac.new(key, string_to_sign(amz_date, scope, request).encode(),
                             hashlib.sha256).hexdigest()
        if hmac.compare_digest(signature, match["sig"]):
            break
    else:
        raise Rejected("SignatureDoesNotMatch", "signature does not verify with the served secret")
    verdict = Verdict(True, "OK", "signature verified", key_id, payload or "(none)")
    if payload == STREAMING:
        verdict.chunks = _verify_chunks(body, signature, key, amz_date, scope)
        verdict.reason += f"; {verdict.chunks} chunk signatures verified"
    elif payload == "UNSIGNED-PAYLOAD":
        verdict.reason += "; payload unsigned"
    elif payload is not None and re.fullmatch(r"[0-9a-f]{64}", payload):
        if hashlib.sha256(body).hexdigest() != payload:
            raise Rejected("XAmzContentSHA256Mismatch", "body does not match x-amz-content-sha256")
        verdict.reason += "; payload hash verified"
    else:
        verdict.reason += f"; payload mode {payload!r} not verified"
    return verdict


def _verify_chunks(body: bytes, seed: str, key: bytes, amz_date: str, scope: str) -> int:
    previous, offset, count = seed, 0, 0
    while True:
        end = body.find(b"\r\n", offset)
        if end < 0:
            raise Rejected("IncompleteBody", "aws-chunked body ends inside a chunk header")
        size_hex, _, ext = body[offset:end].decode("latin-1").partition(";")
        if not ext.startswith("chunk-signature="):
            raise Rejected("AccessDenied", "aws-chunked chunk without a chunk-signature")
        size = int(size_hex, 16)
        data = body[end + 2:end + 2 + size]
        if len(data) != size or body[end + 2 + size:end + 4 + size] != b"\r\n":
            raise Rejected("IncompleteBody", "aws-chunked chunk shorter than its size")
        to_sign = "\n".join(["AWS4-HMAC-SHA256-PAYLOAD", amz_date, scope, previous,
                             EMPTY_SHA256, hashlib.sha256(data).hexdigest()])
        expected = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, ext.removeprefix("chunk-signature=")):
            raise Rejected("SignatureDoesNotMatch", f"chunk {count} signature does not verify")
        previous, offset, count = expected, end + 4 + size, count + 1
        if size == 0:
            return count


# --- the proxy ----------------------------------------------------------------------------------

def _s3_error(code: str, message: str) -> bytes:
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>{message}</Message></Error>").encode()


def load_served(path: Path) -> list[Served]:
    raw = json.loads(path.read_text())
    items = raw if isinstance(raw, list) else [raw]
    return [Served(i["AccessKeyId"], i["SecretAccessKey"], i.get("Token")) for i in items]


class Proxy:
    def __init__(self, upstream: str, credentials: Path, log_path: Path) -> None:
        self.upstream = upstream.rstrip("/")
        self.credentials = credentials
        self.loaded: tuple[int, list[Served]] = (-1, [])
        self.log = log_path.open("a")
        self.session: ClientSession | None = None

    def served(self) -> list[Served]:
        stamp = self.credentials.stat().st_mtime_ns
        if stamp != self.loaded[0]:
            self.loaded = (stamp, load_served(self.credentials))
        return self.loaded[1]

    def record(self, request: web.Request, verdict: Verdict, status: int) -> None:
        self.log.write(json.dumps({
            "method": request.method, "path": request.raw_path, "ok": verdict.ok,
            "code": verdict.code, "reason": verdict.reason,
            "access_key_id": verdict.access_key_id, "payload": verdict.payload,
            "chunks": verdict.chunks, "status": status,
            "user_agent": request.headers.get("User-Agent", ""),
        }) + "\n")
        self.log.flush()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers]
        verdict = verify(request.method, request.raw_path, headers, body, self.served())
        if not verdict.ok:
            self.record(request, verdict, 403)
            return web.Response(status=403, body=_s3_error(verdict.code, verdict.reason),
                                content_type="application/xml")
        assert self.session is not None
        forward = [(k, v) for k, v in headers if k.lower() not in HOP_BY_HOP]
        async with self.session.request(
                request.method, URL(self.upstream + request.raw_path, encoded=True),
                headers=forward, data=body if body else None, allow_redirects=False,
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        ) as upstream:
            data = await upstream.read()
            out_headers = [(k, v) for k, v in upstream.headers.items()
                           if k.lower() not in HOP_BY_HOP]
            if request.method == "HEAD" and "Content-Length" in upstream.headers:
                out_headers.append(("Content-Length", upstream.headers["Content-Length"]))
            else:
                out_headers.append(("Content-Length", str(len(data))))
            self.record(request, verdict, upstream.status)
            response = web.Response(status=upstream.status, body=data if data else None)
            response.headers.clear()
            for key, value in out_headers:
                response.headers.add(key, value)
            return response


async def serve(listen: str, upstream: str, credentials: Path, log_path: Path,
                ready_file: Path) -> None:
    host, _, port = listen.rpartition(":")
    proxy = Proxy(upstream, credentials, log_path)
    proxy.session = ClientSession(auto_decompress=False, timeout=ClientTimeout(total=60))
    app = web.Application(client_max_size=256 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    runner = web.AppRunner(app, access_log=None)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await runner.setup()
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), int(port)))
        sock.listen(128)
        sock.setblocking(False)
        await web.SockSite(runner, sock).start()
        bound = sock.getsockname()[1]
        url = f"http://[{host.strip('[]')}]:{bound}" if ":" in host else f"http://{host}:{bound}"
        tmp = ready_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "url": url}))
        tmp.replace(ready_file)
        await stop.wait()
    finally:
        await runner.cleanup()
        await proxy.session.close()
        proxy.log.close()


# --- for tests ----------------------------------------------------------------------------------

@dataclass
class SigcheckProxy:
    proc: procs.Proc
    url: str
    log_path: Path
    credentials_path: Path

    def serve(self, *sets: Served) -> None:
        """Replace the sets the proxy accepts (atomically; it rereads the file on change)."""
        tmp = self.credentials_path.with_suffix(".tmp")
        tmp.write_text(json.dumps([{"AccessKeyId": one.access_key_id,
                                    "SecretAccessKey": one.secret_access_key,
                                    "Token": one.token} for one in sets]))
        tmp.replace(self.credentials_path)

    def reset_log(self) -> None:
        self.log_path.write_text("")

    def verdicts(self) -> list[dict[str, Any]]:
        if not self.log_path.exists():
            return []
        return [json.loads(line) for line in self.log_path.read_text().splitlines()]

    def assert_all_signed(self, access_key_id: str, minimum: int = 1) -> list[dict[str, Any]]:
        """Every request so far verified, signed with `access_key_id`."""
        verdicts = self.verdicts()
        assert len(verdicts) >= minimum, f"only {len(verdicts)} requests reached the proxy"
        bad = [v for v in verdicts if not v["ok"] or v["access_key_id"] != access_key_id]
        assert not bad, f"requests not signed with the served set: {bad}"
        return verdicts


@contextlib.contextmanager
def sigcheck_proxy(tmp: Path, upstream: str, *served: Served, listen: str = "127.0.0.1:0",
                   netns: NetNS | None = None) -> Iterator[SigcheckProxy]:
    """Start the proxy (inside `netns` if given); `served` may be empty until serve() names
    the sets."""
    tmp.mkdir(parents=True, exist_ok=True)
    creds = tmp / "sigcheck-credentials.json"
    creds.write_text("[]")
    log_path = tmp / "sigcheck.jsonl"
    ready = tmp / "sigcheck-ready.json"
    ready.unlink(missing_ok=True)
    args = [procs.PYTHON, "-W", "error", str(Path(__file__).resolve()), "--listen", listen,
            "--upstream", upstream, "--credentials", str(creds), "--log", str(log_path),
            "--ready-file", str(ready)]
    log = tmp / "sigcheck.log"
    starter = (netns.started("sigcheck", args, log) if netns is not None
               else procs.started("sigcheck", args, log))
    with starter as proc:
        info = procs.wait_ready_file(proc, ready)
        proxy = SigcheckProxy(proc, str(info["url"]), log_path, creds)
        if served:
            proxy.serve(*served)
        yield proxy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--credentials", type=Path, required=True)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--ready-file", type=Path, required=True)
    args = parser.parse_args(argv)
    load_served(args.credentials)  # fail early on a bad file
    asyncio.run(serve(args.listen, args.upstream, args.credentials, args.log, args.ready_file))
    return 0


if __name__ == "__main__":
    sys.exit(main())
