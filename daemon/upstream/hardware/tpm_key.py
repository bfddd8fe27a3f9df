"""A TPM 2.0 key as a HardwareKey, through tpm2-pytss (ESAPI over a TCTI).

The key is either a ``TSS2 PRIVATE KEY`` file (a blob only this TPM can unwrap, loaded under
its parent) or a persistent handle (``handle:0x81000002``). Data is hashed here and the TPM
signs the digest: RSASSA-PKCS1-v1_5 or ECDSA with SHA-256, the latter converted to DER.

One ESAPI connection per TCTI is shared by all keys and used under a lock: a raw swtpm or
mssim socket serves one client at a time, and /dev/tpmrm0 gains nothing from more.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import structlog

from credential_sidecar.upstream.hardware import tpm_esys as esys
from credential_sidecar.upstream.hardware.base import PublicKey, Secret, read_secret_file
from credential_sidecar.upstream.hardware.tpm_esys import TpmAuthError, TpmError
from credential_sidecar.upstream.hardware.tss2_pem import TpmKeyFile, decode_pem

log = structlog.get_logger(__name__)
T = TypeVar("T")
DEFAULT_TCTI = "device:/dev/tpmrm0"


@dataclass
class _Connection:
    tcti: str
    ctx: Any = None  # tpm2_pytss.ESAPI
    lock: threading.Lock = field(default_factory=threading.Lock)
    generation: int = 0
    users: int = 0


_connections: dict[str, _Connection] = {}
_registry_lock = threading.Lock()


def _acquire(tcti: str) -> _Connection:
    with _registry_lock:
        conn = _connections.setdefault(tcti, _Connection(tcti))
        conn.users += 1
        return conn


def _release(conn: _Connection) -> None:
    with _registry_lock:
        conn.users -= 1
        if conn.users > 0:
            return
        _connections.pop(conn.tcti, None)
    with conn.lock:
        esys.close(conn.ctx)
        conn.ctx = None


def _auth(path: Path | None, what: str) -> Secret | None:
    return read_secret_file(path, what, strip_newline=False) if path is not None else None


def parse_key_spec(spec: str | Path) -> int | Path:
    """``handle:0x81000002`` (a persistent handle) or a path to a TSS2 PEM file."""
    text = str(spec)
    if text.startswith("handle:"):
        try:
            handle = int(text[len("handle:"):], 0)
        except ValueError:
            raise TpmError(f"{text!r}: write the handle as handle:0x81000002") from None
        if not 0x81000000 <= handle <= 0x81FFFFFF:
            raise TpmError(f"{text}: persistent handles are 0x81000000-0x81FFFFFF")
        return handle
    return Path(text)


class TpmKey:
    """A TPM-resident key; ``sign`` blocks, so run it in an executor."""

    def __init__(self, private_key: str | Path, *, tcti: str = DEFAULT_TCTI,
                 key_auth_file: Path | None = None, parent_auth_file: Path | None = None) -> None:
        self._source = parse_key_spec(private_key)
        self._keyfile: TpmKeyFile | None = None
        if isinstance(self._source, Path):
            try:
                data = self._source.read_bytes()
            except OSError as exc:
                raise TpmError(f"TPM key file {self._source}: {exc.strerror}") from None
            self._keyfile = decode_pem(data)
        self._key_auth = _auth(key_auth_file, "TPM key auth file")
        self._parent_auth = _auth(parent_auth_file, "TPM parent auth file")
        self._tcti = tcti
        self._conn = _acquire(tcti)
        self._handle: Any = None
        self._generation = -1
        self._public: PublicKey | None = None
        self._scheme: Any = None
        self._auth_failed: TpmAuthError | None = None
        self._closed = False
        try:
            self._run(lambda ctx: None)
        except BaseException:
            _release(self._conn)
            raise

    def describe(self) -> str:
        where = f"file {self._source}" if isinstance(self._source, Path) \
            else f"handle {self._source:#010x}"
        return f"tpm key {where} via {self._tcti}"

    def _ensure_loaded(self, ctx: Any) -> None:
        """(Re)load after a (re)connect: transient handles die with their connection."""
        if self._handle is not None and self._generation == self._conn.generation:
            return
        auth = self._key_auth.reveal() if self._key_auth else b""
        parent_auth = self._parent_auth.reveal() if self._parent_auth else b""
        if self._keyfile is not None:
            handle = esys.load_keyfile(ctx, self._keyfile, parent_auth, self.describe())
        else:
            assert isinstance(self._source, int)
            handle = esys.persistent(ctx, self._source, self.describe())
        try:
            esys.set_auth(ctx, handle, auth)
            public, scheme = esys.public_key(ctx, handle, self.describe())
        except BaseException:
            esys.unload(ctx, handle, transient=self._keyfile is not None)
            raise
        self._handle, self._generation = handle, self._conn.generation
        self._public, self._scheme = public, scheme

    def _run(self, op: Callable[[Any], T]) -> T:
        """Open the connection and load the key as needed; reconnect once if it broke."""
        conn = self._conn
        with conn.lock:
            for attempt in (1, 2):
                try:
                    if conn.ctx is None:
                        conn.ctx = esys.open_esapi(conn.tcti)
                        conn.generation += 1
                    self._ensure_loaded(conn.ctx)
                    return op(conn.ctx)
                except esys.Reconnect as exc:
                    if attempt == 2:
                        raise TpmError(f"{self.describe()}: {exc}") from None
                    log.warning("tpm connection lost, reconnecting", key=self.describe(),
                                error=str(exc))
                    esys.close(conn.ctx)
                    conn.ctx = None
            raise AssertionError("unreachable")

    def public_key(self) -> PublicKey:
        assert self._public is not None
        return self._public

    def sign(self, data: bytes) -> bytes:
        """PKCS#1 v1.5 SHA-256 (RSA) or DER ECDSA-SHA256 (EC); blocking."""
        if self._closed:
            raise TpmError(f"{self.describe()} is closed")
        if self._auth_failed is not None:  # each retry would count toward DA lockout
            raise TpmAuthError(f"{self._auth_failed}; not retried: re-open the key after "
                               "fixing the auth file")
        digest = hashlib.sha256(data).digest()

        def op(ctx: Any) -> bytes:
            return esys.sign(ctx, self._handle, self._scheme, digest, self._auth_hint(),
                             self.describe())

        try:
            return self._run(op)
        except TpmAuthError as exc:
            self._auth_failed = exc
            raise

    def _auth_hint(self) -> str:
        if self._key_auth is not None:
            return "the auth value in the key auth file was rejected; fix tpm_key_auth_file"
        if self._keyfile is not None and not self._keyfile.empty_auth:
            return "the key file says the key has an auth value (emptyAuth false): set " \
                   "tpm_key_auth_file"
        return "the key needs an auth value: set tpm_key_auth_file"

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._conn.lock:
            if self._conn.ctx is not None and self._generation == self._conn.generation:
                esys.unload(self._conn.ctx, self._handle, transient=self._keyfile is not None)
            self._handle = None
        _release(self._conn)

    def __repr__(self) -> str:
        return f"<TpmKey {self.describe()}>"

