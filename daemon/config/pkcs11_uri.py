"""RFC 7512 ``pkcs11:`` URIs: which token, which object, and where the PIN comes from.

Strict on purpose: an attribute we do not understand would silently widen the match (a
different key signs), so it is refused rather than ignored. ``pin-value`` is refused too: a
PIN in the config file ends up in backups, diffs and ``ps``; use ``pin-source=file:...``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import quote, unquote, unquote_to_bytes

from credential_sidecar.config.values import CREDENTIALS_PREFIXES

ObjectType = Literal["private", "public", "cert", "secret-key", "data"]
_TYPES: tuple[ObjectType, ...] = ("private", "public", "cert", "secret-key", "data")

_TEXT_ATTRS = (
    "token", "manufacturer", "serial", "model", "object", "slot-description", "slot-manufacturer"
)
_PATH_ATTRS = {*_TEXT_ATTRS, "type", "id", "slot-id"}
_QUERY_ATTRS = {"pin-source", "module-path", "module-name"}
# Unreserved characters plus the ones RFC 7512 lets stand unescaped in a path value.
_SAFE = "-._~:[]@!$'()*+,="


class Pkcs11UriError(ValueError):
    """The URI is malformed or asks for something we refuse (an inline PIN)."""


@dataclass(frozen=True)
class Pkcs11Uri:
    """A parsed URI; every field is optional, absent means 'any'."""

    token: str | None = None
    manufacturer: str | None = None
    serial: str | None = None
    model: str | None = None
    object: str | None = None
    id: bytes | None = None
    type: ObjectType | None = None
    slot_id: int | None = None
    slot_description: str | None = None
    slot_manufacturer: str | None = None
    pin_source: Path | None = None
    module_path: Path | None = None
    module_name: str | None = None

    def with_type(self, type_: ObjectType) -> Pkcs11Uri:
        return dataclasses.replace(self, type=type_)

    def __str__(self) -> str:
        """The canonical form; safe for logs (it can never hold a PIN, see module doc)."""
        path: list[str] = []
        for name, value in (
            ("token", self.token), ("manufacturer", self.manufacturer),
            ("serial", self.serial), ("model", self.model), ("object", self.object),
            ("slot-description", self.slot_description),
            ("slot-manufacturer", self.slot_manufacturer),
        ):
            if value is not None:
                path.append(f"{name}={quote(value, safe=_SAFE)}")
        if self.id is not None:
            path.append("id=" + "".join(f"%{b:02X}" for b in self.id))
        if self.type is not None:
            path.append(f"type={self.type}")
        if self.slot_id is not None:
            path.append(f"slot-id={self.slot_id}")
        query: list[str] = []
        if self.pin_source is not None:
            query.append(f"pin-source=file:{quote(str(self.pin_source), safe='/' + _SAFE)}")
        if self.module_path is not None:
            query.append(f"module-path={quote(str(self.module_path), safe='/' + _SAFE)}")
        if self.module_name is not None:
            query.append(f"module-name={quote(self.module_name, safe=_SAFE)}")
        return "pkcs11:" + ";".join(path) + ("?" + "&".join(query) if query else "")


def _text(name: str, raw: str) -> str:
    try:
        return unquote(raw, encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        raise Pkcs11UriError(f"pkcs11 URI attribute {name!r} is not UTF-8 after decoding") from None


def _pin_source(raw: str) -> Path:
    value = _text("pin-source", raw)
    if value.startswith("file://"):
        value = value[len("file://"):]
    elif value.startswith("file:"):
        value = value[len("file:"):]
    for prefix in CREDENTIALS_PREFIXES:  # a PIN delivered by systemd's LoadCredential=
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        if value.startswith(prefix) and directory:
            value = str(Path(directory) / value[len(prefix):])
    if not value.startswith(("/", *CREDENTIALS_PREFIXES)):
        raise Pkcs11UriError(
            "pkcs11 URI pin-source must be an absolute file path (pin-source=file:/etc/x/pin, "
            "or file:$CREDENTIALS_DIRECTORY/pin); commands (|cmd) are not supported"
        )
    return Path(value)


def _split(uri: str) -> list[tuple[str, str]]:
    if not uri.startswith("pkcs11:"):
        raise Pkcs11UriError(f"not a pkcs11 URI (must start with 'pkcs11:'): {uri[:40]!r}")
    body = uri[len("pkcs11:"):]
    path, _, query = body.partition("?")
    pairs: list[tuple[str, str]] = []
    # Accept query attributes in the path too (pkcs11:token=x;pin-source=...), a common slip.
    for part in [p for p in path.split(";") if p] + [q for q in query.split("&") if q]:
        name, eq, value = part.partition("=")
        if not eq:
            raise Pkcs11UriError(f"pkcs11 URI attribute without '=': {name!r}")
        pairs.append((name.strip().lower(), value))
    return pairs


def parse(uri: str) -> Pkcs11Uri:
    """Parse and validate; the error never echoes a pin-value."""
    raw: dict[str, str] = {}
    for name, value in _split(uri.strip()):
        if name == "pin-value":
            raise Pkcs11UriError(
                "pkcs11 URI has pin-value: a PIN must not be written in the configuration; "
                "put it in a file only the daemon can read (chmod 600) and use "
                "pin-source=file:/path/to/pin instead"
            )
        if name.startswith("library-"):
            raise Pkcs11UriError(
                f"pkcs11 URI attribute {name!r} is not supported: choose the library with the "
                "pkcs11_module setting (or module-path=) instead"
            )
        if name not in _PATH_ATTRS | _QUERY_ATTRS:
            raise Pkcs11UriError(
                f"pkcs11 URI attribute {name!r} is not supported; supported: "
                + ", ".join(sorted(_PATH_ATTRS | _QUERY_ATTRS))
            )
        if name in raw:
            raise Pkcs11UriError(f"pkcs11 URI repeats attribute {name!r}")
        raw[name] = value
    text = {name: _text(name, raw[name]) for name in (*_TEXT_ATTRS, *_QUERY_ATTRS) if name in raw}
    type_: ObjectType | None = None
    if "type" in raw:
        value = _text("type", raw["type"])
        matches = [t for t in _TYPES if t == value]
        if not matches:
            raise Pkcs11UriError(f"pkcs11 URI type={value!r}: use one of {', '.join(_TYPES)}")
        type_ = matches[0]
    slot_id: int | None = None
    if "slot-id" in raw:
        value = _text("slot-id", raw["slot-id"])
        if not value.isdigit():
            raise Pkcs11UriError(f"pkcs11 URI slot-id={value!r} is not a decimal number")
        slot_id = int(value)
    return Pkcs11Uri(
        token=text.get("token"),
        manufacturer=text.get("manufacturer"),
        serial=text.get("serial"),
        model=text.get("model"),
        object=text.get("object"),
        id=unquote_to_bytes(raw["id"]) if "id" in raw else None,
        type=type_,
        slot_id=slot_id,
        slot_description=text.get("slot-description"),
        slot_manufacturer=text.get("slot-manufacturer"),
        pin_source=_pin_source(raw["pin-source"]) if "pin-source" in raw else None,
        module_path=Path(text["module-path"]) if "module-path" in raw else None,
        module_name=text.get("module-name"),
    )
