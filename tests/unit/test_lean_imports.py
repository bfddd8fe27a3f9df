"""What a process imports is what it costs to start: each case runs in a fresh interpreter.

- credential_process (run by SDKs as a new process, often): the script under ``-I -S`` loads no
  module beyond the builtins it needs, and ``credential-sidecar credential-process --socket``
  none of the daemon's heavy dependencies, argparse or tomllib;
- ``run`` with only Roles Anywhere connections: neither aiobotocore/botocore (access keys only)
  nor the dev tools (the emulator's options pulled in aiohttp's server for nothing).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from shlex import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

import credential_sidecar.client
from credential_sidecar import client
from tests.helpers import harness as h

CLIENT = Path(credential_sidecar.client.__file__)
SCRIPT = Path(sys.executable).with_name("credential-sidecar-process")
SOURCE = Path(__file__).resolve().parents[2] / "scripts" / "credential-sidecar-process"
CREDENTIALS = {"Version": 1, "AccessKeyId": "ASIAEXAMPLEEXAMPLE01", "SecretAccessKey": "s/é+",
               "SessionToken": "t\u2603oken", "Expiration": "2026-12-01T00:00:00Z"}
HEAVY = {"pydantic", "aiohttp", "cryptography", "structlog", "botocore", "aiobotocore",
         "prometheus_client", "argparse", "tomllib"}


@pytest.fixture
def control(tmp_path: Path) -> Iterator[Path]:
    """A stand-in for the daemon's control socket: one JSON line in, one fixed line out."""
    path = tmp_path / "control.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen()
    server.settimeout(0.2)
    answer = json.dumps({"ok": True, "credentials": CREDENTIALS}).encode() + b"\n"
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                request = json.loads(conn.recv(4096))
                assert request == {"op": "credentials", "name": "app"}, request
                conn.sendall(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield path
    stop.set()
    thread.join()
    server.close()


def _imported(stderr: str) -> set[str]:
    """Module names from ``-X importtime`` lines."""
    return {line.split("|")[-1].strip() for line in stderr.splitlines()
            if line.startswith("import time:") and "|" in line} - {"imported package"}


def test_the_script_loads_builtins_only(control: Path) -> None:
    done = subprocess.run([sys.executable, "-I", "-S", "-X", "importtime", str(CLIENT), "app",
                           "--socket", str(control)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout == json.dumps(CREDENTIALS) + "\n"
    loaded = _imported(done.stderr)
    assert not loaded & (HEAVY | {"json", "socket", "re", "enum", "typing", "pathlib", "site"})
    assert loaded <= {"_socket", "_json", "encodings", "encodings.utf_8",
                      "encodings.aliases", "codecs", "_codecs", "io", "abc", "_abc", "_signal",
                      "_io", "marshal", "posix", "_frozen_importlib_external", "time",
                      "zipimport"}, loaded


def test_the_installed_script_runs_itself_without_site(control: Path) -> None:
    """(An editable install has no package in site-packages: the script runs the command then;
    tests/packaging checks the fast path from a built wheel.)"""
    if not SCRIPT.exists():
        pytest.skip(f"{SCRIPT} is not installed (pip install -e . installs it)")
    assert SCRIPT.read_text() == SOURCE.read_text(), "reinstall: the script is a copy"
    probe = "import sys; print(sys.flags.no_site, sys.flags.isolated, file=sys.stderr)"
    done = subprocess.run([str(SCRIPT), "app", "--socket", str(control)], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout == json.dumps(CREDENTIALS) + "\n"
    # The script's shell line, made to run the probe instead of the script, as the script:
    shell_line = SCRIPT.read_text().splitlines()[1].replace('"$0" "$@"', f"-c {quote(probe)}")
    flags = subprocess.run(["/bin/sh", "-c", shell_line, str(SCRIPT)], capture_output=True,
                           text=True, timeout=30)
    assert flags.stderr.split() == ["1", "1"], flags.stderr


def test_the_command_imports_nothing_heavy(control: Path) -> None:
    code = ("import sys\nfrom credential_sidecar.cli import main\n"
            "code = main(sys.argv[1:])\n"
            f"print(sorted(m for m in {sorted(HEAVY)!r} if m in sys.modules), code,"
            " file=sys.stderr)\n")
    done = subprocess.run([sys.executable, "-c", code, "credential-process", "app", "--socket",
                           str(control)], capture_output=True, text=True, timeout=30,
                          env=h.clean_env())
    assert done.stdout == json.dumps(CREDENTIALS) + "\n"
    assert done.stderr.strip().splitlines()[-1] == "[] 0"


# Builds the parser `run` builds, then starts and stops the daemon in this process.
RUN = """
import asyncio, json, sys
from credential_sidecar import cli, logs
args = cli.build_parser("run").parse_args(["run", "--config", sys.argv[1]])
from credential_sidecar.config.load import load_config
from credential_sidecar.server import Daemon
config = load_config(args.config)
logs.configure("json", "critical")

async def start_and_stop() -> None:
    daemon = Daemon(config)
    await daemon.start()
    await asyncio.sleep(0)
    await daemon.stop()

asyncio.run(start_and_stop())
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("botocore", "aiobotocore")
                        or m.startswith("credential_sidecar.devtools"))))
"""


def test_run_with_roles_anywhere_only_imports_no_botocore_and_no_dev_tools(
    tmp_path: Path,
) -> None:
    material = h.make_pki(tmp_path / "pki")
    closed = f"http://127.0.0.1:{h.free_port()}"  # renewals fail at once; the set is not needed
    config = h.daemon_config(tmp_path, [h.connection("app", material, closed)],
                             extra={"control": {"socket": str(tmp_path / "control.sock")}})
    path = tmp_path / "config.toml"
    path.write_text(h.to_toml(config))
    done = subprocess.run([sys.executable, "-c", RUN, str(path)], capture_output=True, text=True,
                          timeout=60, env=h.clean_env())
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


# --- the lean JSON: what json itself would give, byte for byte ----------------------------------

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                    | st.text(), lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(), inner, max_size=4), max_leaves=12)


@given(JSON, st.sampled_from(["", " ", "\n", " \t\r\n "]))
def test_loads_is_json_loads(value: object, space: str) -> None:
    for data in (json.dumps(value), json.dumps(value, ensure_ascii=False)):
        raw = (space + data + space).encode()
        assert repr(client.loads(raw)) == repr(json.loads(raw))


@given(st.dictionaries(st.text(), st.text() | st.integers() | st.booleans() | st.none()
                       | st.floats(allow_nan=False), max_size=6) | JSON)
def test_dumps_is_json_dumps(value: object) -> None:
    assert client.dumps(value) == json.dumps(value)


@pytest.mark.parametrize("data", [b"", b"\n", b"{", b'{"a": 1} x', b'{"a": 1}{}', b'"\x01"',
                                  b"\xff", b'{"a": NaN}', b"[1, 2,]"])
def test_loads_refuses_what_json_refuses(data: bytes) -> None:
    try:
        expected: object = json.loads(data)
    except ValueError:
        with pytest.raises(ValueError):
            client.loads(data)
    else:
        assert repr(client.loads(data)) == repr(expected)


@pytest.mark.parametrize(("path", "plain"), [("/run/x.sock", True), ("x.sock", True),
                                             ("//run/x", False), ("/run/./x", False),
                                             ("/run/x/", False), ("./x", False), (".", False),
                                             ("a/../b", True), ("", False)])
def test_plain_paths_are_what_pathlib_leaves_alone(path: str, plain: bool) -> None:
    assert client._plain(path) is plain
    if plain:
        assert str(Path(path)) == path
