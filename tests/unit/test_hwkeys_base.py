"""PIN/auth files and the key-matches-certificate check."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from credential_sidecar.files import FileError
from credential_sidecar.upstream.hardware.base import (
    HardwareKey,
    KeyMismatchError,
    PublicKey,
    check,
    read_secret_file,
)
from tests.helpers.hwkeys import make_leaf, make_root


@pytest.fixture
def secret_dir(tmp_path: Path) -> Path:
    tmp_path.chmod(0o700)
    return tmp_path


class FileKey:
    """A software key behind the HardwareKey protocol (what the daemon's file keys become)."""

    def __init__(self, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> None:
        self.key = key

    def public_key(self) -> PublicKey:
        return self.key.public_key()

    def sign(self, data: bytes) -> bytes:
        if isinstance(self.key, rsa.RSAPrivateKey):
            return self.key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        return self.key.sign(data, ec.ECDSA(hashes.SHA256()))

    def describe(self) -> str:
        return "file key"

    def close(self) -> None:
        pass


def test_check_accepts_match_and_names_mismatch() -> None:
    ca = make_root("CA")
    key = FileKey(ec.generate_private_key(ec.SECP256R1()))
    assert isinstance(key, HardwareKey)
    check(key, make_leaf(ca, "mine", key.public_key()))
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(KeyMismatchError, match="file key does not match certificate CN=other"):
        check(key, make_leaf(ca, "other", other.public_key()))


@pytest.mark.parametrize(("content", "strip", "expected"), [
    (b"1234\n", True, b"1234"), (b"1234\r\n", True, b"1234"), (b"12 34", True, b"12 34"),
    (b"1234\n\n", True, b"1234\n"), (b"auth\n", False, b"auth\n"),
])
def test_secret_file_content(secret_dir: Path, content: bytes, strip: bool,
                             expected: bytes) -> None:
    path = secret_dir / "pin"
    path.write_bytes(content)
    path.chmod(0o400)
    secret = read_secret_file(path, "PIN", strip_newline=strip)
    assert secret.reveal() == expected
    assert expected.decode().strip() not in repr(secret) + str(secret)


@pytest.mark.parametrize(("mode", "exposure"), [(0o640, "readable"), (0o604, "readable"),
                                              (0o620, "writable"), (0o660, "readable")])
def test_secret_file_mode_refused(secret_dir: Path, mode: int, exposure: str) -> None:
    path = secret_dir / "pin"
    path.write_text("CANARY-mode-pin")
    path.chmod(mode)
    with pytest.raises(FileError) as err:
        read_secret_file(path, "PIN file")
    assert str(err.value) == (f"PIN file {path} has mode {mode:04o}: it must not be {exposure} "
                              f"by group or others; run: chmod 600 {path}")
    assert "CANARY" not in str(err.value)


def test_secret_file_missing_or_symlink(secret_dir: Path) -> None:
    with pytest.raises(FileError, match="does not exist"):
        read_secret_file(secret_dir / "absent", "PIN")
    target = secret_dir / "real"
    target.write_text("x")
    target.chmod(0o600)
    os.symlink(target, secret_dir / "link")  # as Kubernetes mounts secrets
    assert read_secret_file(secret_dir / "link", "PIN").reveal() == b"x"
    target.chmod(0o644)
    with pytest.raises(FileError, match="has mode 0644"):
        read_secret_file(secret_dir / "link", "PIN")
