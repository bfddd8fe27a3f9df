"""PKCS#11 modules and tokens: load a module once, keep one logged-in session per token.

Login state in PKCS#11 is per process and token, so every key on a token shares one session
(a second C_Login would fail with CKR_USER_ALREADY_LOGGED_IN). Each token has a lock that is
held for the whole SignInit/Sign pair. A session that vanished (token pulled, module restarted,
someone logged us out) is re-opened and re-logged-in once. A PIN the token rejected is never
tried again in this process: every wrong try counts toward locking the token.
"""

from __future__ import annotations

import glob
import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import pkcs11
import pkcs11.exceptions as p11e
import structlog
from pkcs11 import TokenFlag

from credential_sidecar.config.pkcs11_uri import Pkcs11Uri
from credential_sidecar.upstream.hardware.base import HardwareKeyError, Secret

if TYPE_CHECKING:
    from pkcs11._pkcs11 import lib as Pkcs11Lib

log = structlog.get_logger(__name__)
T = TypeVar("T")

P11KIT_MODULES = Path("/usr/share/p11-kit/modules")
PROXY_GLOBS = ("/usr/lib/*-linux-gnu*/p11-kit-proxy.so", "/usr/lib64/p11-kit-proxy.so",
               "/usr/lib/p11-kit-proxy.so")
# Errors after which the session (or its object handles) are gone but a new one may work.
SESSION_LOST: tuple[type[Exception], ...] = (
    p11e.SessionHandleInvalid, p11e.SessionClosed, p11e.DeviceRemoved, p11e.TokenNotPresent,
    p11e.UserNotLoggedIn, p11e.ObjectHandleInvalid, p11e.KeyHandleInvalid,
)


class Pkcs11Error(HardwareKeyError):
    """A PKCS#11 failure, described with the token and the fix."""


class Pkcs11ModuleError(Pkcs11Error):
    """The module (.so) is missing or cannot be loaded."""


class TokenNotFoundError(Pkcs11Error):
    """No token matches the URI; the message lists the tokens that exist."""


class PinError(Pkcs11Error):
    """The PIN is missing or wrong."""


class PinLockedError(PinError):
    """The token locked the user PIN after too many wrong tries."""


def default_module() -> Path:
    """p11-kit's proxy: it loads every module registered in /usr/share/p11-kit/modules."""
    for pattern in PROXY_GLOBS:
        for found in sorted(glob.glob(pattern)):
            return Path(found)
    raise Pkcs11ModuleError(
        "no pkcs11_module configured and p11-kit's proxy module is not installed: "
        "apt-get install p11-kit-modules, or set pkcs11_module to the token's .so"
    )


def resolve_module(configured: Path | None, uri: Pkcs11Uri) -> Path:
    """URI module-path, then URI module-name (a p11-kit module file), then config, then proxy."""
    if uri.module_path is not None:
        return uri.module_path
    if uri.module_name is not None:
        conf = P11KIT_MODULES / f"{uri.module_name}.module"
        try:
            lines = conf.read_text().splitlines()
        except OSError:
            raise Pkcs11ModuleError(f"module-name={uri.module_name}: {conf} not found") from None
        for line in lines:
            key, _, value = line.partition(":")
            if key.strip() == "module" and value.strip():
                path = Path(value.strip())
                return path if path.is_absolute() else Path(default_module().parent, "pkcs11", path)
        raise Pkcs11ModuleError(f"{conf} has no 'module:' line")
    return configured if configured is not None else default_module()


@dataclass
class Module:
    path: Path
    lib: Pkcs11Lib
    # python-pkcs11 calls C_Initialize(NULL): the module may then assume one thread at a time.
    # p11-kit's proxy is thread-safe and initialises real modules with OS locking; any other
    # module gets one lock shared by all of its tokens.
    shared_lock: threading.Lock | None


_modules: dict[Path, Module] = {}
_tokens: dict[tuple[Path, str, str], Token] = {}
_rejected: dict[tuple[Path, str, str], bytes] = {}  # token -> digest of the PIN it refused
_registry_lock = threading.Lock()


def load_module(path: Path) -> Module:
    """Load (once per process: a second C_Initialize would fail) and cache a module."""
    path = Path(path)
    with _registry_lock:
        if path in _modules:
            return _modules[path]
        if not path.exists():
            raise Pkcs11ModuleError(
                f"PKCS#11 module {path} not found: install the token's module package "
                "(p11-kit-modules for the proxy, softhsm2, opensc-pkcs11, ...) or fix pkcs11_module"
            )
        try:
            lib = pkcs11.lib(str(path))
        except p11e.PKCS11Error as exc:
            raise Pkcs11ModuleError(
                f"PKCS#11 module {path} cannot be loaded ({exc or type(exc).__name__}): "
                "is it a PKCS#11 module for this architecture?"
            ) from None
        proxy = path.name == "p11-kit-proxy.so"
        module = Module(path, lib, None if proxy else threading.Lock())
        _modules[path] = module
        return module


def _token_summary(token: pkcs11.Token) -> str:
    return f"'{token.label}' (serial {token.serial.decode(errors='replace').strip()!r}, " \
           f"slot {token.slot.slot_id})"


def _matches(uri: Pkcs11Uri, slot: pkcs11.Slot, token: pkcs11.Token) -> bool:
    serial = token.serial.decode(errors="replace").strip()
    return all((
        uri.token is None or token.label == uri.token,
        uri.serial is None or serial == uri.serial,
        uri.manufacturer is None or token.manufacturer_id == uri.manufacturer,
        uri.model is None or token.model == uri.model,
        uri.slot_id is None or slot.slot_id == uri.slot_id,
        uri.slot_description is None or slot.slot_description == uri.slot_description,
        uri.slot_manufacturer is None or slot.manufacturer_id == uri.slot_manufacturer,
    ))


