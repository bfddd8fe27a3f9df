"""The shipped systemd files, checked by systemd's own tools (Debian package `systemd`).

- `systemd-analyze security --offline=true` on the shipped service, verbatim: exposure <= 1.3.
- `systemd-analyze verify` on the service and socket units must print nothing. verify also
  checks that ExecStart='s program exists and is executable; the unit names the packaged path
  /usr/bin/credential-sidecar, which a CI machine does not have (pip installs the console script
  into the venv). So verify reads a copy whose ExecStart= program is the installed console
  script, the one difference, asserted line by line; everything else is the shipped text.
- sysusers and tmpfiles files applied to a scratch root (`--root=`) create what the unit needs.
"""

from __future__ import annotations

import configparser
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from credential_sidecar import cli
from credential_sidecar.config.model import DaemonSettings

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "systemd"
SERVICE = UNITS / "credential-sidecar.service"
SOCKET = UNITS / "credential-sidecar.socket"
PACKAGED_PROGRAM = "/usr/bin/credential-sidecar"
# systemd calls up to 2.0 "OK". The unit scored 1.1; two relaxations cost 0.2 and buy correctness:
# - no PrivateUsers= (+0.2 weight): in a private user namespace other users' uids all read as
#   nobody, so allowed_uids checks (SO_PEERCRED, sock_diag) and token-file ACLs would be wrong;
# - AF_NETLINK (+0.1 weight): sock_diag tells which local uid owns a TCP client's socket, the
#   basis of allowed_uids on the IMDS and container doors.
# Held at 1.3 so any further loosening fails here and must be argued for.
MAX_EXPOSURE = 1.3


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: install the Debian package systemd (.ci/run does)")
    return path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)


