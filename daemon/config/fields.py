"""The field types the configuration models share: paths, key and certificate references, names.

Each carries its own check and message, so a model reads as a list of keys.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    PlainSerializer,
    PlainValidator,
    StrictInt,
    ValidationInfo,
)

from credential_sidecar.config.pkcs11_uri import parse as parse_pkcs11_uri
from credential_sidecar.config.values import (
    CREDENTIALS_PREFIXES,
    Address,
    check_endpoint,
    check_name,
    check_proxy_url,
    check_region,
    check_session_name,
    parse_address,
)


def not_empty(value: Any) -> Any:
    if value == "":
        raise ValueError("must not be empty")
    if isinstance(value, str) and "\0" in value:
        raise ValueError("must not contain a NUL character")
    return value


def _resolve(value: Path, info: ValidationInfo) -> Path:
    """Relative paths are relative to the configuration file, not to the daemon's cwd.

    A path starting with ``$CREDENTIALS_DIRECTORY/`` names a systemd credential (LoadCredential=):
    systemd does not expand the config file, so the daemon does. Without that variable (say,
    check-config in a shell) the path stays as written, and opening it says what is missing.
    """
    text = str(value)
    if text in (p.rstrip("/") for p in CREDENTIALS_PREFIXES):
        raise ValueError("names the credentials directory itself; name a file in it")
    for prefix in CREDENTIALS_PREFIXES:
        if text.startswith(prefix):
            directory = os.environ.get("CREDENTIALS_DIRECTORY")
            return Path(directory) / text[len(prefix) :] if directory else value
    base = (info.context or {}).get("base_dir")
    if base is not None and not value.is_absolute():
        return Path(base) / value
    return value


ConfigPath = Annotated[Path, BeforeValidator(not_empty), AfterValidator(_resolve)]


def _pkcs11_uri(value: str) -> str:
    """Shape only (the token is reached at start-up); refuses pin-value, naming no PIN."""
    parse_pkcs11_uri(value)
    return value


def _key_ref(value: Any, info: ValidationInfo) -> Path | str:
    """A key file, a ``pkcs11:`` URI (kept as text) or a TPM persistent ``handle:0x81...``."""
    if isinstance(value, str) and value.startswith("pkcs11:"):
        return _pkcs11_uri(value)
    if isinstance(value, str) and value.startswith("handle:"):
        try:
            handle = int(value.removeprefix("handle:"), 0)
        except ValueError:
            raise ValueError("a TPM handle is written handle:0x81000002") from None
        if not 0x81000000 <= handle <= 0x81FFFFFF:
            raise ValueError("TPM persistent handles are 0x81000000-0x81FFFFFF")
        return value
    return _cert_ref(value, info)


def _cert_ref(value: Any, info: ValidationInfo) -> Path | str:
    """A certificate file, or a ``pkcs11:`` URI of a certificate on the key's token."""
    if isinstance(value, str) and value.startswith("pkcs11:"):
        return _pkcs11_uri(value)
    if not isinstance(value, str | Path):
        raise ValueError("must be a path")
    return _resolve(Path(not_empty(value)), info)


KeyRef = Annotated[Path | str, PlainValidator(_key_ref)]


CertificateRef = Annotated[Path | str, PlainValidator(_cert_ref)]


ListenAddress = Annotated[
    Address,
    PlainValidator(parse_address),
    PlainSerializer(str, return_type=str, when_used="always"),
]


Region = Annotated[str, AfterValidator(check_region)]


Endpoint = Annotated[str, AfterValidator(check_endpoint)]


ProxyUrl = Annotated[str, AfterValidator(check_proxy_url)]


ConnectionName = Annotated[str, AfterValidator(check_name)]


SessionName = Annotated[str, AfterValidator(check_session_name)]


SystemId = Annotated[StrictInt, Field(ge=0, le=4294967294)]

