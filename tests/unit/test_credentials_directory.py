"""Secrets passed by systemd (LoadCredential=): config paths under $CREDENTIALS_DIRECTORY, and
credential files as systemd writes them (root's, 0400, plus an ACL entry for the service's user,
which makes them read as 0440)."""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

import pytest

from credential_sidecar.config.errors import ConfigError
from credential_sidecar.config.load import parse_config
from credential_sidecar.config.model import RolesAnywhereConnection
from credential_sidecar.devtools import pki
from credential_sidecar.files import FileError, check_private_file
from credential_sidecar.upstream.certificate import load_identity

ARNS = {
    "trust_anchor_arn": "arn:aws:rolesanywhere:us-east-1:111122223333:trust-anchor/a",
    "profile_arn": "arn:aws:rolesanywhere:us-east-1:111122223333:profile/p",
    "role_arn": "arn:aws:iam::111122223333:role/r",
}


def _config(**conn: Any) -> dict[str, Any]:
    base = {"name": "reports", "type": "roles-anywhere", "certificate": "reports.crt",
            "session_name": "host-1", **ARNS}
    base.update(conn)
    return {"connections": [base]}


def _connection(data: dict[str, Any], base: Path) -> RolesAnywhereConnection:
    conn = parse_config(data, base_dir=base).connections[0]
    assert isinstance(conn, RolesAnywhereConnection)
    return conn


@pytest.mark.parametrize("prefix", ["$CREDENTIALS_DIRECTORY", "${CREDENTIALS_DIRECTORY}"])
def test_credentials_directory_paths_are_expanded(
    prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", "/run/credentials/credential-sidecar.service")
    conn = _connection(_config(private_key=f"{prefix}/private_reports.key",
                               private_key_passphrase_file=f"{prefix}/pass"), tmp_path)
    assert conn.private_key == Path(
        "/run/credentials/credential-sidecar.service/private_reports.key")
    assert conn.private_key_passphrase_file == Path(
        "/run/credentials/credential-sidecar.service/pass")
    assert conn.certificate == tmp_path / "reports.crt", "other relative paths: as before"


def test_without_systemd_the_path_stays_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    conn = _connection(_config(private_key="$CREDENTIALS_DIRECTORY/k"), tmp_path)
    assert str(conn.private_key) == "$CREDENTIALS_DIRECTORY/k"  # not resolved against tmp_path


def test_the_directory_itself_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(_config(private_key="$CREDENTIALS_DIRECTORY/"), base_dir=tmp_path)
    assert err.value.problems == [
        "connections[0].private_key: names the credentials directory itself; name a file in it"
    ]


def test_a_missing_credentials_directory_is_explained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    ca = pki.make_ca("root", "p256")
    leaf = pki.make_leaf(ca, "leaf", "p256")
    (tmp_path / "reports.crt").write_bytes(leaf.cert_pem())
    conn = _connection(_config(private_key="$CREDENTIALS_DIRECTORY/private_reports.key"),
                       tmp_path)
    with pytest.raises(FileError, match=r"\$CREDENTIALS_DIRECTORY is not set.*LoadCredential="):
        load_identity(certificate=conn.certificate, private_key=conn.private_key)


# --- files as systemd writes them ----------------------------------------------------------------

ACL_USER_OBJ, ACL_USER, ACL_GROUP_OBJ, ACL_GROUP, ACL_MASK, ACL_OTHER = 1, 2, 4, 8, 0x10, 0x20
UNDEFINED = 0xFFFFFFFF


def _set_acl(path: Path, entries: list[tuple[int, int, int]]) -> None:
    blob = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)
    try:
        os.setxattr(path, "system.posix_acl_access", blob)
    except OSError as exc:
        pytest.skip(f"this file system has no POSIX ACLs: {exc}")


@pytest.fixture
def acl_dir(tmp_path: Path) -> Path:
    """A tmpfs when there is one: systemd's credentials live on one, and it supports ACLs."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        directory = shm / f"credential-sidecar-test-{os.getpid()}-{tmp_path.name}"
        directory.mkdir()
        yield directory
        for child in directory.iterdir():
            child.unlink()
        directory.rmdir()
    else:
        yield tmp_path


def _credential_file(directory: Path, reader: int) -> Path:
    """What systemd's write_credential() leaves: 0400, plus read for the service's user."""
    path = directory / "private_reports.key"
    path.write_bytes(pki.make_ca("x", "p256").key_pem())
    path.chmod(0o400)
    _set_acl(path, [(ACL_USER_OBJ, 4, UNDEFINED), (ACL_USER, 4, reader),
                    (ACL_GROUP_OBJ, 0, UNDEFINED), (ACL_MASK, 4, UNDEFINED),
                    (ACL_OTHER, 0, UNDEFINED)])
    return path


def test_a_systemd_credential_file_is_accepted(acl_dir: Path) -> None:
    path = _credential_file(acl_dir, reader=os.geteuid())
    assert path.stat().st_mode & 0o777 == 0o440, "the ACL mask shows in the group bits"
    check_private_file(path, "private key")  # no exception: nobody but us can read it


def test_an_acl_letting_someone_else_read_is_refused(acl_dir: Path) -> None:
    other = os.geteuid() + 4242
    path = _credential_file(acl_dir, reader=other)
    with pytest.raises(FileError, match=f"ACL letting user {other} read or write it"):
        check_private_file(path, "private key")


def test_an_acl_opening_the_group_is_refused(acl_dir: Path) -> None:
    path = acl_dir / "k"
    path.write_bytes(b"x")
    path.chmod(0o400)
    _set_acl(path, [(ACL_USER_OBJ, 6, UNDEFINED), (ACL_GROUP_OBJ, 4, UNDEFINED),
                    (ACL_GROUP, 4, 4242), (ACL_MASK, 4, UNDEFINED), (ACL_OTHER, 0, UNDEFINED)])
    with pytest.raises(FileError, match="the file's group, group 4242"):
        check_private_file(path, "private key")


def test_plain_group_readable_files_are_still_refused(tmp_path: Path) -> None:
    path = tmp_path / "k"
    path.write_bytes(b"x")
    path.chmod(0o440)
    with pytest.raises(FileError, match="mode 0440"):
        check_private_file(path, "private key")
