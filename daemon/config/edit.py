"""Rewrite one connection's ``access_key_id`` (and ``created``) in the config file, in place.

rotate-keys must leave the config naming the new key, as the contract shows it: inline. Only
the value on that one line changes; comments, order, spacing and every other line stay as the
operator wrote them. The result is checked by parsing both versions: if anything else would
change (an unusual layout this editor does not understand), nothing is written and the caller
says so. The file is replaced atomically, keeping its mode and owner, so the daemon (reading on
SIGHUP) sees the old file or the new one, never a mix.
"""

from __future__ import annotations

import contextlib
import os
import re
import tomllib
from datetime import date
from pathlib import Path
from typing import Any

from credential_sidecar.files import atomic_write

_TABLE = re.compile(r"^\s*\[")
_CONNECTIONS = re.compile(r"^\s*\[\[\s*connections\s*\]\]\s*(#.*)?$")
_KEY_ID = re.compile(r"""^(\s*access_key_id\s*=\s*)(["'])(AKIA[A-Z0-9]{16})\2(\s*(?:#.*)?)$""")
_CREATED = re.compile(r"""^(\s*created\s*=\s*)(["']?)(\d{4}-\d{2}-\d{2})\2(\s*(?:#.*)?)$""")


class ConfigEditError(Exception):
    """The file cannot be rewritten safely; it has not been touched."""


def _block(lines: list[str], index: int) -> tuple[int, int]:
    """Line range of the index-th [[connections]] table (header excluded)."""
    seen = -1
    for number, line in enumerate(lines):
        if _CONNECTIONS.match(line):
            seen += 1
            if seen == index:
                end = next((n for n in range(number + 1, len(lines)) if _TABLE.match(lines[n])),
                           len(lines))
                return number + 1, end
    raise ConfigEditError("the connection's [[connections]] table was not found")


def rewrite(text: str, name: str, key_id: str, created: date | None = None) -> str:
    """The config text with connection ``name``'s key id (and created date, if present) set."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigEditError(f"not valid TOML: {exc}") from None
    found = document.get("connections")
    connections: list[Any] = found if isinstance(found, list) else []
    names = [c.get("name") for c in connections]
    if names.count(name) != 1:
        raise ConfigEditError(f"no single connection named {name!r}")
    index = names.index(name)
    lines = text.splitlines(keepends=True)
    start, end = _block(lines, index)
    key_lines = [n for n in range(start, end) if _KEY_ID.match(lines[n].rstrip("\r\n"))]
    if len(key_lines) != 1:
        raise ConfigEditError(
            f'connection {name!r}: no single line of the form access_key_id = "AKIA..." in its'
            " [[connections]] table"
        )

    def replace(number: int, pattern: re.Pattern[str], value: str) -> None:
        body = lines[number].rstrip("\r\n")
        ending = lines[number][len(body):]
        match = pattern.match(body)
        assert match is not None
        quote = match.group(2)
        lines[number] = f"{match.group(1)}{quote}{value}{quote}{match.group(4)}" + ending

    replace(key_lines[0], _KEY_ID, key_id)
    changes: dict[str, Any] = {"access_key_id": key_id}
    if created is not None and "created" in connections[index]:
        created_lines = [n for n in range(start, end) if _CREATED.match(lines[n].rstrip("\r\n"))]
        if len(created_lines) != 1:
            raise ConfigEditError(f"connection {name!r}: created is not a plain date line")
        replace(created_lines[0], _CREATED, created.isoformat())
        was = connections[index]["created"]
        changes["created"] = created if isinstance(was, date) else created.isoformat()
    new_text = "".join(lines)
    expected = dict(document)
    expected["connections"] = [dict(c) for c in connections]
    expected["connections"][index].update(changes)
    try:
        if tomllib.loads(new_text) != expected:
            raise ConfigEditError("the file's layout is unusual: more than one key would change")
    except tomllib.TOMLDecodeError:
        raise ConfigEditError("the file's layout is unusual: the edit would break it") from None
    return new_text


def write_atomically(path: Path, text: str) -> None:
    """Replace the file (through a symlink, its target) keeping its mode and owner."""
    target = Path(os.path.realpath(path))
    st = target.stat()

    def same_owner(fd: int) -> None:
        with contextlib.suppress(PermissionError):
            os.fchown(fd, st.st_uid, st.st_gid)

    atomic_write(target, text.encode("utf-8"), mode=st.st_mode & 0o7777, prepare=same_owner)


def set_key(path: Path, name: str, key_id: str, created: date | None = None) -> str:
    """Rewrite the file; returns the previous text (to put back if a later step fails)."""
    old = Path(path).read_bytes().decode("utf-8")  # line endings kept as they are
    write_atomically(Path(path), rewrite(old, name, key_id, created))
    return old


__all__ = ["ConfigEditError", "rewrite", "set_key", "write_atomically"]