def find_token(module: Module, uri: Pkcs11Uri) -> pkcs11.Token:
    """The one present token the URI selects, or an error listing what is there."""
    seen: list[pkcs11.Token] = []
    hits: list[pkcs11.Token] = []
    for slot in module.lib.get_slots(token_present=True):
        try:
            token = slot.get_token()
        except p11e.PKCS11Error:  # a slot that lost its token between the two calls
            continue
        seen.append(token)
        if _matches(uri, slot, token):
            hits.append(token)
    if len(hits) == 1:
        return hits[0]
    listed = ", ".join(_token_summary(t) for t in seen) or "none"
    if hits:
        raise TokenNotFoundError(
            f"{len(hits)} tokens match {uri.with_type('private')} in {module.path}: "
            f"{', '.join(_token_summary(t) for t in hits)}; add serial= to the URI"
        )
    raise TokenNotFoundError(
        f"no token matches {uri} in module {module.path}; tokens present: {listed}. "
        "Check token= in the URI (p11tool --list-tokens, pkcs11-tool -L) and that the "
        "device is plugged in"
    )


@dataclass
class Token:
    """One token's shared session; keys call :meth:`run` with what to do on it."""

    module: Module
    key: tuple[Path, str, str]
    name: str  # "token 'sidecar'" for messages
    pin: Secret | None
    lock: threading.Lock = field(default_factory=threading.Lock)
    session: pkcs11.Session | None = None
    generation: int = 0  # bumped on every (re)open: object handles from older ones are stale
    users: int = 0

    def _digest(self, pin: Secret) -> bytes:
        return hashlib.sha256(b"credential-sidecar rejected pin\0" + pin.reveal()).digest()

    def _open(self, uri: Pkcs11Uri) -> None:
        token = find_token(self.module, uri)
        flags = token.flags
        if flags & TokenFlag.USER_PIN_LOCKED:
            raise PinLockedError(
                f"the user PIN of {self.name} is locked: unlock it with the SO PIN "
                "(pkcs11-tool --init-pin --login --login-type so) and update the PIN file"
            )
        if not flags & TokenFlag.LOGIN_REQUIRED:
            self.session = token.open()
        elif self.pin is None:
            raise PinError(
                f"{self.name} requires a PIN: add pin-source=file:/path to the URI "
                "(a file only the daemon's user can read)"
            )
        else:
            if _rejected.get(self.key) == self._digest(self.pin):
                raise PinError(
                    f"{self.name} already refused this PIN; not trying it again (each wrong "
                    "try brings the token closer to locking): fix the PIN file"
                )
            try:
                self.session = token.open(user_pin=self.pin.reveal_text())
            except p11e.PinIncorrect:
                _rejected[self.key] = self._digest(self.pin)
                raise PinError(
                    f"wrong PIN for {self.name} ({uri}): the token rejected the PIN from the "
                    "PIN file; fix the file; it will not be retried"
                ) from None
            except p11e.PinLocked:
                raise PinLockedError(
                    f"the user PIN of {self.name} is locked: unlock it with the SO PIN"
                ) from None
        self.generation += 1
        log.info("pkcs11 session opened", token=self.name, module=str(self.module.path))

    def drop(self) -> None:
        """Close the session if it still exists; errors mean it was already gone."""
        session, self.session = self.session, None
        if session is not None:
            try:
                session.close()
            except p11e.PKCS11Error:
                pass

    def run(self, uri: Pkcs11Uri, op: Callable[[pkcs11.Session], T]) -> T:
        """Run ``op`` on the logged-in session; on a lost session re-open once and retry.

        python-pkcs11's errors become ours, named after the token (theirs carry no text).
        """
        with self.module.shared_lock or self.lock:
            try:
                return self._run_once_more(uri, op)
            except p11e.PinIncorrect:  # only C_Login(CKU_CONTEXT_SPECIFIC) gets here
                raise PinError(f"{self.name} refused the context-specific login for {uri} "
                               "(CKA_ALWAYS_AUTHENTICATE key): fix the PIN file") from None
            except p11e.PKCS11Error as exc:
                raise Pkcs11Error(f"{self.name}: {uri}: {type(exc).__name__} "
                                  f"{exc}".rstrip()) from None

    def _run_once_more(self, uri: Pkcs11Uri, op: Callable[[pkcs11.Session], T]) -> T:
        if self.session is None:
            self._open(uri)
        assert self.session is not None
        try:
            return op(self.session)
        except SESSION_LOST as exc:
            log.warning("pkcs11 session lost, logging in again", token=self.name,
                        error=type(exc).__name__)
            self.drop()
        self._open(uri)
        assert self.session is not None
        return op(self.session)


def acquire(module: Module, uri: Pkcs11Uri, pin: Secret | None) -> Token:
    """The shared Token for the URI's token (found now, so a bad URI fails at startup)."""
    found = find_token(module, uri)
    ident = (module.path, found.label, found.serial.decode(errors="replace").strip())
    with _registry_lock:
        token = _tokens.get(ident)
        if token is None:
            token = Token(module, ident, f"token '{found.label}'", pin)
            _tokens[ident] = token
        token.users += 1
        return token


def release(token: Token) -> None:
    """Drop one user; the last one closes the session (which logs out)."""
    with _registry_lock:
        token.users -= 1
        if token.users > 0:
            return
        _tokens.pop(token.key, None)
    with token.module.shared_lock or token.lock:
        token.drop()
