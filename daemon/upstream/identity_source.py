"""An identity kept current: loaded off the event loop, re-read when its files change on disk.

A renewed certificate is picked up without a restart; a hardware key stays open across
certificate reloads (a token session, a loaded TPM key) and is reopened only when its own
settings or files change.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import structlog

from credential_sidecar.files import FileError
from credential_sidecar.upstream.certificate import (
    HardwareSettings,
    Identity,
    is_hardware,
    load_hardware_identity,
    load_identity,
    optional_path,
    pin_source,
)
from credential_sidecar.upstream.hardware.base import (
    HardwareKey,
    HardwareKeyError,
)

# Inode, device, mtime, ctime, size and mode: ctime and mode catch a chmod that fixes a refusal.
_Signature = tuple[tuple[int, int, int, int, int, int] | None, ...]


class IdentitySource:
    """Holds the loaded Identity and re-reads it when any of its files changes (renewed certs)."""

    def __init__(
        self,
        *,
        certificate: Path | str,
        private_key: Path | str | None = None,
        passphrase_file: Path | None = None,
        intermediates: Path | None = None,
        hardware: HardwareSettings | None = None,
    ) -> None:
        self._certificate = certificate if isinstance(certificate, str) else Path(certificate)
        self._private_key = private_key if isinstance(private_key, str) else optional_path(
            private_key)
        self._passphrase_file = optional_path(passphrase_file)
        self._intermediates = optional_path(intermediates)
        self._hardware = hardware or HardwareSettings()
        # A hardware key stays open across certificate reloads (a token login, a TPM load);
        # it is re-opened only when its own files (TSS2 key, PIN, auth) change.
        self._key_files = [
            p
            for p in (
                pin_source(self._private_key),
                self._private_key if isinstance(self._private_key, Path) else None,
                self._hardware.tpm_key_auth_file,
                self._hardware.tpm_parent_auth_file,
            )
            if p is not None
        ]
        self._hw_key: HardwareKey | None = None
        self._hw_signature: _Signature | None = None
        self._retired: list[HardwareKey] = []
        self._files = [
            p
            for p in (
                self._certificate if isinstance(self._certificate, Path) else None,
                self._private_key if isinstance(self._private_key, Path) else None,
                self._passphrase_file,
                self._intermediates,
                *[f for f in self._key_files if f != self._private_key],
            )
            if p is not None
        ]
        self._identity: Identity | None = None
        self._loaded: _Signature | None = None
        self._failed: _Signature | None = None
        self._lock = asyncio.Lock()

    def _signature(self, files: list[Path] | None = None) -> _Signature:
        """A few stat calls: cheap enough for every get(), unlike parsing keys."""
        out: list[tuple[int, int, int, int, int, int] | None] = []
        for path in self._files if files is None else files:
            try:
                st = os.stat(path)
            except OSError:
                out.append(None)
                continue
            out.append(
                (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_mode)
            )
        return tuple(out)

    def _load(self) -> Identity:
        # Sniffed on every load: a TSS2 key file may appear (or replace a key file) later.
        if is_hardware(self._private_key):
            return self._load_hardware()
        return load_identity(
            certificate=self._certificate,
            private_key=self._private_key,
            passphrase_file=self._passphrase_file,
            intermediates=self._intermediates,
        )

    def _load_hardware(self) -> Identity:
        signature = self._signature(self._key_files)
        if self._hw_key is None or signature != self._hw_signature:
            try:
                key = self._hardware.open(str(self._private_key))
            except HardwareKeyError as exc:
                raise FileError(str(exc)) from None
            if self._hw_key is not None:  # a fetch may still hold it: closed in close()
                self._retired.append(self._hw_key)
            self._hw_key, self._hw_signature = key, signature
        return load_hardware_identity(self._certificate, self._hw_key, self._intermediates)

    async def close(self) -> None:
        """Log out of the token / flush the TPM key (blocking calls, so in a thread)."""
        keys = [*self._retired, *([self._hw_key] if self._hw_key else [])]
        self._retired, self._hw_key = [], None
        for key in keys:
            await asyncio.to_thread(key.close)

    def current(self) -> Identity | None:
        return self._identity

    async def get(self) -> Identity:
        """The identity as the files are now, or the last good one while they are broken."""
        signature = self._signature()
        if self._identity is not None and signature in (self._loaded, self._failed):
            return self._identity
        async with self._lock:
            signature = self._signature()
            if self._identity is not None and signature in (self._loaded, self._failed):
                return self._identity
            try:
                identity = await asyncio.to_thread(self._load)
            except Exception as exc:  # a renewal must never take away a working identity
                self._failed = signature
                error = (
                    exc
                    if isinstance(exc, FileError)
                    else FileError(
                        f"certificate {self._certificate} could not be loaded "
                        f"({type(exc).__name__}): check its files"
                    )
                )
                if self._identity is None:
                    raise error from None
                structlog.get_logger().warning(
                    "identity reload failed; still using the previous certificate",
                    certificate=str(self._certificate),
                    serial=self._identity.serial,
                    error=str(error),
                )
                return self._identity
            previous, self._identity = self._identity, identity
            self._loaded, self._failed = signature, None
            if previous is None or previous.fingerprint() != identity.fingerprint():
                structlog.get_logger().info(
                    "identity loaded",
                    certificate=str(self._certificate),
                    serial=identity.serial,
                    not_after=identity.not_after.isoformat(),
                    chain=len(identity.chain),
                )
            return identity

