"""The one validation that check-config, start and reload share: the config and its files.

Shape alone is not enough: a key that others can read, a secret file of the wrong length or a
certificate that does not match its key would only fail at the first renewal, after the daemon
had said "valid" or accepted a reload. So every file a connection names is opened here, under the
same mode rules the renewal applies, and each problem is reported with its connection.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from credential_sidecar.config.errors import ConfigError
from credential_sidecar.config.load import load_config
from credential_sidecar.config.model import AccessKeysConnection, Config, RolesAnywhereConnection
from credential_sidecar.files import FileError, check_private_file
from credential_sidecar.upstream.certificate import load_identity
from credential_sidecar.upstream.network import CABundleError, ssl_context
from credential_sidecar.upstream.proxy import ProxyConfigError, load_proxy_credentials
from credential_sidecar.upstream.secret_file import SecretFile


def network_problems(credentials_file: Path | None, ca_bundle: Path | None) -> Iterator[str]:
    """The proxy credentials file (0600, user:password) and a CA bundle (PEM certificates)."""
    if credentials_file is not None:
        try:
            load_proxy_credentials(credentials_file)
        except ProxyConfigError as exc:
            yield str(exc)
    if ca_bundle is not None:
        try:
            ssl_context(ca_bundle)
        except CABundleError as exc:
            yield str(exc)


def file_problems(config: Config) -> Iterator[str]:
    """Every file problem, as ``connections[i] (name): what is wrong and the fix``."""
    for i, conn in enumerate(config.connections):
        try:
            if isinstance(conn, RolesAnywhereConnection):
                load_identity(certificate=conn.certificate, private_key=conn.private_key,
                              passphrase_file=conn.private_key_passphrase_file,
                              intermediates=conn.intermediates)
            elif isinstance(conn, AccessKeysConnection):
                SecretFile.for_connection(conn.name, conn.secret_access_key_file).read()
        except FileError as exc:
            yield f"connections[{i}] ({conn.name}): {exc}"
        for problem in network_problems(conn.proxy_credentials_file, conn.ca_bundle):
            yield f"connections[{i}] ({conn.name}): {problem}"
    for problem in network_problems(None, config.daemon.ca_bundle):
        yield f"daemon.ca_bundle: {problem}"
    key_file = config.daemon.cache_key_file
    if key_file is not None and key_file.exists():
        try:
            check_private_file(key_file, "cache key")
        except FileError as exc:
            yield f"daemon.cache_key_file: {exc}"


def validate(path: str | os.PathLike[str]) -> Config:
    """Load and check a config and every file it names; ConfigError lists all problems.

    Blocking (files, key parsing): run it in a thread from the event loop. Whatever shape the
    input has, the only exception is ConfigError: a reload must be refused, never crash.
    """
    try:
        config = load_config(path)
        problems = list(file_problems(config))
    except ConfigError:
        raise
    except (RecursionError, ValueError, OSError) as exc:
        raise ConfigError(str(path), [f"unusable configuration ({type(exc).__name__})"]) from None
    if problems:
        raise ConfigError(str(Path(path)), problems)
    return config


__all__ = ["file_problems", "network_problems", "validate"]
