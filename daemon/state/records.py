"""Each connection's account record: an id that never changes, when it was created and modified.

Operators used to a credentials manager's account dialog expect these: an id assigned once that
scripts can rely on, the creation time, and a modification time that moves when (and only when) that
connection's settings change. The config file cannot hold them (the daemon never writes it), so
they live in ``state_dir/connections.json``: written atomically, mode 0600, no secret in it
(only a digest of each connection's non-secret settings, to notice changes).

A connection removed from the config keeps its record, marked removed, so that putting it back
(say, after commenting it out) gives back the same id.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from credential_sidecar.clock import utc
from credential_sidecar.credentials import iso_z, parse_time
from credential_sidecar.files import atomic_write
from credential_sidecar.logs import get_logger

log = get_logger()
FILE_NAME = "connections.json"
VERSION = 1


def settings_digest(connection: BaseModel) -> str:
    """Changes whenever any setting of the connection does (files are named, never read)."""
    document = connection.model_dump(mode="json")
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()


@dataclass
class Record:
    id: str
    created: str
    modified: str
    settings_sha256: str
    removed: str | None = None


class ConnectionRecords:
    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / FILE_NAME
        self.records: dict[str, Record] = {}
        self._loaded = False

    def load(self) -> None:
        """Read the file once; a damaged one is set aside (and said so), never silently reused."""
        self._loaded = True
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("connection records unreadable; ids will not persist",
                        path=str(self.path), error=exc.strerror)
            return
        try:
            document = json.loads(text)
            entries = document["connections"]
            self.records = {str(name): Record(**entry) for name, entry in entries.items()}
            for record in self.records.values():
                parse_time(record.created)
                parse_time(record.modified)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            aside = self.path.with_name(f"{FILE_NAME}.damaged")
            with contextlib.suppress(OSError):
                os.replace(self.path, aside)
            log.error("connection records damaged; set aside, new ids assigned",
                      path=str(self.path), moved_to=str(aside), error=str(exc))
            self.records = {}

    def sync(self, connections: Iterable[BaseModel], now: float) -> bool:
        """Assign ids to new connections and move modified times of changed ones; save if any."""
        if not self._loaded:
            self.load()
        stamp = iso_z(utc(now))
        changed = False
        seen: set[str] = set()
        for connection in connections:
            name = str(connection.name)  # type: ignore[attr-defined]
            seen.add(name)
            digest = settings_digest(connection)
            record = self.records.get(name)
            if record is None:
                self.records[name] = Record(str(uuid.uuid4()), stamp, stamp, digest)
                log.info("connection record created", connection=name,
                         connection_id=self.records[name].id)
                changed = True
                continue
            if record.removed is not None:
                record.removed = None
                changed = True
            if record.settings_sha256 != digest:
                record.settings_sha256, record.modified = digest, stamp
                changed = True
        for name, record in self.records.items():
            if name not in seen and record.removed is None:
                record.removed = stamp
                changed = True
        if changed:
            self.save()
        return changed

    def row(self, name: str) -> dict[str, Any]:
        """For /status: id, created, modified (None when the name has no record)."""
        record = self.records.get(name)
        if record is None:
            return {"id": None, "created": None, "modified": None}
        return {"id": record.id, "created": record.created, "modified": record.modified}

    def save(self) -> None:
        document = {"version": VERSION,
                    "connections": {name: asdict(r) for name, r in sorted(self.records.items())}}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            atomic_write(self.path, (json.dumps(document, indent=2) + "\n").encode("utf-8"))
        except OSError as exc:
            log.warning("connection records not saved; ids will not persist",
                        path=str(self.path), error=exc.strerror)


__all__ = ["ConnectionRecords", "Record", "settings_digest"]
