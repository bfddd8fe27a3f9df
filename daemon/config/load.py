"""Loading the configuration file: TOML in, validated models out, every problem at once.

Messages never contain the values that were written (pydantic's ``input_value`` included): a
secret pasted into the wrong key must not end up in a terminal or a journal.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import (
    ValidationError,
)

from credential_sidecar.config.errors import ConfigError, Loc
from credential_sidecar.config.model import Config, Connection
from credential_sidecar.config.values import CONNECTION_TYPES, parse_address

_BARE_KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")


# Keys that would hold a secret inline, and where the secret belongs instead.
_INLINE_SECRETS = {
    "secret_access_key": "secret_access_key_file",
    "aws_secret_access_key": "secret_access_key_file",
    "private_key_passphrase": "private_key_passphrase_file",
}


_SECTION_ORDER = ("daemon", "imds", "container", "health", "control", "connections")
_TYPES_TEXT = " or ".join(f'"{t}"' for t in CONNECTION_TYPES)


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a TOML file; relative paths in it are relative to its directory."""
    path = Path(path)
    source = str(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(source, [f"cannot read the file: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError:
        raise ConfigError(source, ["not valid UTF-8 text"]) from None
    try:
        data = tomllib.loads(text)
        absolute = Path(os.path.abspath(path))
        config = parse_config(data, source=source, base_dir=absolute.parent)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, [f"TOML syntax error: {exc}"]) from None
    except RecursionError:
        raise ConfigError(source, ["nested too deeply to be a configuration"]) from None
    config._source = absolute
    return config


def parse_config(
    data: dict[str, Any], *, source: str = "<config>", base_dir: Path | None = None
) -> Config:
    """Validate an already-parsed document; with no base_dir, relative paths stay relative."""
    problems: list[tuple[Loc, str]] = []
    config: Config | None = None
    try:
        config = Config.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        for error in exc.errors(include_url=False, include_input=False):
            problem = _from_pydantic(error)
            if problem is not None:
                problems.append(problem)
    if isinstance(data, dict):
        problems.extend(_cross_checks(data))
        problems.extend(_shared_token_files(data, base_dir))
    if problems or config is None:
        raise ConfigError(source, _format(problems, data))
    return config


def _from_pydantic(error: Any) -> tuple[Loc, str] | None:
    """Short human messages from pydantic's error types, built without the input value."""
    loc: Loc = tuple(error["loc"])
    kind: str = error["type"]
    ctx: dict[str, Any] = error.get("ctx") or {}
    # A discriminated union inserts the tag: ("connections", 1, "roles-anywhere", "name").
    if len(loc) >= 3 and loc[0] == "connections" and isinstance(loc[1], int):
        if loc[2] in CONNECTION_TYPES:
            loc = loc[:2] + loc[3:]
    if kind == "extra_forbidden" and loc and loc[-1] in _INLINE_SECRETS:
        return None  # reported by _inline_secrets, with a better message
    messages = {
        "missing": "required",
        "extra_forbidden": "unknown key",
        "string_type": "must be a string",
        "int_type": "must be an integer",
        "int_parsing": "must be an integer",
        "int_from_float": "must be an integer",
        "bool_type": "must be true or false",
        "bool_parsing": "must be true or false",
        "list_type": "must be a list",
        "dict_type": "must be a table",
        "model_type": "must be a table",
        "model_attributes_type": "must be a table",
        "path_type": "must be a path string",
        "date_type": "must be a date (YYYY-MM-DD)",
        "date_parsing": "must be a date (YYYY-MM-DD)",
        "date_from_datetime_parsing": "must be a date (YYYY-MM-DD)",
        "date_from_datetime_inexact": "must be a date (YYYY-MM-DD), without a time",
    }
    if kind == "list_type" and loc in (("imds",), ("connections",)):
        return loc, f"must be an array of tables: write [[{loc[0]}]]"
    if kind in messages:
        return loc, messages[kind]
    if kind in ("value_error", "assertion_error"):
        return loc, str(ctx.get("error", "invalid value"))
    if kind == "union_tag_not_found":
        return (*loc, "type"), f"required; must be {_TYPES_TEXT}"
    if kind == "union_tag_invalid":
        return (*loc, "type"), f"unknown connection type; must be {_TYPES_TEXT}"
    if kind == "literal_error":
        return loc, f"must be {str(ctx.get('expected', '')).replace(chr(39), chr(34))}"
    if kind == "greater_than_equal":
        return loc, f"must be at least {ctx.get('ge')}"
    if kind == "less_than_equal":
        return loc, f"must be at most {ctx.get('le')}"
    if kind == "too_short":
        if loc == ("connections",):
            return loc, "at least one connection is required"
        return loc, f"must have at least {ctx.get('min_length')} item(s)"
    return loc, str(error["msg"])  # pydantic's msg never carries the input; only str(exc) does


def _cross_checks(data: dict[str, Any]) -> Iterator[tuple[Loc, str]]:
    """Checks across entries, on the raw document, so they run even when some entries are bad."""
    yield from _inline_secrets(data, ())

    names: dict[str, int] = {}
    connections = data.get("connections")
    for i, conn in enumerate(connections if isinstance(connections, list) else []):
        name = conn.get("name") if isinstance(conn, dict) else None
        if not isinstance(name, str):
            continue
        if name in names:
            yield (
                ("connections", i, "name"),
                f'duplicate name "{name}" (also connections[{names[name]}])',
            )
        else:
            names[name] = i

    listeners: list[tuple[Loc, Any]] = []
    imds = data.get("imds")
    for i, entry in enumerate(imds if isinstance(imds, list) else []):
        if not isinstance(entry, dict):
            continue
        listeners.append((("imds", i, "listen"), entry.get("listen")))
        wanted = entry.get("connection")
        if isinstance(wanted, str) and wanted not in names:
            known = ", ".join(names) or "(none)"
            yield ("imds", i, "connection"), f'no connection named "{wanted}"; known: {known}'
    for section in ("container", "health"):
        entry = data.get(section)
        if isinstance(entry, dict):
            listeners.append(((section, "listen"), entry.get("listen")))

    taken: dict[tuple[str, int], Loc] = {}
    for loc, text in listeners:
        try:
            address = parse_address(text)
        except ValueError:
            continue  # reported by the model
        if address.port == 0:
            continue
        if address.key() in taken:
            yield loc, f"same address as {_path(taken[address.key()])}"
        else:
            taken[address.key()] = loc


def _shared_token_files(data: dict[str, Any], base_dir: Path | None
                        ) -> Iterator[tuple[Loc, str]]:
    """Two connections naming one container token file would share one token: either app could
    take the other's credentials. Compared as absolute, normalised paths; a connection without
    the key uses <state_dir>/tokens/<name>.token."""
    def absolute(text: str) -> str:
        path = Path(os.path.expanduser(text))
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        return os.path.normpath(path)

    daemon = data.get("daemon")
    state_dir = daemon.get("state_dir") if isinstance(daemon, dict) else None
    state = absolute(state_dir) if isinstance(state_dir, str) and state_dir else (
        "/var/lib/credential-sidecar")
    seen: dict[str, tuple[int, str, bool]] = {}
    names: set[str] = set()
    connections = data.get("connections")
    for i, conn in enumerate(connections if isinstance(connections, list) else []):
        if not isinstance(conn, dict) or not isinstance(conn.get("name"), str):
            continue
        names_before = set(names)
        names.add(conn["name"])
        name, configured = conn["name"], conn.get("container_token_file")
        if isinstance(configured, str) and configured:
            path, explicit = absolute(configured), True
        elif configured is None and name not in names_before:  # duplicate names: reported
            path, explicit = os.path.join(state, "tokens", f"{name}.token"), False
        else:
            continue  # reported by the model
        if path in seen:
            j, other, other_explicit = seen[path]
            whose = ("its container_token_file" if other_explicit
                     else "its default token file")
            loc: Loc = ("connections", i, "container_token_file") if explicit else (
                "connections", i, "name")
            yield loc, (f'connections "{other}" (connections[{j}], {whose}) and "{name}" would'
                        f" share the container token file {path}: give each its own")
        else:
            seen[path] = (i, name, explicit)


def _inline_secrets(node: Any, loc: Loc) -> Iterator[tuple[Loc, str]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _INLINE_SECRETS:
                where = _INLINE_SECRETS[key]
                yield (*loc, key), f"never write a secret inline; put it in {where} (mode 0600)"
            else:
                yield from _inline_secrets(value, (*loc, key))
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _inline_secrets(item, (*loc, i))


def _format(problems: list[tuple[Loc, str]], data: Any) -> list[str]:
    """In reading order (section, entry, key as written), so each entry's problems read together."""

    def rank(item: tuple[Loc, str]) -> tuple[int, int, int]:
        loc = item[0]
        head = loc[0] if loc else ""
        section = _SECTION_ORDER.index(head) if head in _SECTION_ORDER else len(_SECTION_ORDER)
        entry: Any = data.get(head) if isinstance(data, dict) and isinstance(head, str) else None
        index, rest = -1, loc[1:]
        if rest and isinstance(rest[0], int):
            index, rest = rest[0], rest[1:]
            entry = entry[index] if isinstance(entry, list) and index < len(entry) else None
        keys = list(entry) if isinstance(entry, dict) else []
        position = keys.index(rest[0]) if rest and rest[0] in keys else len(keys)
        return section, index, position

    out: list[str] = []
    for loc, message in sorted(problems, key=rank):
        line = f"{_path(loc)}: {message}"
        if line not in out:
            out.append(line)
    return out


def _path(loc: Loc) -> str:
    """("connections", 1, "duration_seconds") -> connections[1].duration_seconds"""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            key = part if _BARE_KEY_RE.match(part) else json.dumps(part)
            out += f".{key}" if out else key
    return out or "(top level)"


def load_connection(path: str | os.PathLike[str], name: str) -> tuple[Config, Connection]:
    """For commands about one connection: the config and that connection, or ConfigError."""
    config = load_config(path)
    try:
        return config, config.connection(name)
    except KeyError:
        known = ", ".join(c.name for c in config.connections)
        raise ConfigError(str(path), [f"no connection named {name!r}; known: {known}"]) from None

