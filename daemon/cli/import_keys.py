"""The AWS console's key file downloads, and ``credential-sidecar import-keys``.

AWS shows a secret access key once, with a "Download .csv file" button. Three shapes exist:

- ``accessKeys.csv`` (IAM users today): ``Access key ID,Secret access key`` and one row;
- the older ``credentials.csv`` of the create-user wizard: ``User name,Password,Access key ID,
  Secret access key,Console login link`` (columns vary; one row per user created);
- ``rootkey.csv`` (root keys): the lines ``AWSAccessKeyId=...`` and ``AWSSecretKey=...``.

Files saved on Windows carry a byte-order mark and CRLF line endings; both are accepted. A file
that is not one of these is rejected with the line at fault, and no message ever quotes a cell:
a malformed line may hold the secret.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sys
import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from credential_sidecar.config.values import AccessKeyError, check_key_id, check_secret
from credential_sidecar.files import FileError, refuse_irregular
from credential_sidecar.upstream.secret_file import write_secret

MAX_BYTES = 64 * 1024  # a key file is a few hundred bytes
ROOT_ID, ROOT_SECRET = "AWSAccessKeyId", "AWSSecretKey"
DEFAULT_DIR = Path("/etc/credential-sidecar")
# The shipped unit's LoadCredential=private:/etc/credential-sidecar/private: each file F in that
# root-only store reaches the service as $CREDENTIALS_DIRECTORY/private_F.
PRIVATE_STORE = DEFAULT_DIR / "private"


class KeyFileError(ValueError):
    """Why a file is not a usable key file; names the file and the line, never its contents."""


@dataclass(frozen=True)
class KeyFile:
    kind: str  # "accessKeys.csv", "credentials.csv" or "rootkey.csv"
    key_id: str
    secret: str
    line: int  # where the key was found
    user: str | None = None

    @property
    def is_root(self) -> bool:
        return self.kind == "rootkey.csv"

    def __repr__(self) -> str:  # never the secret, even in a traceback
        return f"KeyFile(kind={self.kind!r}, key_id={self.key_id!r}, line={self.line})"


def _norm(header: str) -> str:
    return " ".join(header.strip().lower().split())


def _key_id(where: str, line: int, key_id: str) -> str:
    try:
        return check_key_id(key_id)
    except AccessKeyError as exc:
        raise KeyFileError(f"{where} line {line}: access key id: {exc}") from None


def _secret(where: str, line: int, secret: str) -> str:
    try:
        return check_secret(secret)
    except AccessKeyError as exc:
        raise KeyFileError(f"{where} line {line}: {exc}") from None


def _rootkey(text: str, where: str) -> KeyFile:
    found: dict[str, tuple[str, int]] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        name, sep, value = line.partition("=")
        name = name.strip()
        if not sep or name not in (ROOT_ID, ROOT_SECRET):
            raise KeyFileError(
                f"{where} line {number}: expected {ROOT_ID}=... or {ROOT_SECRET}=..."
                " (the lines of a rootkey.csv)"
            )
        if name in found:
            raise KeyFileError(f"{where} line {number}: a second {name}= line")
        found[name] = (value.strip(), number)
    for name in (ROOT_ID, ROOT_SECRET):
        if name not in found:
            raise KeyFileError(f"{where}: no {name}= line")
    (key_id, id_line), (secret, secret_line) = found[ROOT_ID], found[ROOT_SECRET]
    return KeyFile("rootkey.csv", _key_id(where, id_line, key_id),
                   _secret(where, secret_line, secret), id_line)


def _csv(text: str, where: str, user: str | None) -> KeyFile:
    rows = list(csv.reader(io.StringIO(text, newline=""), strict=True))
    numbered = [(n, row) for n, row in enumerate(rows, start=1) if any(c.strip() for c in row)]
    if not numbered:
        raise KeyFileError(f"{where}: empty file")
    header_line, header = numbered[0]
    columns = [_norm(h) for h in header]
    try:
        id_col = columns.index("access key id")
        secret_col = columns.index("secret access key")
    except ValueError:
        raise KeyFileError(
            f"{where} line {header_line}: not a key file header; expected the columns"
            " 'Access key ID,Secret access key' (or a rootkey.csv's AWSAccessKeyId= and"
            " AWSSecretKey= lines)"
        ) from None
    user_col = columns.index("user name") if "user name" in columns else None
    kind = "credentials.csv" if user_col is not None or len(columns) > 2 else "accessKeys.csv"
    data = numbered[1:]
    if not data:
        raise KeyFileError(f"{where} line {header_line}: a header but no key below it")
    for number, row in data:
        if len(row) != len(header):
            raise KeyFileError(
                f"{where} line {number}: {len(row)} fields where the header has {len(header)}"
            )
    if user is not None:
        if user_col is None:
            raise KeyFileError(f"{where}: --user given but the file has no 'User name' column")
        data = [(n, row) for n, row in data if row[user_col].strip() == user]
        if not data:
            raise KeyFileError(f"{where}: no row for user {user!r}")
    if len(data) > 1:
        if user_col is not None:
            lines = ", ".join(str(n) for n, _ in data)  # never the names: cells are not echoed
            raise KeyFileError(f"{where}: keys of several users (lines {lines}); pick one with"
                               " --user")
        lines = ", ".join(str(n) for n, _ in data)
        raise KeyFileError(f"{where}: several keys (lines {lines}); keep one row in the file")
    number, row = data[0]
    key_id = _key_id(where, number, row[id_col].strip())
    secret = _secret(where, number, row[secret_col].strip())
    owner = (row[user_col].strip() or None) if user_col is not None else None
    return KeyFile(kind, key_id, secret, number, owner)


def parse(data: bytes, where: str = "key file", *, user: str | None = None) -> KeyFile:
    """One key from the bytes of a console download."""
    if len(data) > MAX_BYTES:
        raise KeyFileError(f"{where}: {len(data)} bytes, too large to be a key file")
    try:
        text = data.decode("utf-8-sig")  # drops a byte-order mark
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise KeyFileError(f"{where} line {line}: not UTF-8 text") from None
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if first.startswith((ROOT_ID + "=", ROOT_SECRET + "=")):
        return _rootkey(text, where)
    try:
        return _csv(text, where, user)
    except csv.Error as exc:
        raise KeyFileError(f"{where}: not a well-formed CSV file ({exc})") from None


def read(path: Path, *, user: str | None = None) -> KeyFile:
    """Opened without blocking (O_NONBLOCK) and checked before reading: a named pipe, a device
    or a directory is refused at once instead of hanging the command."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read it: {exc.strerror}") from None
    try:
        try:
            refuse_irregular(path, "key file", os.fstat(fd))
        except FileError as exc:
            raise KeyFileError(str(exc)) from None
        try:
            data = os.read(fd, MAX_BYTES + 1)
        except OSError as exc:
            raise KeyFileError(f"{path}: cannot read it: {exc.strerror}") from None
    finally:
        os.close(fd)
    return parse(data, str(path), user=user)