def unit_settings(path: Path) -> dict[str, dict[str, list[str]]]:
    """Section -> key -> every value (systemd keys repeat; configparser alone would not)."""
    out: dict[str, dict[str, list[str]]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            out.setdefault(section, {})
            continue
        key, _, value = line.partition("=")
        out[section].setdefault(key, []).append(value)
    return out


def exposure(path: Path, threshold: float = MAX_EXPOSURE) -> tuple[float, str, int]:
    result = run(tool("systemd-analyze"), "security", "--offline=true", "--no-pager",
                 f"--threshold={round(threshold * 10)}", str(path))
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", result.stdout)
    assert match, result.stdout[-2000:] + result.stderr
    return float(match.group(1)), match.group(2), result.returncode


def test_security_exposure_is_ok() -> None:
    score, verdict, code = exposure(SERVICE)
    assert score <= MAX_EXPOSURE and verdict == "OK", (score, verdict)
    assert code == 0, "systemd-analyze itself holds the unit to the threshold"


def test_the_security_check_can_fail(tmp_path: Path) -> None:
    """The same check on the unit without its sandbox: it must fail, or it proves nothing."""
    lines = SERVICE.read_text().split("# Sandbox:")[0] + "\n[Install]\nWantedBy=multi-user.target\n"
    bare = tmp_path / SERVICE.name
    bare.write_text(lines)
    score, _, code = exposure(bare)
    assert score > MAX_EXPOSURE and code != 0, score


def verifiable_copy(tmp_path: Path) -> Path:
    program = Path(sys.executable).parent / "credential-sidecar"
    assert program.is_file(), f"the console script is not installed at {program}"
    shipped = SERVICE.read_text()
    copy = shipped.replace(f"ExecStart={PACKAGED_PROGRAM} ", f"ExecStart={program} ")
    changed = [(a, b) for a, b in zip(shipped.splitlines(), copy.splitlines(), strict=True)
               if a != b]
    assert len(changed) == 1 and changed[0][0].startswith("ExecStart="), changed
    directory = tmp_path / "units"
    directory.mkdir()
    (directory / SERVICE.name).write_text(copy)
    shutil.copy(SOCKET, directory / SOCKET.name)
    return directory


def test_units_verify_cleanly(tmp_path: Path) -> None:
    directory = verifiable_copy(tmp_path)
    result = run(tool("systemd-analyze"), "verify", "--recursive-errors=yes",
                 str(directory / SERVICE.name), str(directory / SOCKET.name))
    assert result.returncode == 0 and result.stdout == "" and result.stderr == "", (
        result.stdout + result.stderr)


def test_verify_would_catch_a_mistake(tmp_path: Path) -> None:
    directory = verifiable_copy(tmp_path)
    service = directory / SERVICE.name
    service.write_text(service.read_text().replace("ProtectHome=yes", "ProtectHom=yes"))
    result = run(tool("systemd-analyze"), "verify", "--recursive-errors=yes", str(service))
    assert result.returncode != 0 and "ProtectHom" in result.stderr, result.stderr


def test_exec_start_is_the_contract_command_line() -> None:
    service = unit_settings(SERVICE)["Service"]
    (exec_start,) = service["ExecStart"]
    argv = shlex.split(exec_start.replace("%E", "/etc"))
    assert argv[0] == PACKAGED_PROGRAM
    args = cli.build_parser().parse_args(argv[1:])
    assert args.command == "run" and args.config == cli.DEFAULT_CONFIG
    assert service["Type"] == ["notify"] and service["NotifyAccess"] == ["main"]
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert service["RestartPreventExitStatus"] == ["2"], "bad config: do not restart-loop"


def test_ready_comes_before_systemd_gives_up() -> None:
    service = unit_settings(SERVICE)["Service"]
    (timeout,) = service["TimeoutStartSec"]
    assert timeout.endswith("s")
    assert DaemonSettings().ready_timeout_seconds + 15 <= int(timeout[:-1])
    (watchdog,) = service["WatchdogSec"]
    assert int(watchdog.rstrip("s")) >= 10, "keep-alives every half of it, from the loop"


def test_socket_unit_listens_where_the_example_config_does() -> None:
    sockets = unit_settings(SOCKET)["Socket"]
    example = tomllib.loads((ROOT / "config" / "example.toml").read_text())
    listens = {entry["listen"] for entry in example["imds"]}
    listens |= {example["container"]["listen"], example["health"]["listen"]}
    listens.add(example["control"]["socket"])  # matched by its path, as the others by address
    assert set(sockets["ListenStream"]) == listens
    assert sockets["Service"] == ["credential-sidecar.service"]
    # as the daemon makes it when it binds: 0660, the service's group; RuntimeDirectoryMode's mode
    service = unit_settings(SERVICE)["Service"]
    assert sockets["SocketMode"] == ["0660"] and sockets["SocketGroup"] == service["Group"]
    assert sockets["DirectoryMode"] == service["RuntimeDirectoryMode"]
    assert Path(example["control"]["socket"]).parent.name == service["RuntimeDirectory"][0]


def test_sysusers_make_the_service_user(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    result = run(tool("systemd-sysusers"), f"--root={root}",
                 str(UNITS / "credential-sidecar.sysusers"))
    assert result.returncode == 0, result.stderr
    service = unit_settings(SERVICE)["Service"]
    user = service["User"][0]
    passwd = {line.split(":")[0]: line.split(":") for line in
              (root / "etc" / "passwd").read_text().splitlines()}
    assert user in passwd and passwd[user][6] == "/usr/sbin/nologin"
    assert int(passwd[user][2]) < 1000, "a system user"
    assert service["Group"] == [user]


@pytest.mark.skipif(os.geteuid() != 0, reason="creating a root-owned directory needs root")
def test_tmpfiles_make_the_credential_store(tmp_path: Path) -> None:
    root = tmp_path / "root"
    service = unit_settings(SERVICE)["Service"]
    result = run(tool("systemd-tmpfiles"), f"--root={root}", "--create",
                 str(UNITS / "credential-sidecar.tmpfiles"))
    assert result.returncode == 0, result.stderr
    (load,) = service["LoadCredential"]
    _, _, store = load.partition(":")
    made = root / store.lstrip("/")
    assert made.is_dir() and made.stat().st_mode & 0o777 == 0o700
    assert made.stat().st_uid == 0


def test_unit_files_parse_as_ini() -> None:
    """A stray line (a shell comment pasted without #) would be misread by systemd."""
    for path in (SERVICE, SOCKET):
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        parser.optionxform = str  # type: ignore[assignment,method-assign]
        parser.read_string(path.read_text())
        assert parser.sections()
