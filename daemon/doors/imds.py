"""An IMDS-compatible door serving one connection, as EC2 serves one role.

Every rule in docs/protocols.md, "IMDS", lives here. Tokens are stateless: an expiry
and a nonce sealed with a per-process HMAC key. Checking one is a constant-time
MAC comparison, and no token store can grow however many tokens clients ask for.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import struct
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from credential_sidecar.clock import Clock
from credential_sidecar.credentials import Credentials
from credential_sidecar.doors.access import Access
from credential_sidecar.doors.guards import HostGuard, forwarded

TOKEN_PATH = "/latest/api/token"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"
CREDS_PREFIX = "/latest/meta-data/iam/security-credentials"
MAX_TTL = 21600
_TOKEN = struct.Struct(">Q16s")
_MAC_LEN = 32


_FROM_URLSAFE = bytes.maketrans(b"-_", b"+/")


class TokenSealer:
    def __init__(self, clock: Clock, key: bytes | None = None) -> None:
        self.clock = clock
        # Keyed once; each MAC starts from a copy (cheaper than keying HMAC every request).
        self._keyed = hmac.new(key or secrets.token_bytes(32), digestmod=hashlib.sha256)

    def _mac(self, payload: bytes) -> bytes:
        mac = self._keyed.copy()
        mac.update(payload)
        return mac.digest()

    def issue(self, ttl: int) -> str:
        payload = _TOKEN.pack(int(self.clock.time()) + ttl, secrets.token_bytes(16))
        return base64.urlsafe_b64encode(payload + self._mac(payload)).decode("ascii")

    def valid(self, token: str) -> bool:
        try:
            raw = binascii.a2b_base64(token.encode("ascii").translate(_FROM_URLSAFE),
                                      strict_mode=True)
        except (binascii.Error, UnicodeEncodeError, ValueError):
            return False
        if len(raw) != _TOKEN.size + _MAC_LEN:
            return False
        payload, mac = raw[: _TOKEN.size], raw[_TOKEN.size :]
        if not hmac.compare_digest(mac, self._mac(payload)):
            return False
        expires: float = _TOKEN.unpack(payload)[0]
        return self.clock.time() < expires


@dataclass(frozen=True)
class ImdsIdentity:
    """What the instance-level paths say about this 'instance'."""

    role_name: str
    region: str
    account_id: str | None


def _text(body: str, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(text=body, status=status, content_type="text/plain", headers=headers)


def _error(status: int, code: str, message: str) -> web.Response:
    return _text(json.dumps({"Code": code, "Message": message}), status)


class ImdsApp:
    def __init__(
        self,
        identity: ImdsIdentity,
        lookup: Callable[[], Credentials | None],
        clock: Clock,
        guard: HostGuard,
        *,
        allow_imdsv1: bool = False,
        token_key: bytes | None = None,
        on_served: Callable[[web.Request], None] | None = None,
        access: Access | None = None,
        door: str = "imds",
    ) -> None:
        self.identity = identity
        self.lookup = lookup
        self.clock = clock
        self.guard = guard
        self.allow_imdsv1 = allow_imdsv1
        # A key that outlives the process (derived from the cache key) lets a token live its
        # whole TTL across restarts, as real IMDS tokens do: Go SDK v1 caches one for 6 h and
        # does not retry a 401. Without one, tokens die with the process.
        self.tokens = TokenSealer(clock, token_key)
        self.on_served = on_served
        self.access = access  # who may have the set (allowed_uids/gids), and the audit trail
        self.door = door
        self._rendered: tuple[Credentials, str] | None = None  # see _document
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self.handle)

    def _document(self, creds: Credentials) -> str:
        """The set's JSON, rendered once per set: asked for far more often than it changes."""
        rendered = self._rendered
        if rendered is None or rendered[0] is not creds:
            rendered = self._rendered = (creds, json.dumps(creds.imds_document()))
        return rendered[1]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if not self.guard.allows(request.headers.get("Host")):
            return _error(400, "BadHost", "Host header does not name this endpoint")
        if forwarded(request):
            return _error(403, "Forbidden", "requests through a proxy are refused")
        if self.access is not None:
            refusal = await self.access.refusal(request, self.door, self.identity.role_name)
            if refusal is not None:
                return _error(403, "Forbidden", refusal)
        path = request.path
        if path.rstrip("/") == TOKEN_PATH:
            return self.put_token(request)
        if request.method not in ("GET", "HEAD"):
            response = _error(405, "MethodNotAllowed", "use GET")
            response.headers["Allow"] = "GET, HEAD"
            return response
        denied = self.check_token(request)
        if denied is not None:
            return denied
        return await self.read(path, request)

    def put_token(self, request: web.Request) -> web.Response:
        if request.method != "PUT":
            response = _error(405, "MethodNotAllowed", "use PUT")
            response.headers["Allow"] = "PUT"
            return response
        raw = request.headers.get(TTL_HEADER, "")
        try:
            ttl = int(raw.strip())
        except ValueError:
            ttl = 0
        if not 1 <= ttl <= MAX_TTL:
            return _error(400, "BadRequest", f"{TTL_HEADER} must be between 1 and {MAX_TTL}")
        return _text(self.tokens.issue(ttl), headers={TTL_HEADER: str(ttl)})

    def check_token(self, request: web.Request) -> web.Response | None:
        token = request.headers.get(TOKEN_HEADER)
        if token is None and self.allow_imdsv1:
            return None
        if token is None or not self.tokens.valid(token):
            return _error(401, "Unauthorized", "a valid IMDSv2 token is required")
        return None

    async def read(self, path: str, request: web.Request) -> web.Response:
        key = path.rstrip("/")
        ident = self.identity
        if key == CREDS_PREFIX:
            return _text(ident.role_name)
        if key == f"{CREDS_PREFIX}/{ident.role_name}":
            creds = self.lookup()
            if creds is None:
                return _error(
                    503, "CredentialsUnavailable", "no fresh credentials to serve yet; see /status"
                )
            if self.on_served:
                self.on_served(request)
            if self.access is not None:
                await self.access.served(request, self.door, ident.role_name, creds)
            return _text(self._document(creds))
        if key == "/latest/meta-data/placement/region":
            return _text(ident.region)
        if key == "/latest/dynamic/instance-identity/document":
            document = {"region": ident.region, "accountId": ident.account_id or ""}
            return _text(json.dumps(document, indent=2))
        return _error(404, "NotFound", "not found")
