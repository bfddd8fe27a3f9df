"""rotate-keys' config edit: one value on one line changes, everything else stays as written."""

from __future__ import annotations

import os
import stat
from datetime import date
from pathlib import Path

import pytest

from credential_sidecar.config.edit import ConfigEditError, rewrite, set_key
from credential_sidecar.config.load import load_config

OLD, NEW = "AKIAIOSFODNN7EXAMPLE", "AKIAI44QH8DHBEXAMPLE"

CONFIG = f"""\
# credential-sidecar config: comments must survive
[daemon]
state_dir = "/var/lib/cs"   # here

[[connections]]
name = "first"
type = "access-keys"
access_key_id = "{OLD}"  # the first key
secret_access_key_file = "/etc/first.secret"

[[connections]]
# the one we rotate
name   = "backups"
type = "access-keys"
access_key_id   =   '{OLD}'   # rotated by rotate-keys
secret_access_key_file = "/etc/backups.secret"
created = 2024-01-15   # set by hand
notes = \"\"\"
[[connections]]
access_key_id = "{OLD}"
\"\"\"
"""


def test_only_that_connections_line_changes() -> None:
    new = rewrite(CONFIG, "backups", NEW, date(2025, 6, 1))
    old_lines, new_lines = CONFIG.splitlines(), new.splitlines()
    changed = [(a, b) for a, b in zip(old_lines, new_lines, strict=True) if a != b]
    assert changed == [
        (f"access_key_id   =   '{OLD}'   # rotated by rotate-keys",
         f"access_key_id   =   '{NEW}'   # rotated by rotate-keys"),
        ("created = 2024-01-15   # set by hand", "created = 2025-06-01   # set by hand"),
    ]


def test_created_is_left_alone_when_absent_and_strings_stay_strings() -> None:
    new = rewrite(CONFIG, "first", NEW, date(2025, 6, 1))
    assert f'access_key_id = "{NEW}"  # the first key' in new
    assert "created = 2024-01-15" in new, "the other connection's date is untouched"
    quoted = CONFIG.replace("created = 2024-01-15", 'created = "2024-01-15"')
    assert 'created = "2025-06-01"' in rewrite(quoted, "backups", NEW, date(2025, 6, 1))


def test_windows_line_endings_are_kept() -> None:
    crlf = CONFIG.replace("\n", "\r\n")
    new = rewrite(crlf, "backups", NEW)
    assert new.count("\r\n") == crlf.count("\r\n") and f"'{NEW}'" in new


@pytest.mark.parametrize(("text", "message"), [
    ("[[connections]]\nname = 'a'\n", "no single connection named 'backups'"),
    ('connections = [{name = "backups", access_key_id = "AKIAIOSFODNN7EXAMPLE"}]\n',
     "[[connections]] table was not found"),
    ('[[connections]]\nname = "backups"\nconnections.x = 1\n', "no single line"),
    ('[[connections]]\nname = "backups"\naccess_key_id = "AKIAIOSFODNN7EXAMPLE"\n'
     'access_key_id2 = 1\ncreated = 2024-01-01T00:00:00Z\n', "not a plain date line"),
    ("not toml = = =\n", "not valid TOML"),
])
def test_layouts_it_cannot_edit_safely_are_refused(text: str, message: str) -> None:
    with pytest.raises(ConfigEditError, match=message.replace("[", r"\[").replace("]", r"\]")):
        rewrite(text, "backups", NEW, date(2025, 1, 1))


def test_set_key_replaces_atomically_keeping_mode_and_returns_the_old_text(
    tmp_path: Path
) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(CONFIG.encode())
    path.chmod(0o640)
    link = tmp_path / "link.toml"
    link.symlink_to(path)
    before = set_key(link, "backups", NEW, date(2025, 6, 1))
    assert before == CONFIG
    assert link.is_symlink(), "the symlink stays; its target is rewritten"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert f"'{NEW}'" in path.read_text()
    assert sorted(os.listdir(tmp_path)) == ["config.toml", "link.toml"]


def test_the_result_is_a_valid_config(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(CONFIG)
    set_key(path, "backups", NEW, date(2025, 6, 1))
    backups = load_config(path).connection("backups")
    assert backups.access_key_id == NEW  # type: ignore[union-attr]
    assert backups.created == date(2025, 6, 1)  # type: ignore[union-attr]
    assert load_config(path).connection("first").access_key_id == OLD  # type: ignore[union-attr]
