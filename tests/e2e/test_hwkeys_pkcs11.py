"""Signing with keys that live on a SoftHSM2 token, reached through p11-kit's proxy."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from credential_sidecar.upstream.hardware import pkcs11_token
from credential_sidecar.upstream.hardware.base import HardwareKey, check, verify
from credential_sidecar.upstream.hardware.chain import select_chain
from credential_sidecar.upstream.hardware.pkcs11_key import (
    CertificateNotFoundError,
    KeyNotFoundError,
    Pkcs11Key,
)
from credential_sidecar.upstream.hardware.pkcs11_token import (
    PinError,
    Pkcs11ModuleError,
    TokenNotFoundError,
)
from tests.helpers.hwkeys import everything_said
from tests.helpers.softhsm import SoftHsm, close_sessions_behind_back, write_secret

WRONG_PIN = "CANARY-wrong-pin-9f3e7c"


@pytest.fixture
def secret_dir(tmp_path: Path) -> Path:
    tmp_path.chmod(0o700)
    return tmp_path


@pytest.fixture
def key_for(softhsm: SoftHsm) -> Iterator[type[Pkcs11Key]]:
    """Open keys and close them all after the test (the token session is then logged out)."""
    opened: list[Pkcs11Key] = []

    class Tracked(Pkcs11Key):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            opened.append(self)

    yield Tracked
    for key in opened:
        key.close()


@pytest.mark.parametrize(("label", "kind"), [("rsa", rsa.RSAPublicKey),
                                             ("p256", ec.EllipticCurvePublicKey),
                                             ("p384", ec.EllipticCurvePublicKey),
                                             ("p256-always", ec.EllipticCurvePublicKey)])
def test_sign_verifies_with_certificate(softhsm: SoftHsm, key_for: type[Pkcs11Key], label: str,
                                        kind: type) -> None:
    key = key_for(softhsm.uri(label))
    assert isinstance(key, HardwareKey)
    assert isinstance(key.public_key(), kind)
    check(key, softhsm.certs[label])
    for n in range(3):  # CKA_ALWAYS_AUTHENTICATE keys need a fresh context login every time
        data = f"string to sign {n}".encode()
        verify(softhsm.certs[label].public_key(), key.sign(data), data)  # type: ignore[arg-type]
    assert key.describe() == f"pkcs11 token 'sidecar' object '{label}'"


def test_key_by_id_only_and_cert_by_id(softhsm: SoftHsm, key_for: type[Pkcs11Key]) -> None:
    key = key_for(f"pkcs11:token=sidecar;id=%03?pin-source=file:{softhsm.pin_file}")
    assert key.certificate() == softhsm.certs["p384"]
    assert key.certificate("pkcs11:token=sidecar;object=rsa;type=cert") == softhsm.certs["rsa"]


def test_only_the_real_chain_is_chosen(softhsm: SoftHsm, key_for: type[Pkcs11Key]) -> None:
    key = key_for(softhsm.uri("p256"))
    candidates = key.token_certificates()
    assert len(candidates) == 8  # 4 leaves, our intermediate, 3 unrelated (one a lookalike)
    leaf = key.certificate()
    assert select_chain(leaf, candidates, softhsm.root.cert) == [softhsm.intermediate.cert]
    assert select_chain(leaf, candidates) == [softhsm.intermediate.cert]


def test_concurrent_signing_shares_one_session(softhsm: SoftHsm,
                                               key_for: type[Pkcs11Key]) -> None:
    keys = [key_for(softhsm.uri(label)) for label in ("rsa", "p256", "p384")]
    errors: list[BaseException] = []

    def work(key: Pkcs11Key) -> None:
        try:
            for n in range(10):
                verify(key.public_key(), key.sign(b"%d" % n), b"%d" % n)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in keys * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len({id(k._token) for k in keys}) == 1


def test_session_closed_behind_our_back_is_reopened(softhsm: SoftHsm,
                                                    key_for: type[Pkcs11Key]) -> None:
    key = key_for(softhsm.uri("rsa"))
    verify(key.public_key(), key.sign(b"before"), b"before")
    close_sessions_behind_back(softhsm, "sidecar")
    with structlog.testing.capture_logs() as logs:
        verify(key.public_key(), key.sign(b"after"), b"after")
    events = [(e["event"], e.get("error")) for e in logs]
    assert ("pkcs11 session lost, logging in again", "SessionHandleInvalid") in events
    assert ("pkcs11 session opened", None) in events


def test_wrong_pin_is_clear_and_never_shown(softhsm: SoftHsm, secret_dir: Path,
                                            caplog: pytest.LogCaptureFixture,
                                            capfd: pytest.CaptureFixture[str]) -> None:
    pin = write_secret(secret_dir / "pin", WRONG_PIN)
    uri = f"pkcs11:token=pintest;object=p256?pin-source=file:{pin}"
    with structlog.testing.capture_logs() as logs:
        with pytest.raises(PinError) as first:
            Pkcs11Key(uri)
        with pytest.raises(PinError) as second:
            Pkcs11Key(uri)
    assert "wrong PIN for token 'pintest'" in str(first.value)
    assert "fix the file" in str(first.value)
    assert "already refused this PIN" in str(second.value)
    out, err = capfd.readouterr()
    for text in (everything_said(first.value), everything_said(second.value), repr(logs),
                 caplog.text, out, err):
        assert WRONG_PIN not in text
    # The right PIN still works afterwards: only the refused PIN is blocked.
    Pkcs11Key(uri.replace(str(pin), str(softhsm.pin_file))).close()


def test_missing_object_lists_what_exists(softhsm: SoftHsm) -> None:
    with pytest.raises(KeyNotFoundError) as err:
        Pkcs11Key(softhsm.uri("nope"))
    text = str(err.value)
    assert "no private key on token 'sidecar' matches" in text
    for label in ("'rsa' id=01", "'p256' id=02", "'p384' id=03",
                  "certificate object='intermediate'"):
        assert label in text


def test_always_authenticate_key_needs_a_pin(softhsm: SoftHsm, key_for: type[Pkcs11Key]) -> None:
    key_for(softhsm.uri("rsa"))  # logs the token in, so opening the next key needs no PIN
    with pytest.raises(PinError, match="needs a PIN before every signature"):
        Pkcs11Key("pkcs11:token=sidecar;object=p256-always")


def test_missing_certificate(softhsm: SoftHsm, key_for: type[Pkcs11Key]) -> None:
    key = key_for(softhsm.uri("rsa"))
    with pytest.raises(CertificateNotFoundError, match="no certificate"):
        key.certificate("pkcs11:token=sidecar;object=absent;type=cert")


def test_missing_token_lists_labels(softhsm: SoftHsm) -> None:
    with pytest.raises(TokenNotFoundError) as err:
        Pkcs11Key(softhsm.uri("rsa", token="nosuchtoken"))
    assert "'sidecar'" in str(err.value) and "'pintest'" in str(err.value)


def test_module_errors(softhsm: SoftHsm, tmp_path: Path) -> None:
    with pytest.raises(Pkcs11ModuleError, match="not found"):
        Pkcs11Key(softhsm.uri("rsa"), module=tmp_path / "absent.so")
    junk = tmp_path / "junk.so"
    junk.write_bytes(b"not an ELF file")
    with pytest.raises(Pkcs11ModuleError, match="cannot be loaded"):
        Pkcs11Key(softhsm.uri("rsa"), module=junk)


def test_direct_module_path(softhsm: SoftHsm) -> None:
    """pkcs11_module pointing at SoftHSM itself (a fresh process: a module loads once)."""
    code = (
        "import sys; from pathlib import Path\n"
        "from credential_sidecar.upstream.hardware.pkcs11_key import Pkcs11Key\n"
        "from credential_sidecar.upstream.hardware.base import verify\n"
        "k = Pkcs11Key(sys.argv[1], module=Path(sys.argv[2]))\n"
        "verify(k.public_key(), k.sign(b'x'), b'x'); print(k._module.path); k.close()\n"
    )
    out = subprocess.run([sys.executable, "-W", "error", "-c", code, softhsm.uri("p256"),
                          str(softhsm.softhsm_lib)], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parents[2])
    assert out.stdout.strip().splitlines()[-1] == str(softhsm.softhsm_lib)


def test_locked_pin_is_reported(softhsm: SoftHsm, monkeypatch: pytest.MonkeyPatch) -> None:
    """SoftHSM never locks a PIN, so fake the token flag the real device would set."""
    real = pkcs11_token.find_token

    class Locked:
        def __init__(self, token: object) -> None:
            self._token = token

        def __getattr__(self, name: str) -> object:
            return getattr(self._token, name)

        @property
        def flags(self) -> int:
            return int(self._token.flags) | pkcs11_token.TokenFlag.USER_PIN_LOCKED  # type: ignore[attr-defined]

    monkeypatch.setattr(pkcs11_token, "find_token", lambda m, u: Locked(real(m, u)))
    with pytest.raises(pkcs11_token.PinLockedError, match="user PIN of token 'pintest' is locked"):
        Pkcs11Key(softhsm.uri("p256", token="pintest"))
