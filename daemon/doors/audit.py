"""The audit trail of credential hand-outs and refusals: one line per new fact, repeats counted.

A line says which local user got which set through which door, or was refused. Writing one for
every request let a program polling in a loop (a misconfigured client, or a hostile one) flood
the log: journald drops a unit's lines past its rate limit (10 000 per 30 s by default), the
other users' audit lines with them, and the line cost more CPU than the rest of the answer.
So:

- a hand-out is a line the first time a set (by its access key id) goes to a uid through a
  door; the same set again to the same uid and door is counted in
  ``credential_sidecar_handouts_total`` and ``used_by``, not logged again. Every renewal brings a
  new set, hence a new line for each user that takes it;
- a refusal is a line the first time, then at most one per ``REFUSAL_INTERVAL`` seconds for the
  same door, connection and peer, saying how many were left out since the last one
  (``suppressed``).

Memory is bounded: past ``MAX_KEYS`` remembered facts the trail starts afresh (a few lines
repeat; none is lost).
"""

from __future__ import annotations

from typing import TypeVar

from credential_sidecar.clock import Clock
from credential_sidecar.logs import get_logger

log = get_logger()

REFUSAL_INTERVAL = 60.0
MAX_KEYS = 10_000
K = TypeVar("K")
V = TypeVar("V")


class AuditTrail:
    def __init__(self, clock: Clock, *, refusal_interval: float = REFUSAL_INTERVAL,
                 max_keys: int = MAX_KEYS) -> None:
        self.clock = clock
        self.refusal_interval = refusal_interval
        self.max_keys = max_keys
        self._served: dict[tuple[str, str, int | None], str] = {}  # -> access key id logged
        # (door, connection, uid, remote) -> (when the last line was written, left out since)
        self._refused: dict[tuple[str, str, int | None, str | None], tuple[float, int]] = {}

    def _remember(self, table: dict[K, V], key: K, value: V) -> None:
        """``table[key] = value``, starting the table afresh first when a new key would take it
        past ``max_keys``."""
        if key not in table and len(table) >= self.max_keys:
            table.clear()
        table[key] = value

    def served(self, door: str, connection: str, uid: int | None, access_key_id: str) -> None:
        key = (door, connection, uid)
        if self._served.get(key) == access_key_id:
            return
        self._remember(self._served, key, access_key_id)
        log.info("credentials handed out", audit=True, door=door, connection=connection,
                 uid=uid, access_key_id=access_key_id)

    def refused(self, door: str, connection: str, uid: int | None, remote: str | None, *,
                pid: int | None = None) -> None:
        """``remote``: the TCP peer's address; ``pid``: the control socket's peer process,
        written in the line but not told apart (a polling client is a new process each time)."""
        key = (door, connection, uid, remote)
        now = self.clock.monotonic()
        last = self._refused.get(key)
        if last is not None and now - last[0] < self.refusal_interval:
            self._refused[key] = (last[0], last[1] + 1)
            return
        self._remember(self._refused, key, (now, 0))
        extra = {k: v for k, v in (("remote", remote), ("pid", pid)) if v is not None}
        if last is not None and last[1]:
            extra["suppressed"] = last[1]
        log.warning("credentials refused", audit=True, door=door, connection=connection,
                    uid=uid, **extra)


__all__ = ["MAX_KEYS", "REFUSAL_INTERVAL", "AuditTrail"]
