"""Which changes to a connection's settings touch how its credentials are obtained.

A reload keeps the set and schedule of a connection whose changes are all neutral (who may fetch
it, how it is described); any other change makes the new settings get their own first set.
"""

from __future__ import annotations

from credential_sidecar.config.model import Connection

# What rotate-keys writes: a new long-term key of the same access-keys connection.
KEY_FIELDS = frozenset({"access_key_id", "secret_access_key_file", "created"})
# Settings that change who may fetch a connection, or how it is described, but not how its
# credentials are obtained: a reload that changes only these keeps the set and its schedule.
NEUTRAL_FIELDS = frozenset(
    {"notes", "optional", "allowed_uids", "allowed_gids", "container_token_file"}
)


def changed_fields(before: Connection, after: Connection) -> list[str]:
    names = set(type(before).model_fields) | set(type(after).model_fields)
    return sorted(n for n in names if getattr(before, n, None) != getattr(after, n, None))


def same_source(before: Connection, after: Connection) -> bool:
    return type(before) is type(after) and set(changed_fields(before, after)) <= NEUTRAL_FIELDS


def only_key_changed(before: Connection, after: Connection) -> bool:
    """A key rotation: the connection keeps serving its set and renews with the new key."""
    changed = set(changed_fields(before, after))
    return type(before) is type(after) and bool(changed) and changed <= KEY_FIELDS | NEUTRAL_FIELDS
