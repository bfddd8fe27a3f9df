"""Health, readiness and status for probes and operators: never a secret.

Still a page a browser could be steered to by DNS rebinding (/status names every connection,
/metrics their counts): requests whose Host header names another host are refused with 400, as
on the credential doors (guards.HostGuard).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from credential_sidecar.doors.guards import HostGuard
from credential_sidecar.renewal.manager import CredentialManager
from credential_sidecar.renewal.state import status_of


class HealthApp:
    def __init__(
        self,
        manager: CredentialManager,
        required: Callable[[], list[str]],
        describe: Callable[[str], dict[str, object]] | None = None,
        doors: Callable[[], dict[str, str]] | None = None,
        guard: HostGuard | None = None,
    ) -> None:
        self.manager = manager
        self.required = required
        self.describe = describe
        self.doors = doors or dict  # door problems: a listener not bound, a token file
        self.guard = guard
        self.app = web.Application(middlewares=[self._host_check] if guard else [])
        self.app.router.add_get("/healthz", self.healthz)
        self.app.router.add_get("/readyz", self.readyz)
        self.app.router.add_get("/status", self.status)

    @web.middleware
    async def _host_check(
        self, request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        if self.guard is not None and not self.guard.allows(request.headers.get("Host")):
            return web.json_response(
                {"Code": "BadHost", "Message": "Host header does not name this endpoint"},
                status=400)
        return await handler(request)

    async def healthz(self, request: web.Request) -> web.Response:
        # Answering at all proves the event loop runs.
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        body = readiness(self.manager, self.required(), self.doors())
        return web.json_response(body, status=200 if body["ready"] else 503)

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response({"connections": status_rows(self.manager, self.describe)})


def readiness(
    manager: CredentialManager, required: list[str], doors: dict[str, str]
) -> dict[str, object]:
    """The whole truth for /readyz and the control socket: what is not served and why, what is
    served while renewals fail, what a reload left pending, and door-level problems."""
    problems = manager.problems(required)
    problems.update(doors)
    # Serving the last good set while renewals fail is ready, but never silently so.
    degraded = {
        name: str(state.last_error)
        for name, state in manager.states.items()
        if state.last_error is not None and name not in problems
    }
    body: dict[str, object] = {"ready": not problems}
    if problems:
        body["not_ready"] = problems
    if degraded:
        body["degraded"] = degraded
    if pending := manager.pending_reloads():
        body["reload_pending"] = pending
    return body


def status_rows(
    manager: CredentialManager, describe: Callable[[str], dict[str, object]] | None = None
) -> list[dict[str, object]]:
    """One row per connection, for /status and the control socket's status op."""
    now = manager.clock.time()
    rows = []
    for name, state in manager.states.items():
        due = manager.seconds_until_due(state)
        row = status_of(state, now, manager.policy, due)
        if describe:
            row.update(describe(name))
        rows.append(row)
    return rows
