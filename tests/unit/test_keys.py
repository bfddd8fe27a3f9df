"""Long-term keys: shape checks that never echo a secret, secret files and where they live."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from credential_sidecar.config.values import AccessKeyError, check_key_id, check_secret
from credential_sidecar.files import FileError
from credential_sidecar.upstream.secret_file import SecretFile, write_secret

KEY_ID = "AKIAIOSFODNN7EXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


def test_a_good_key_and_secret_pass() -> None:
    assert check_key_id(KEY_ID) == KEY_ID
    assert check_secret(SECRET) == SECRET


@pytest.mark.parametrize(("value", "message"), [
    ("ASIAIOSFODNN7EXAMPLE", "temporary"),
    ("AKIAIOSFODNN7EXAMPL", "must be 20 characters (got 19)"),
    ("akiaiosfodnn7example", "only uppercase letters and digits"),
    ("ABIAIOSFODNN7EXAMPLE", "must start with AKIA"),
    (SECRET, "must be 20 characters (got 40)"),  # the secret pasted in the id's place
])
def test_bad_key_ids_are_named_not_echoed(value: str, message: str) -> None:
    with pytest.raises(AccessKeyError) as caught:
        check_key_id(value)
    assert message in str(caught.value)
    assert value not in str(caught.value)


@pytest.mark.parametrize(("value", "message"), [
    (SECRET[:-1], "40 characters (got 39)"),
    (SECRET + "A", "40 characters (got 41)"),
    (SECRET[:-1] + " ", "only letters, digits, '+' and '/'"),
    ('"' + SECRET[1:], "only letters, digits, '+' and '/'"),
    (KEY_ID, "looks like a key id"),
])
def test_bad_secrets_are_described_by_length_only(value: str, message: str) -> None:
    with pytest.raises(AccessKeyError) as caught:
        check_secret(value)
    assert message in str(caught.value)
    assert value not in str(caught.value)
    assert value[:12] not in str(caught.value)


def test_secret_file_from_config_or_systemd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert SecretFile.for_connection("x", tmp_path / "given").path == tmp_path / "given"
    from_systemd = SecretFile.for_connection("backups", None)
    assert from_systemd == SecretFile(tmp_path / "backups", from_systemd=True)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    with pytest.raises(FileError, match="LoadCredential=backups:"):
        SecretFile.for_connection("backups", None)


@pytest.mark.parametrize("ending", ["", "\n", "\r\n"])
def test_secret_file_read_strips_one_line_ending(tmp_path: Path, ending: str) -> None:
    path = tmp_path / "s"
    path.write_text(SECRET + ending)
    path.chmod(0o600)
    secret, st = SecretFile(path).read()
    assert secret == SECRET
    assert st.st_ino == path.stat().st_ino


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
def test_exposed_secret_files_are_refused_with_the_fix(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "s"
    path.write_text(SECRET)
    path.chmod(mode)
    with pytest.raises(FileError) as caught:
        SecretFile(path).read()
    text = str(caught.value)
    assert f"{path} has mode {mode:04o}" in text and f"chmod 600 {path}" in text
    assert SECRET not in text


@pytest.mark.parametrize(("content", "message"), [
    (SECRET + "\n\n", "40 characters (got 41)"),
    ("  " + SECRET, "40 characters (got 42)"),
    (SECRET[:20], "40 characters (got 20)"),
])
def test_malformed_secret_files_name_the_file_not_the_secret(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "s"
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(FileError) as caught:
        SecretFile(path).read()
    assert str(path) in str(caught.value) and message in str(caught.value)
    assert SECRET[:20] not in str(caught.value)


def test_missing_and_binary_secret_files(tmp_path: Path) -> None:
    with pytest.raises(FileError, match="does not exist"):
        SecretFile(tmp_path / "nope").read()
    path = tmp_path / "bin"
    path.write_bytes(b"\xff" * 40)
    path.chmod(0o600)
    with pytest.raises(FileError, match="not plain ASCII"):
        SecretFile(path).read()


def test_write_secret_creates_0600_and_never_overwrites_silently(tmp_path: Path) -> None:
    path = tmp_path / "new.secret"
    write_secret(path, SECRET)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == SECRET + "\n"
    other = "A" * 40
    with pytest.raises(FileExistsError):
        write_secret(path, other)
    assert path.read_text() == SECRET + "\n"
    write_secret(path, other, replace=True)
    assert path.read_text() == other + "\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(os.listdir(tmp_path)) == ["new.secret"], "no temporary file left behind"


def test_write_secret_refuses_a_malformed_secret(tmp_path: Path) -> None:
    with pytest.raises(AccessKeyError):
        write_secret(tmp_path / "s", "short")
    assert not (tmp_path / "s").exists()
