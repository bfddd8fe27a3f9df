"""Signing with keys inside a software TPM (swtpm) through tpm2-pytss."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from credential_sidecar.files import FileError
from credential_sidecar.upstream.hardware.base import HardwareKey, check, verify
from credential_sidecar.upstream.hardware.tpm_esys import (
    TpmAuthError,
    TpmError,
    TpmKeyNotFoundError,
)
from credential_sidecar.upstream.hardware.tpm_key import TpmKey
from credential_sidecar.upstream.hardware.tss2_pem import decode_pem
from tests.helpers.hwkeys import Issuer, everything_said, make_intermediate, make_leaf, make_root
from tests.helpers.softhsm import write_secret
from tests.helpers.swtpm import Swtpm

WRONG_AUTH = "CANARY-wrong-tpm-auth-5d1b"


@pytest.fixture
def secret_dir(tmp_path: Path) -> Path:
    tmp_path.chmod(0o700)
    return tmp_path
CASES = [("rsa-pem", rsa.RSAPublicKey), ("ec-auth-pem", ec.EllipticCurvePublicKey),
         ("ecp-handle", ec.EllipticCurvePublicKey), ("rsap-handle", rsa.RSAPublicKey),
         ("ec-openssl-pem", ec.EllipticCurvePublicKey)]


@pytest.fixture(scope="module")
def ca() -> Issuer:
    return make_intermediate(make_root("TPM Test Root"), "TPM Test Intermediate")


@pytest.fixture
def open_key(swtpm: Swtpm) -> Iterator[type[TpmKey]]:
    """Keys opened in a test are closed after it: a raw swtpm holds only 3 loaded objects."""
    opened: list[TpmKey] = []

    class Tracked(TpmKey):
        def __init__(self, name: str, **kwargs: object) -> None:
            kwargs.setdefault("tcti", swtpm.tcti)
            if name == "ec-auth-pem":
                kwargs.setdefault("key_auth_file", swtpm.key_auth_file)
            super().__init__(swtpm.keys[name], **kwargs)  # type: ignore[arg-type]
            opened.append(self)

    yield Tracked
    for key in opened:
        key.close()


@pytest.mark.parametrize(("name", "kind"), CASES)
def test_sign_verifies_with_certificate(swtpm: Swtpm, open_key: type[TpmKey], ca: Issuer,
                                        name: str, kind: type) -> None:
    if name not in swtpm.keys:
        pytest.skip("tpm2-openssl provider not installed (apt-get install tpm2-openssl)")
    key = open_key(name)
    assert isinstance(key, HardwareKey)
    assert isinstance(key.public_key(), kind)
    cert = make_leaf(ca, f"tpm {name}", key.public_key())
    check(key, cert)
    for n in range(3):
        verify(cert.public_key(), key.sign(b"%d" % n), b"%d" % n)  # type: ignore[arg-type]
    assert "pin" not in key.describe().lower() and swtpm.tcti in key.describe()


def test_key_file_parents(swtpm: Swtpm) -> None:
    """What the three writers put in the file, which decides how the parent is found."""
    tools = decode_pem(Path(swtpm.keys["rsa-pem"]).read_bytes())
    assert (tools.parent, tools.empty_auth) == (0x81000001, False)
    ours = decode_pem(Path(swtpm.keys["ec-auth-pem"]).read_bytes())
    assert (ours.parent, ours.empty_auth) == (0x40000001, False)
    if "ec-openssl-pem" in swtpm.keys:
        ossl = decode_pem(Path(swtpm.keys["ec-openssl-pem"]).read_bytes())
        assert (ossl.parent, ossl.empty_auth) == (0x40000001, True)


def test_wrong_key_auth_is_clear_and_never_shown(swtpm: Swtpm, open_key: type[TpmKey],
                                                 secret_dir: Path,
                                                 capfd: pytest.CaptureFixture[str]) -> None:
    bad = write_secret(secret_dir / "auth", WRONG_AUTH)
    key = open_key("ec-auth-pem", key_auth_file=bad)
    with structlog.testing.capture_logs() as logs, pytest.raises(TpmAuthError) as err:
        key.sign(b"x")
    assert "authorization failed" in str(err.value)
    assert "fix tpm_key_auth_file" in str(err.value)
    with pytest.raises(TpmAuthError, match="not retried") as again:
        key.sign(b"x")
    out, errout = capfd.readouterr()
    for text in (everything_said(err.value), everything_said(again.value), repr(logs), out,
                 errout):
        assert WRONG_AUTH not in text


def test_auth_needed_but_missing(swtpm: Swtpm) -> None:
    key = TpmKey(swtpm.keys["ec-auth-pem"], tcti=swtpm.tcti)
    try:
        with pytest.raises(TpmAuthError, match=r"emptyAuth false.*set tpm_key_auth_file"):
            key.sign(b"x")
    finally:
        key.close()


def test_auth_file_mode_is_checked(swtpm: Swtpm, secret_dir: Path) -> None:
    loose = write_secret(secret_dir / "auth", "x")
    loose.chmod(0o640)
    with pytest.raises(FileError, match=r"has mode 0640.*chmod 600"):
        TpmKey(swtpm.keys["ec-auth-pem"], tcti=swtpm.tcti, key_auth_file=loose)


def test_missing_persistent_handle(swtpm: Swtpm) -> None:
    with pytest.raises(TpmKeyNotFoundError, match="no persistent object at 0x81000099"):
        TpmKey("handle:0x81000099", tcti=swtpm.tcti)


def test_storage_key_is_refused(swtpm: Swtpm) -> None:
    with pytest.raises(TpmError, match="not an unrestricted signing key"):
        TpmKey("handle:0x81000001", tcti=swtpm.tcti)


def test_unreachable_tpm(tmp_path: Path, swtpm: Swtpm) -> None:
    with pytest.raises(TpmError, match="cannot open the TPM via TCTI 'device:/nonexistent'"):
        TpmKey(swtpm.keys["rsa-pem"], tcti="device:/nonexistent")


def test_tpm_restart_reconnects_and_reloads(swtpm: Swtpm, open_key: type[TpmKey]) -> None:
    """swtpm restarted: the socket is dead and transient objects are gone; one retry fixes it."""
    file_key, handle_key = open_key("rsa-pem"), open_key("ecp-handle")
    for key in (file_key, handle_key):
        verify(key.public_key(), key.sign(b"before"), b"before")
    swtpm.stop()
    swtpm.start()
    with structlog.testing.capture_logs() as logs:
        for key in (file_key, handle_key):
            verify(key.public_key(), key.sign(b"after"), b"after")
    assert [e["event"] for e in logs] == ["tpm connection lost, reconnecting"]
