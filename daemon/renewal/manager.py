"""The credential manager: one proactive renewal schedule per connection.

Rules (docs/protocols.md, "When clients come back"): renew at about half life with jitter so what
clients are served keeps well above the SDKs' 900 s window; never serve a set
with under ``min_serve_seconds`` left; on failure keep the last good set and
retry with capped, jittered exponential backoff; one upstream call per
connection at a time (each connection has exactly one task that calls it).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable, Mapping

from credential_sidecar.clock import Clock
from credential_sidecar.credentials import Credentials, iso_z
from credential_sidecar.logs import get_logger
from credential_sidecar.renewal.schedule import Policy, backoff, refresh_point
from credential_sidecar.renewal.state import USED_BY_LIMIT, ConnectionState, CredentialStore
from credential_sidecar.upstream.base import CredentialSource, UpstreamError

log = get_logger()


class CredentialManager:
    def __init__(
        self,
        sources: Mapping[str, CredentialSource],
        clock: Clock,
        *,
        policy: Policy | None = None,
        rng: random.Random | None = None,
        store: CredentialStore | None = None,
    ) -> None:
        self.sources = dict(sources)
        self.store = store
        self.clock = clock
        self.policy = policy or Policy()
        self.rng = rng or random.Random()
        self.states = {name: ConnectionState(name) for name in self.sources}
        self._limit = asyncio.Semaphore(self.policy.max_concurrent_renewals)
        self._turn = asyncio.Lock()  # see _take_turn
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._changed = asyncio.Event()
        self._restored: set[str] = set()  # connections whose cache has been consulted
        # Told how long each upstream call took (connection, seconds): metrics.
        self.on_upstream: Callable[[str, float], None] | None = None
        # Told the name of a connection whose servable set just changed (a renewal, or a set
        # restored from the cache): the credentials-file door rewrites its files.
        self.on_renewed: list[Callable[[str], None]] = []

    # -- what the doors ask -------------------------------------------------
    def get(self, name: str) -> Credentials | None:
        """The set to serve now, or None: never an expired or nearly expired one."""
        state = self.states.get(name)
        return state.servable(self.clock.time(), self.policy) if state else None

    def record_use(self, name: str, door: str, peer: str = "") -> None:
        """Remember who fetched a connection's set, per door and (where known) per peer."""
        state = self.states.get(name)
        if state is None:
            return
        entry = state.used_by.get((door, peer))
        if entry is None:
            if len(state.used_by) >= USED_BY_LIMIT:
                oldest = min(state.used_by, key=lambda k: state.used_by[k][0])
                del state.used_by[oldest]
            entry = state.used_by[(door, peer)] = [0.0, 0]
        entry[0] = self.clock.time()
        entry[1] += 1

    def problems(self, names: list[str] | None = None) -> dict[str, str]:
        """Connections with nothing fresh to serve, and why."""
        now = self.clock.time()
        out: dict[str, str] = {}
        for name in names if names is not None else list(self.states):
            state = self.states[name]
            if state.servable(now, self.policy) is None:
                out[name] = state.problem()
        return out

    def pending_reloads(self) -> dict[str, str]:
        """Connections still served from before a reload whose new settings have no set yet."""
        return {name: why for name, state in self.states.items()
                if (why := state.pending()) is not None}

    async def wait_ready(self, names: list[str] | None = None) -> None:
        while self.problems(names):
            self._changed.clear()
            await self._changed.wait()

    # -- lifecycle ------------------------------------------------------------
    async def restore(self) -> None:
        """Every cached set that still fits, all connections at once (file reads in threads).

        The server awaits this before any door opens, so a restart never answers "no
        credentials yet" for a set that sits fresh in the cache.
        """
        names = [n for n in self.sources if n not in self._restored and n not in self._tasks]
        await asyncio.gather(*(self._restore(name) for name in names))

    async def start(self) -> None:
        """Restore what restore() has not yet, then start every renewal schedule."""
        await self.restore()
        for name in list(self.sources):
            if name not in self._tasks:
                self._schedule(name)

    def _schedule(self, name: str) -> None:
        self._tasks[name] = asyncio.create_task(self._run(name), name=f"renew:{name}")

    async def _begin(self, name: str) -> None:
        await self._restore(name)
        self._schedule(name)

    async def _end(self, name: str) -> None:
        task = self._tasks.pop(name, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        source = self.sources.get(name)
        if source is not None:
            await source.close()

    async def stop(self) -> None:
        for name in list(self._tasks):
            await self._end(name)

    async def add(self, name: str, source: CredentialSource) -> None:
        """Start serving a new connection, from the cache if it still fits."""
        if name in self.sources:
            await self.remove(name)
        self.sources[name] = source
        self.states[name] = ConnectionState(name)
        await self._begin(name)

    async def replace(self, name: str, source: CredentialSource, reason: str) -> None:
        """Make before break: a connection now gets its credentials another way (new role,
        certificate, endpoint...). The set it holds keeps being served until the new source
        has one, from the cache or upstream; the swap is one assignment, so a door sees the old
        set or the new one, never nothing. Should the new source never get one, the old set is
        served until it nears its end, and /status says why ("reload pending")."""
        if name not in self.states:
            await self.add(name, source)
            return
        await self._end(name)
        self.sources[name] = source
        state = self.states[name]
        state.reload_pending = reason
        await self._keep_across_restarts(name, source, state, reason)
        state.failures, state.last_error, state.next_attempt_mono = 0, None, 0.0
        self._restored.discard(name)
        if not await self._restore(name):
            state.refresh_remaining = float("inf")  # due at once
        self._schedule(name)
        self._changed.set()

    async def _keep_across_restarts(
        self, name: str, source: CredentialSource, state: ConnectionState, reason: str
    ) -> None:
        """Make before break across a restart too: the set still served is persisted under the
        new settings, marked pending, so a daemon restarted before the new settings' first set
        arrives restores it (and keeps trying) instead of serving nothing."""
        current = state.servable(self.clock.time(), self.policy)
        if self.store is None or current is None:
            return
        try:
            binding = await source.binding()
            if await self.store.load(name, binding) is not None:
                return  # the new settings have a set of their own in the cache: restored next
            await self.store.save(name, binding, current)
        except UpstreamError as error:
            log.warning("credentials not persisted", connection=name, reason=str(error))
            return
        await self.store.mark_pending(name, reason)

    async def remove(self, name: str) -> None:
        await self._end(name)
        self.sources.pop(name, None)
        self.states.pop(name, None)
        self._restored.discard(name)
        self._changed.set()

    def refresh_now(self, name: str) -> None:
        """Make a connection renew at once (new certificate, operator request)."""
        state = self.states.get(name)
        if state is not None:
            state.next_attempt_mono = 0.0
            state.refresh_remaining = float("inf")
            state.wake.set()

    async def _restore(self, name: str) -> bool:
        """Serve the cached set of this connection's current source, if it still fits."""
        self._restored.add(name)
        if self.store is None:
            return False
        state, source = self.states[name], self.sources[name]
        state.restoring = True
        try:
            creds = await self._load_cached(name, source)
        finally:
            state.restoring = False
        if creds is None or creds.remaining(self.clock.time()) < self.policy.min_serve_seconds:
            self._changed.set()
            return False
        state.current, state.restored = creds, True
        state.refresh_remaining = self._refresh_point(creds)
        state.reload_pending = await self.store.pending(name)
        if state.reload_pending is not None:
            # Restored from before a reload whose new settings have no set yet: keep trying.
            state.refresh_remaining = float("inf")
        log.info(
            "credentials restored from cache",
            connection=name,
            access_key_id=creds.access_key_id,
            expires=iso_z(creds.expiration),
            renew_in=round(max(0.0, self.seconds_until_due(state))),
        )
        self._changed.set()
        self._tell_renewed(name)
        return True

    async def _load_cached(self, name: str, source: CredentialSource) -> Credentials | None:
        assert self.store is not None
        try:
            binding = await source.binding()
        except UpstreamError as error:
            log.warning("cache not consulted", connection=name, reason=str(error))
            return None
        return await self.store.load(name, binding)

    # -- the schedule -----------------------------------------------------------
    def seconds_until_due(self, state: ConnectionState) -> float:
        """How long until this connection should call upstream (0 = now)."""
        retry_wait = state.next_attempt_mono - self.clock.monotonic()
        if state.current is None:
            return max(0.0, retry_wait)
        remaining = state.current.remaining(self.clock.time())
        until_refresh = remaining - state.refresh_remaining
        if state.failures:
            return max(0.0, retry_wait)
        return max(0.0, until_refresh)

    def _refresh_point(self, creds: Credentials) -> float:
        return refresh_point(creds, self.policy, self.rng)

    def _backoff(self, state: ConnectionState, error: UpstreamError) -> float:
        left = state.current.remaining(self.clock.time()) if state.current is not None else None
        return backoff(state.failures, error, left, self.policy, self.rng)

    async def _run(self, name: str) -> None:
        state = self.states[name]
        while True:
            wait = self.seconds_until_due(state)
            if wait > 0:
                # At least 10 ms, so float rounding can never spin the loop short of the due time.
                await self._nap(state, min(max(wait, 0.01), self.policy.tick_seconds))
                continue
            async with self._limit:
                await self._take_turn()
                await self.renew(name)

    async def _take_turn(self) -> None:
        """Let at most one renewal start per turn of the event loop.

        When many renewals fall due at once (a cold start, a resumed host), starting them all in
        one turn runs their CPU work back to back while requests wait; one per turn interleaves
        them with serving. bench/renewing.py, 1000 connections renewing against an upstream that
        answers at once: IMDS fetch p99 25-90 ms before, 15-20 ms after.
        """
        async with self._turn:
            await asyncio.sleep(0)

    async def _nap(self, state: ConnectionState, seconds: float) -> None:
        """Sleep, unless woken early by refresh_now()."""
        if state.wake.is_set():
            state.wake.clear()
            return
        sleeper = asyncio.ensure_future(self.clock.sleep(seconds))
        waker = asyncio.ensure_future(state.wake.wait())
        try:
            await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            waker.cancel()
        state.wake.clear()

    async def renew(self, name: str) -> None:
        """One upstream attempt for one connection, and what follows from it."""
        state = self.states[name]
        source = self.sources[name]
        state.last_attempt = self.clock.time()
        try:
            creds = await self._timed_fetch(name, source)
            if creds.remaining(self.clock.time()) < self.policy.min_serve_seconds:
                raise UpstreamError("ShortLived", "upstream issued a set that is already expiring")
        except UpstreamError as error:
            self._failed(state, error)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must not end the schedule
            log.exception("renewal crashed", connection=name)
            self._failed(state, UpstreamError("InternalError", repr(exc)))
        else:
            was_pending = state.reload_pending is not None
            if was_pending:
                log.info("reload complete: the new settings have their first set", connection=name)
            state.current, state.restored, state.reload_pending = creds, False, None
            state.refresh_remaining = self._refresh_point(creds)
            state.last_renewal = self.clock.time()
            state.failures = 0
            state.last_error = None
            state.renewals["ok"] += 1
            log.info(
                "credentials renewed",
                connection=name,
                access_key_id=creds.access_key_id,
                expires=iso_z(creds.expiration),
                renew_in=round(creds.lifetime - state.refresh_remaining),
            )
            if self.store is not None:
                await self._persist(name, source, creds)
                if was_pending:
                    await self.store.mark_pending(name, None)
            self._tell_renewed(name)
        self._changed.set()

    def _tell_renewed(self, name: str) -> None:
        for callback in list(self.on_renewed):
            try:
                callback(name)
            except Exception:  # a listener's bug must not end the schedule
                log.exception("renewal listener failed", connection=name)

    async def _timed_fetch(self, name: str, source: CredentialSource) -> Credentials:
        started = self.clock.monotonic()
        try:
            return await source.fetch()
        finally:
            if self.on_upstream is not None:
                self.on_upstream(name, self.clock.monotonic() - started)

    async def _persist(self, name: str, source: CredentialSource, creds: Credentials) -> None:
        try:
            await self.store.save(name, await source.binding(), creds)  # type: ignore[union-attr]
        except UpstreamError as error:
            log.warning("credentials not persisted", connection=name, reason=str(error))

    def _failed(self, state: ConnectionState, error: UpstreamError) -> None:
        state.failures += 1
        state.last_error = error
        state.last_error_at = self.clock.time()
        state.renewals["error"] += 1
        delay = self._backoff(state, error)
        state.next_attempt_mono = self.clock.monotonic() + delay
        serving = state.servable(self.clock.time(), self.policy)
        log.warning(
            "renewal failed",
            connection=state.name,
            error_code=error.code,
            error=error.message,
            retry_in=round(delay, 1),
            still_serving_until=iso_z(serving.expiration) if serving else None,
            hint="the service refused the request; retrying will not fix it until the cause is "
            "fixed" if error.persistent else None,
        )


