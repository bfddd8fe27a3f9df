"""The container-credentials door: every connection on one listener, one token each.

As docs/protocols.md ("Container credentials") says: ``GET /v1/credentials/<name>`` with
``Authorization: <token>`` (the raw token, no scheme); errors are JSON ``{"Code", "Message"}``.
Each connection has its own token, so one listener serves many apps, each only its own connection.

What a caller learns depends on what it proves, never on which names exist:

- no token: 401, whatever the name;
- a token that belongs to no connection: 403, whatever the name;
- a connection's token on another path: 404, whether or not that other name exists;
- its own path: 200 with the set, or 503 while nothing fresh is held.

The presented token is hashed and compared in constant time with every connection's token digest
(no early exit), so neither the timing nor the answer depends on the name in the path.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from aiohttp import web

from credential_sidecar.credentials import Credentials
from credential_sidecar.doors.access import Access
from credential_sidecar.doors.container_tokens import TokenBook
from credential_sidecar.doors.guards import HostGuard, forwarded
from credential_sidecar.logs import get_logger

log = get_logger()

ALIASES = ("169.254.170.2", "169.254.170.23")  # the hosts ECS and EKS Pod Identity use
PATH_RE = re.compile(r"^/v1/credentials/([^/]+)$")
DOOR = "container"
















def _error(status: int, code: str, message: str) -> web.Response:
    return web.Response(text=json.dumps({"Code": code, "Message": message}), status=status,
                        content_type="application/json")


class ContainerApp:
    def __init__(
        self,
        tokens: TokenBook,
        lookup: Callable[[str], Credentials | None],
        guard: HostGuard,
        *,
        on_served: Callable[[str], None] | None = None,
        access: Access | None = None,
    ) -> None:
        self.tokens = tokens
        self.lookup = lookup
        self.guard = guard
        self.on_served = on_served
        self.access = access  # who may have each set (allowed_uids/gids), and the audit trail
        self._rendered: dict[str, tuple[Credentials, str]] = {}  # see _document
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self.handle)

    def _document(self, name: str, creds: Credentials) -> str:
        """A set's JSON, rendered once per set: asked for far more often than it changes."""
        rendered = self._rendered.get(name)
        if rendered is None or rendered[0] is not creds:
            rendered = self._rendered[name] = (creds, json.dumps(creds.container_document()))
        return rendered[1]

    async def handle(self, request: web.Request) -> web.Response:
        if not self.guard.allows(request.headers.get("Host")):
            return _error(400, "BadHost", "Host header does not name this endpoint")
        if forwarded(request):
            return _error(403, "Forbidden", "requests through a proxy are refused")
        match = PATH_RE.match(request.path)
        if match is None:
            return _error(404, "NotFound", "not found; the path is /v1/credentials/<name>")
        if request.method not in ("GET", "HEAD"):
            response = _error(405, "MethodNotAllowed", "use GET")
            response.headers["Allow"] = "GET, HEAD"
            return response
        name = match.group(1)
        presented = request.headers.get("Authorization", "").strip()
        if not presented:
            return _error(401, "Unauthorized",
                          "the Authorization header must carry the connection's token")
        owner = self.tokens.owner(presented)
        if owner is None:
            log.info("container request refused: unknown token", peer=request.remote)
            return _error(403, "Forbidden", "the token is not valid")
        if owner != name:
            log.info("container request refused: token of another connection", connection=owner,
                     asked=name, peer=request.remote)
            return _error(404, "NotFound", "no connection by that name for this token")
        if self.access is not None:
            refusal = await self.access.refusal(request, DOOR, name)
            if refusal is not None:
                return _error(403, "Forbidden", refusal)
        creds = self.lookup(name)
        if creds is None:
            return _error(503, "CredentialsUnavailable",
                          "no fresh credentials to serve yet; see /status")
        if self.on_served:
            self.on_served(name)
        if self.access is not None:
            await self.access.served(request, DOOR, name, creds)
        return web.Response(text=self._document(name, creds), content_type="application/json")