# C0 controls (ESC, BEL, CR...), DEL and C1 controls (CSI...): a file name, a --name or anything
# else echoed could otherwise move the cursor, retitle the terminal or hide what was printed.
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """``text`` with every terminal control character shown as an escape (``\\x1b``)."""
    return _CONTROLS.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _say(message: str) -> None:
    print(printable(message), file=sys.stderr)


def config_path_for(secret_file: Path) -> str:
    """How the config names the secret: a file in the unit's private store is a credential."""
    if secret_file.parent == PRIVATE_STORE:
        return f"$CREDENTIALS_DIRECTORY/private_{secret_file.name}"
    return str(secret_file)


def config_block(name: str, key: KeyFile, secret_file: Path, region: str,
                 created_guess: str | None) -> str:
    lines = [
        "[[connections]]",
        f"name = {json.dumps(name)}",
        'type = "access-keys"',
        f"access_key_id = {json.dumps(key.key_id)}",
        f"secret_access_key_file = {json.dumps(config_path_for(secret_file))}",
        f"region = {json.dumps(region)}",
    ]
    if created_guess:
        lines.append(f"# created = {created_guess}   # the key's creation date (guessed from the"
                     " file's date), if the daemon may not call iam:ListAccessKeys")
    return "\n".join(lines) + "\n"


def import_keys(file: str, name: str, *, secret_file: str | None = None, user: str | None = None,
                region: str = "us-east-1", force: bool = False) -> int:
    """``import-keys``: exit 0 with the config block on stdout, 2 for a bad file or target."""
    from credential_sidecar.config.errors import ConfigError
    from credential_sidecar.config.load import parse_config

    source = Path(file)
    try:
        key = read(source, user=user)
    except KeyFileError as exc:
        _say(f"import-keys: {exc}")
        return 2
    target = Path(secret_file) if secret_file else DEFAULT_DIR / f"{name}.secret"
    target = target.absolute()
    try:
        guess = datetime.fromtimestamp(source.stat().st_mtime, tz=UTC).date().isoformat()
    except OSError:
        guess = None
    block = config_block(name, key, target, region, guess)
    try:
        parse_config(tomllib.loads(block), source="the config block")
    except ConfigError as exc:
        _say(f"import-keys: {exc}")
        return 2
    except tomllib.TOMLDecodeError as exc:
        _say(f"import-keys: --name or --secret-file cannot be written in TOML: {exc}")
        return 2
    try:
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_secret(target, key.secret, replace=force)
    except FileExistsError:
        _say(f"import-keys: {target} already exists; it is left as it is. Choose another path"
             " with --secret-file, or replace it with --force")
        return 2
    except OSError as exc:
        _say(f"import-keys: cannot write {target}: {exc.strerror}")
        return 2
    print(block, end="")
    owner = f" of user {user}" if user else ""  # what --user said, never the file's cell
    _say(f"import-keys: {key.kind} line {key.line}: key {key.key_id}{owner}; secret stored in"
         f" {target} (mode 0600)")
    if key.is_root:
        _say("import-keys: warning: this is the AWS account root user's key. AWS advises an"
             " IAM user's key with only the permissions needed instead.")
    _say(f"import-keys: {source} still holds the secret in the clear: delete it once the"
         f" connection works (credential-sidecar test-connection {name} --config PATH)")
    return 0


__all__ = ["KeyFile", "KeyFileError", "config_block", "import_keys", "parse", "printable", "read"]
