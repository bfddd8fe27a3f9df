"""The console's key file downloads, every shape and the ways they go wrong, and import-keys."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from credential_sidecar.cli import import_keys, main
from credential_sidecar.cli.import_keys import KeyFileError
from credential_sidecar.config.load import parse_config
from credential_sidecar.config.model import AccessKeysConnection

KEY_ID = "AKIAIOSFODNN7EXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
BOM = "\ufeff"

ACCESS_KEYS = f"Access key ID,Secret access key\n{KEY_ID},{SECRET}\n"
CREDENTIALS = (
    "User name,Password,Access key ID,Secret access key,Console login link\n"
    f"sdk_demo,,{KEY_ID},{SECRET},https://111122223333.signin.aws.amazon.com/console\n"
)
ROOTKEY = f"AWSAccessKeyId={KEY_ID}\nAWSSecretKey={SECRET}\n"


@pytest.mark.parametrize(("text", "kind", "user"), [
    (ACCESS_KEYS, "accessKeys.csv", None),
    (CREDENTIALS, "credentials.csv", "sdk_demo"),
    (ROOTKEY, "rootkey.csv", None),
    # Older wizard files, other capitalisation, no trailing newline.
    (f"User Name,Access Key Id,Secret Access Key\nsdk_demo,{KEY_ID},{SECRET}",
     "credentials.csv", "sdk_demo"),
])
@pytest.mark.parametrize("windows", [False, True])
@pytest.mark.parametrize("bom", [False, True])
def test_every_console_download_shape(text: str, kind: str, user: str | None, windows: bool,
                                      bom: bool) -> None:
    if windows:
        text = text.replace("\n", "\r\n")
    if bom:
        text = BOM + text
    key = import_keys.parse(text.encode())
    assert (key.kind, key.key_id, key.secret, key.user) == (kind, KEY_ID, SECRET, user)
    assert key.is_root is (kind == "rootkey.csv")
    assert SECRET not in repr(key)


def test_quoted_csv_cells_and_blank_lines_are_fine() -> None:
    text = f'"Access key ID","Secret access key"\r\n\r\n"{KEY_ID}","{SECRET}"\r\n\r\n'
    assert import_keys.parse(text.encode()).secret == SECRET


def test_the_right_users_row_is_picked() -> None:
    other = "AKIAI44QH8DHBEXAMPLE"
    text = CREDENTIALS + f"other,,{other},{'B' * 40},https://x\n"
    several = r"several users \(lines 2, 3\); pick one with --user"
    with pytest.raises(KeyFileError, match=several):
        import_keys.parse(text.encode())
    key = import_keys.parse(text.encode(), user="other")
    assert (key.key_id, key.line, key.user) == (other, 3, "other")
    with pytest.raises(KeyFileError, match="no row for user 'nobody'"):
        import_keys.parse(text.encode(), user="nobody")


@pytest.mark.parametrize(("text", "message"), [
    ("", "empty file"),
    ("\n\n", "empty file"),
    ("Access key ID,Secret access key\n", "line 1: a header but no key below it"),
    (f"{KEY_ID},{SECRET}\n", "line 1: not a key file header"),
    ("Access key ID,Secret\nx,y\n", "line 1: not a key file header"),
    (f"Access key ID,Secret access key\n{KEY_ID},{SECRET[:-1]}\n",
     "line 2: a secret access key is 40 characters (got 39)"),
    (f"Access key ID,Secret access key\r\n{KEY_ID[:-1]},{SECRET}\r\n",
     "line 2: access key id: must be 20 characters (got 19)"),
    (f"Access key ID,Secret access key\n{SECRET},{KEY_ID}\n",  # columns swapped
     "line 2: access key id: must be 20 characters (got 40)"),
    (f"Access key ID,Secret access key\nASIAIOSFODNN7EXAMPLE,{SECRET}\n",
     "line 2: access key id: an ASIA... key id is temporary"),
    (f"Access key ID,Secret access key\n\n{KEY_ID},{SECRET},extra\n",
     "line 3: 3 fields where the header has 2"),
    (f"Access key ID,Secret access key\n{KEY_ID},{SECRET}\n{KEY_ID},{SECRET}\n",
     "several keys (lines 2, 3)"),
    (f"Access key ID,Secret access key\n{KEY_ID},\"{SECRET}\n",
     "not a well-formed CSV file"),
    (f"AWSAccessKeyId={KEY_ID}\n", "no AWSSecretKey= line"),
    (f"AWSAccessKeyId={KEY_ID}\nAWSSecretKey={SECRET}\nAWSSecretKey={SECRET}\n",
     "line 3: a second AWSSecretKey= line"),
    (f"AWSAccessKeyId={KEY_ID}\nsecret: {SECRET}\n",
     "line 2: expected AWSAccessKeyId=... or AWSSecretKey=..."),
    (f"AWSAccessKeyId={KEY_ID}\nAWSSecretKey={SECRET} x\n",
     "line 2: a secret access key is 40 characters (got 42)"),
])
def test_malformed_files_name_the_line_and_never_the_secret(text: str, message: str) -> None:
    with pytest.raises(KeyFileError) as caught:
        import_keys.parse(text.encode(), "accessKeys.csv")
    assert message in str(caught.value)
    assert str(caught.value).startswith("accessKeys.csv")
    assert SECRET not in str(caught.value) and SECRET[:-1] not in str(caught.value)


def test_binary_and_huge_files_are_rejected() -> None:
    with pytest.raises(KeyFileError, match="line 2: not UTF-8 text"):
        import_keys.parse(b"Access key ID,Secret access key\n\xff\xfe\n")
    with pytest.raises(KeyFileError, match="too large to be a key file"):
        import_keys.parse(b"x" * (import_keys.MAX_BYTES + 1))


# --- the command ---------------------------------------------------------------------------------


def _download(tmp: Path, text: str, name: str = "accessKeys.csv") -> Path:
    path = tmp / name
    path.write_bytes(text.encode())
    return path


def test_import_keys_stores_0600_and_prints_a_valid_block(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _download(tmp_path, BOM + CREDENTIALS.replace("\n", "\r\n"), "credentials.csv")
    target = tmp_path / "secrets" / "backups.secret"
    code = main(["import-keys", str(source), "--name", "backups", "--secret-file", str(target),
                 "--user", "sdk_demo"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert target.read_text() == SECRET + "\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    conn = parse_config(tomllib.loads(out)).connections[0]
    assert isinstance(conn, AccessKeysConnection)
    assert (conn.name, conn.access_key_id, conn.secret_access_key_file) == (
        "backups", KEY_ID, target)
    assert "# created = " in out
    assert "key AKIAIOSFODNN7EXAMPLE of user sdk_demo" in err
    assert f"{source} still holds the secret in the clear" in err
    assert SECRET not in out + err


def test_import_keys_never_overwrites_silently(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "app.secret"
    target.write_text("B" * 40 + "\n")
    source = _download(tmp_path, ACCESS_KEYS)
    assert main(["import-keys", str(source), "--name", "app", "--secret-file",
                 str(target)]) == 2
    assert "already exists; it is left as it is" in capsys.readouterr().err
    assert target.read_text() == "B" * 40 + "\n"
    assert main(["import-keys", str(source), "--name", "app", "--secret-file", str(target),
                 "--force"]) == 0
    assert target.read_text() == SECRET + "\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_import_keys_warns_about_root_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _download(tmp_path, ROOTKEY, "rootkey.csv")
    assert main(["import-keys", str(source), "--name", "root", "--secret-file",
                 str(tmp_path / "root.secret")]) == 0
    assert "the AWS account root user's key" in capsys.readouterr().err


@pytest.mark.parametrize(("args", "message"), [
    (["--name", "bad name"], "connections[0].name: must be 1 to 64 letters"),
    (["--name", "ok", "--region", "mars"], "connections[0].region: must be a region name"),
])
def test_import_keys_refuses_a_block_that_would_not_validate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    source = _download(tmp_path, ACCESS_KEYS)
    target = tmp_path / "x.secret"
    assert main(["import-keys", str(source), "--secret-file", str(target), *args]) == 2
    assert message in capsys.readouterr().err
    assert not target.exists(), "nothing written for a block that would not work"


def test_import_keys_as_a_process_exits_2_for_a_bad_file(tmp_path: Path) -> None:
    source = _download(tmp_path, f"Access key ID,Secret access key\n{KEY_ID},{SECRET[:30]}\n")
    done = subprocess.run([sys.executable, "-m", "credential_sidecar", "import-keys", str(source),
                           "--name", "app", "--secret-file", str(tmp_path / "s")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stdout == ""
    assert f"{source} line 2: a secret access key is 40 characters (got 30)" in done.stderr
    assert SECRET[:30] not in done.stderr
    assert not (tmp_path / "s").exists()
    missing = subprocess.run([sys.executable, "-m", "credential_sidecar", "import-keys",
                              str(tmp_path / "nope.csv"), "--name", "app"],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "cannot read it" in missing.stderr


def test_a_secret_in_the_units_private_store_is_named_as_a_systemd_credential() -> None:
    key = import_keys.parse(ACCESS_KEYS.encode())
    block = import_keys.config_block("backups", key, import_keys.PRIVATE_STORE / "backups.secret",
                                  "us-east-1", None)
    assert 'secret_access_key_file = "$CREDENTIALS_DIRECTORY/private_backups.secret"' in block
    elsewhere = import_keys.config_block("backups", key, Path("/srv/backups.secret"), "us-east-1",
                                      None)
    assert 'secret_access_key_file = "/srv/backups.secret"' in elsewhere


def test_no_cell_is_echoed_and_controls_are_shown_as_escapes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = "\x1b]0;owned\x07cell-marker"
    text = CREDENTIALS + f"{marker},,AKIAI44QH8DHBEXAMPLE,{'B' * 40},https://x\n"
    source = _download(tmp_path, text, "credentials.csv")
    code = main(["import-keys", str(source), "--name", "backups", "--secret-file",
                 str(tmp_path / "s.secret")])
    _, err = capsys.readouterr()
    assert code == 2 and "several users (lines 2, 3)" in err
    assert "cell-marker" not in err and "sdk_demo" not in err
    # A file name with terminal controls in it is echoed with them escaped.
    odd = tmp_path / "keys\x1b[2J\x9b31m.csv"
    odd.write_text("not a key file\n")
    assert main(["import-keys", str(odd), "--name", "backups"]) == 2
    _, err = capsys.readouterr()
    assert "\x1b" not in err and "\x9b" not in err and "keys\\x1b[2J\\x9b31m.csv" in err


@pytest.mark.parametrize("kind", ["fifo", "directory", "device"])
def test_a_file_that_is_not_a_regular_file_is_refused_without_hanging(
    tmp_path: Path, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "keys.csv"
    if kind == "fifo":
        os.mkfifo(path)  # nobody ever writes: a plain read would wait forever
    elif kind == "directory":
        path.mkdir()
    else:
        path = Path("/dev/zero")
    assert main(["import-keys", str(path), "--name", "backups"]) == 2
    _, err = capsys.readouterr()
    what = {"fifo": "a named pipe", "directory": "a directory", "device": "a device"}[kind]
    assert f"{path} is {what}, not a regular file" in err
