"""The persistent credential cache: sets survive restarts, never in the clear.

Each connection's current set is sealed with AES-GCM under a key kept in its own
0600 file (or a systemd credential). The associated data binds the file to the
connection's name and identity (role, certificate, key id ...), so a changed
role or certificate, a renamed connection or another host's file fails to open
and is ignored rather than served.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from credential_sidecar.credentials import Credentials, iso_z, parse_time
from credential_sidecar.files import FileError, atomic_write, check_private_file
from credential_sidecar.logs import SECRETS, get_logger

log = get_logger()
MAGIC = b"CSC1"
NONCE = 12
KEY_NAME = "cache-key"


def load_or_create_key(path: Path, *, ours: bool = True) -> bytes:
    """A 32-byte key from a private file, created (0600) on first use.

    The key appears whole or not at all (linked into place after an fsync): a full disk or a
    crash leaves no key rather than a short one. A key file of the wrong length that the daemon
    made itself (``ours``: in state_dir) is never trusted and never silently kept: it is moved
    aside with an error in the log and a new key is made (the sets sealed under the old one no
    longer open and are renewed). One the operator provides (a systemd credential) is refused.
    """
    if not path.exists():
        _create_key(path)
    check_private_file(path, "cache key")
    key = path.read_bytes()
    if len(key) == 32:
        return key
    problem = f"cache key {path} must hold exactly 32 bytes (it has {len(key)})"
    if not ours:
        raise FileError(problem + ": replace it with 32 random bytes")
    aside = path.with_name(f"{path.name}.damaged")
    os.replace(path, aside)
    log.error("cache key unusable: set aside, a new one is made; cached sets will be renewed",
              path=str(path), moved_to=str(aside), length=len(key))
    _create_key(path)
    return path.read_bytes()


def _create_key(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write(path, secrets.token_bytes(32), replace=False)
    log.info("cache key created", path=str(path))


def derive_key(key: bytes, purpose: str) -> bytes:
    """Another 32-byte key from the cache key, for one purpose (the IMDS token key): one secret
    file to protect, and tokens that outlive a restart as real IMDS tokens outlive theirs."""
    return hmac.new(key, b"credential-sidecar derived key v1\0" + purpose.encode(),
                    hashlib.sha256).digest()


def default_key_path(state_dir: Path) -> Path:
    creds_dir = os.environ.get("CREDENTIALS_DIRECTORY")
    if creds_dir and (Path(creds_dir) / KEY_NAME).exists():
        return Path(creds_dir) / KEY_NAME
    return state_dir / KEY_NAME


def _aad(name: str, binding: str) -> bytes:
    return b"credential-sidecar cache v1\0" + name.encode() + b"\0" + binding.encode()


def seal_blob(aead: AESGCM, magic: bytes, aad: bytes, plain: bytes) -> bytes:
    """``magic``, a fresh nonce and the AES-GCM ciphertext: the one sealed-file format in
    state_dir (cached sets, kept container tokens)."""
    nonce = secrets.token_bytes(NONCE)
    return magic + nonce + aead.encrypt(nonce, plain, aad)


def open_blob(aead: AESGCM, magic: bytes, aad: bytes, blob: bytes) -> bytes:
    """The plain text of a :func:`seal_blob` file; ValueError for a truncated or foreign file,
    InvalidTag for one sealed under another key or for another purpose."""
    if len(blob) < len(magic) + NONCE + 16 or not blob.startswith(magic):
        raise ValueError("not a credential-sidecar cache file (truncated or foreign)")
    nonce = blob[len(magic) : len(magic) + NONCE]
    return aead.decrypt(nonce, blob[len(magic) + NONCE :], aad)


def seal(key: bytes, name: str, binding: str, creds: Credentials) -> bytes:
    document = {
        "access_key_id": creds.access_key_id,
        "secret_access_key": creds.secret_access_key,
        "session_token": creds.session_token,
        "expiration": iso_z(creds.expiration),
        "issued_at": iso_z(creds.issued_at),
        "account_id": creds.account_id,
    }
    return seal_blob(AESGCM(key), MAGIC, _aad(name, binding), json.dumps(document).encode())


def unseal(key: bytes, name: str, binding: str, blob: bytes) -> Credentials:
    """Raises ValueError for anything that is not our own intact file for this binding."""
    try:
        plain = open_blob(AESGCM(key), MAGIC, _aad(name, binding), blob)
    except InvalidTag:
        raise ValueError(
            "does not open with this key for this connection's current identity "
            "(corrupt, from another host, or the role or certificate changed)"
        ) from None
    doc = json.loads(plain)
    SECRETS.add(doc["secret_access_key"], doc["session_token"])
    return Credentials(
        access_key_id=doc["access_key_id"],
        secret_access_key=doc["secret_access_key"],
        session_token=doc["session_token"],
        expiration=parse_time(doc["expiration"]),
        issued_at=parse_time(doc["issued_at"]),
        account_id=doc.get("account_id"),
    )


class CredentialCache:
    def __init__(self, directory: Path, key: bytes) -> None:
        self.directory = directory
        self._key = key
        self._locks: dict[str, asyncio.Lock] = {}

    async def _in_order(self, name: str, work: Callable[[], object]) -> None:
        """One connection's file changes land in the order they were asked. A renewal cancelled
        by a reload leaves its write running in a thread; without this, that older write could
        land after the reload's and a restart would find the set bound to the old settings."""
        async with self._locks.setdefault(name, asyncio.Lock()):
            running = asyncio.ensure_future(asyncio.to_thread(work))
            try:
                await asyncio.shield(running)
            except asyncio.CancelledError:
                await asyncio.wait([running])  # the lock is held until the thread is done
                if not running.cancelled() and running.exception() is not None:
                    log.warning("cache write failed", connection=name,
                                error=str(running.exception()))
                raise

    def path(self, name: str) -> Path:
        return self.directory / f"{name}.cred"

    def _write(self, name: str, blob: bytes) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write(self.path(name), blob)

    async def save(self, name: str, binding: str, creds: Credentials) -> None:
        blob = seal(self._key, name, binding, creds)
        try:
            await self._in_order(name, lambda: self._write(name, blob))
        except OSError as exc:
            log.warning("cannot persist credentials", connection=name, error=str(exc))

    async def load(self, name: str, binding: str) -> Credentials | None:
        path = self.path(name)
        try:
            blob = await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("cache file unreadable, ignored", connection=name, error=str(exc))
            return None
        try:
            return unseal(self._key, name, binding, blob)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("cache file ignored", connection=name, path=str(path), reason=str(exc))
            return None

    def _pending_path(self, name: str) -> Path:
        return self.directory / f"{name}.pending"

    async def mark_pending(self, name: str, reason: str | None) -> None:
        """A reload's pending state, in the clear (a reason, never a secret)."""
        path = self._pending_path(name)
        try:
            if reason is None:
                await self._in_order(name, lambda: path.unlink(missing_ok=True))
            else:
                await self._in_order(name, lambda: self._write_pending(path, reason))
        except OSError as exc:
            log.warning("reload state not persisted", connection=name, error=str(exc))

    def _write_pending(self, path: Path, reason: str) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write(path, reason.encode("utf-8"))

    async def pending(self, name: str) -> str | None:
        try:
            data = await asyncio.to_thread(self._pending_path(name).read_bytes)
        except OSError:
            return None
        return data[:512].decode("utf-8", "replace") or None

    def forget(self, name: str) -> None:
        self.path(name).unlink(missing_ok=True)
