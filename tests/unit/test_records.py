"""Account records: an id assigned once, created and modified times, kept in state_dir."""

from __future__ import annotations

import json
import stat
import uuid
from pathlib import Path
from typing import Any

from credential_sidecar.config.load import parse_config
from credential_sidecar.state.records import FILE_NAME, ConnectionRecords

T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z


def _conns(**notes: str) -> list[Any]:
    data = {"connections": [
        {"name": name, "type": "access-keys", "access_key_id": "AKIAIOSFODNN7EXAMPLE",
         "secret_access_key_file": f"/etc/{name}.secret", "notes": text}
        for name, text in notes.items()
    ]}
    return list(parse_config(data).connections)


def test_new_connections_get_an_id_and_times_persisted_0600(tmp_path: Path) -> None:
    records = ConnectionRecords(tmp_path)
    assert records.sync(_conns(a="x", b="y"), T0) is True
    row = records.row("a")
    assert uuid.UUID(row["id"]).version == 4
    assert row["created"] == row["modified"] == "2027-01-15T08:00:00Z"
    assert records.row("a")["id"] != records.row("b")["id"]
    path = tmp_path / FILE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    on_disk = json.loads(path.read_text())
    assert on_disk["connections"]["a"]["id"] == row["id"]


def test_ids_survive_a_restart_and_only_the_changed_connection_is_modified(
    tmp_path: Path
) -> None:
    first = ConnectionRecords(tmp_path)
    first.sync(_conns(a="x", b="y"), T0)
    again = ConnectionRecords(tmp_path)  # a restart
    assert again.sync(_conns(a="x", b="y"), T0 + 60) is False, "nothing changed, nothing written"
    assert again.row("a") == first.row("a")
    again.sync(_conns(a="x", b="changed notes"), T0 + 120)
    assert again.row("a") == first.row("a")
    assert again.row("b")["id"] == first.row("b")["id"]
    assert again.row("b")["created"] == "2027-01-15T08:00:00Z"
    assert again.row("b")["modified"] == "2027-01-15T08:02:00Z"


def test_a_removed_connection_keeps_its_id_when_put_back(tmp_path: Path) -> None:
    records = ConnectionRecords(tmp_path)
    records.sync(_conns(a="x", b="y"), T0)
    original = records.row("b")
    records.sync(_conns(a="x"), T0 + 60)
    assert json.loads((tmp_path / FILE_NAME).read_text())["connections"]["b"]["removed"]
    records.sync(_conns(a="x", b="y"), T0 + 120)
    assert records.row("b") == original


def test_a_damaged_file_is_set_aside_not_trusted(tmp_path: Path) -> None:
    (tmp_path / FILE_NAME).write_text('{"connections": {"a": {"id": 1}}}')
    records = ConnectionRecords(tmp_path)
    records.sync(_conns(a="x"), T0)
    assert uuid.UUID(records.row("a")["id"])
    assert (tmp_path / f"{FILE_NAME}.damaged").exists()


def test_unknown_names_have_empty_rows(tmp_path: Path) -> None:
    assert ConnectionRecords(tmp_path).row("nope") == {"id": None, "created": None,
                                                       "modified": None}


def test_an_unwritable_state_dir_is_not_fatal(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    records = ConnectionRecords(blocker / "state")  # a directory under a file: cannot exist
    records.sync(_conns(a="x"), T0)
    assert records.row("a")["id"]
