"""The doors beyond one IMDS role: container tokens, the control socket and who may use it,
credential-process, status, metrics and readiness, against the daemon running as a process.

The control socket tests run clients as other users, so they need root (as in CI).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from credential_sidecar.files import acl_grants
from tests.helpers import harness as h

NOBODY = 65534  # nobody / nogroup
STRANGER = 12345  # a uid and gid nothing on the host grants anything

# Runs the real command as another user. Everything is imported while still root (the venv
# may live where that user cannot read), then privileges are dropped before anything connects.
AS_USER = """
import argparse, os, sys
import credential_sidecar.client, credential_sidecar.cli.credential_process
from credential_sidecar.cli import main
warm = argparse.ArgumentParser()  # argparse imports more of the stdlib as it first parses
credential_sidecar.cli.credential_process.configure_parser(warm)
warm.parse_args(sys.argv[5:])
uid, gid, groups = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
os.setgroups([int(g) for g in groups.split(",") if g])
os.setgid(gid)
os.setuid(uid)
sys.exit(main(sys.argv[4:]))
"""

# The fast path must not pull in the daemon's heavy dependencies.
IMPORTS = """
import json, sys
from credential_sidecar.cli import main
code = main(sys.argv[1:])
heavy = sorted(m for m in ("aiohttp", "cryptography", "pydantic", "structlog",
                           "prometheus_client", "botocore", "credential_sidecar.config.model",
                           "credential_sidecar.server")
               if m in sys.modules)
print(json.dumps({"code": code, "heavy": heavy}), file=sys.stderr)
"""


@dataclass
class Stack:
    daemon: h.Daemon
    emulator: h.Emulator
    tmp: Path
    socket: Path

    def token(self, name: str) -> str:
        return self.token_file(name).read_text()

    def token_file(self, name: str) -> Path:
        if name == "private":
            return self.tmp / "private-tokens" / "private.token"
        return self.tmp / "state" / "tokens" / f"{name}.token"

    def container(self, name: str, token: str | None) -> tuple[int, dict[str, Any]]:
        headers = {} if token is None else {"Authorization": token}
        status, _, body = h.http("GET", self.daemon.url("container") + f"v1/credentials/{name}",
                                 headers)
        return status, json.loads(body)

    def issued(self) -> dict[str, dict[str, str]]:
        return {c["accessKeyId"]: c for c in self.emulator.stats()["issued"]}

    def status(self) -> dict[str, dict[str, Any]]:
        code, _, body = h.http("GET", self.daemon.url("health") + "status")
        assert code == 200
        return {row["name"]: row for row in json.loads(body)["connections"]}

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        code, headers, body = h.http("GET", self.daemon.url("health") + "metrics")
        assert code == 200 and headers["Content-Type"].startswith("text/plain")
        out = {}
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return out

    def process(self, *args: str, as_user: tuple[int, int, list[int]] | None = None
                ) -> subprocess.CompletedProcess[str]:
        if as_user is None:
            command = [*h.CLI, *args]
        else:
            uid, gid, groups = as_user
            command = [sys.executable, "-c", AS_USER, str(uid), str(gid),
                       ",".join(map(str, groups)), *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=30,
                              env=h.clean_env(), cwd="/")


def metric(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
           **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("doors")
    material = h.make_pki(tmp / "pki")
    # The socket's directory exists already (as systemd's RuntimeDirectory would) and other
    # users may traverse it; the daemon leaves an existing directory's mode alone.
    sock_dir = Path(tempfile.mkdtemp(prefix="cs-doors-"))
    sock_dir.chmod(0o755)
    socket = sock_dir / "control.sock"
    with h.emulator(tmp, [material.ca_file]) as emu:
        conns = [
            h.connection("app", material, emu.url, allowed_uids=[NOBODY]),
            h.connection("team", material, emu.url, allowed_gids=[NOBODY]),
            h.connection("private", material, emu.url,
                         container_token_file=str(tmp / "private-tokens" / "private.token")),
        ]
        imds = [{"listen": "127.0.0.1:0", "connection": "app"},
                {"listen": "127.0.0.1:0", "connection": "private"}]
        extra = {"container": {"listen": "127.0.0.1:0"}, "control": {"socket": str(socket)}}
        try:
            with h.daemon(tmp, conns, imds=imds, extra=extra) as daemon:
                # The apps' group may open the socket (as the daemon's Group= would make it).
                os.chown(socket, -1, NOBODY)
                yield Stack(daemon, emu, tmp, socket)
            assert not socket.exists(), "the socket file is removed at stop"
        finally:
            shutil.rmtree(sock_dir, ignore_errors=True)


# --- container door --------------------------------------------------------------------------


def test_token_files_are_created_0600_plus_an_acl_without_a_newline(stack: Stack) -> None:
    grants = {"app": ["user 65534"], "team": ["group 65534"], "private": None}
    for name in ("app", "team", "private"):
        path = stack.token_file(name)
        # With an ACL the group bits show its mask (read); the file's group has nothing.
        mode = 0o640 if grants[name] else 0o600
        assert stat.S_IMODE(path.stat().st_mode) == mode, name
        assert acl_grants(path, os.geteuid()) == grants[name], name
        assert path.stat().st_uid == os.geteuid()
        raw = path.read_bytes()
        assert raw.strip() == raw and len(raw) >= 43
    assert len({stack.token(n) for n in ("app", "team", "private")}) == 3
    rows = stack.status()
    assert rows["private"]["container_token_file"] == str(stack.token_file("private"))


def test_two_apps_on_one_container_listener_each_get_only_their_own(stack: Stack) -> None:
    issued = stack.issued()
    app = stack.container("app", stack.token("app"))
    team = stack.container("team", stack.token("team"))
    assert app[0] == team[0] == 200
    assert app[1]["AccessKeyId"] != team[1]["AccessKeyId"]
    for _, body in (app, team):
        assert body["SecretAccessKey"] == issued[body["AccessKeyId"]]["secretAccessKey"]
        assert body["Token"] == issued[body["AccessKeyId"]]["sessionToken"]
        assert body["AccountId"] == h.ACCOUNT
    # Each token opens its own path only, and says nothing about whether others exist.
    assert stack.container("team", stack.token("app"))[0] == 404
    assert stack.container("app", stack.token("team"))[0] == 404
    assert stack.container("team", stack.token("app")) == stack.container("nope",
                                                                          stack.token("app"))


def test_unauthenticated_callers_learn_no_names(stack: Stack) -> None:
    for token, status in ((None, 401), ("not-" + stack.token("app"), 403)):
        answers = {json.dumps(stack.container(name, token)) for name in ("app", "team", "nope")}
        assert len(answers) == 1
        assert json.loads(answers.pop())[0] == status


# --- several IMDS listeners ------------------------------------------------------------------


def test_several_imds_listeners_each_serve_their_own_connection(stack: Stack) -> None:
    issued = stack.issued()
    seen = {}
    for name in ("app", "private"):
        role, body = h.imds_read(stack.daemon.url(f"imds:{name}"))
        assert role == name
        assert body["SecretAccessKey"] == issued[body["AccessKeyId"]]["secretAccessKey"]
        seen[name] = body["AccessKeyId"]
    assert seen["app"] != seen["private"]
    rows = stack.status()
    assert any(u["door"] == "imds:app" for u in rows["app"]["used_by"])
    assert any(u["door"] == "imds:private" for u in rows["private"]["used_by"])
    assert not any(u["door"] == "imds:private" for u in rows["app"]["used_by"])


# --- control socket and credential-process ---------------------------------------------------


def _creds_ok(stack: Stack, out: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["Version"] == 1
    assert set(got) == {"Version", "AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration"}
    issued = stack.issued()[got["AccessKeyId"]]
    assert got["SecretAccessKey"] == issued["secretAccessKey"]
    assert got["SessionToken"] == issued["sessionToken"]
    return got  # type: ignore[no-any-return]


def _refused(out: subprocess.CompletedProcess[str], message: str) -> None:
    assert out.returncode == 1
    assert out.stdout == ""
    assert out.stderr.strip().splitlines() == [f"credential-sidecar: {message}"]


def test_credential_process_prints_the_cached_set_without_an_upstream_call(stack: Stack) -> None:
    calls = stack.emulator.stats()["calls"]
    for args in (("--socket", str(stack.socket)), ("--config", str(stack.daemon.config_path))):
        _creds_ok(stack, stack.process("credential-process", "app", *args))
    assert stack.emulator.stats()["calls"] == calls, "served from the daemon's cache"


def test_credential_process_imports_little(stack: Stack) -> None:
    out = subprocess.run([sys.executable, "-c", IMPORTS, "credential-process", "app",
                          "--socket", str(stack.socket)],
                         capture_output=True, text=True, timeout=30, env=h.clean_env())
    report = json.loads(out.stderr.strip().splitlines()[-1])
    assert report == {"code": 0, "heavy": []}
    assert json.loads(out.stdout)["Version"] == 1


@pytest.fixture
def root_only() -> None:
    if os.geteuid() != 0:
        pytest.skip("running clients as other users needs root (CI runs as root)")


@pytest.mark.usefixtures("root_only")
@pytest.mark.parametrize("name", ["app", "team", "private"])
def test_root_reads_every_connection(stack: Stack, name: str) -> None:
    _creds_ok(stack, stack.process("credential-process", name, "--socket", str(stack.socket),
                                   as_user=(0, 0, [])))


@pytest.mark.usefixtures("root_only")
@pytest.mark.parametrize(
    ("who", "allowed", "refused"),
    [
        ((NOBODY, NOBODY, []), ["app", "team"], ["private"]),  # uid in app, gid in team
        ((STRANGER, NOBODY, []), ["team"], ["app", "private"]),  # primary gid only
        ((STRANGER, STRANGER, [NOBODY]), ["team"], ["app", "private"]),  # supplementary gid
    ],
)
def test_other_users_get_only_what_allowed_uids_and_gids_grant(
    stack: Stack, who: tuple[int, int, list[int]], allowed: list[str], refused: list[str]
) -> None:
    for name in allowed:
        _creds_ok(stack, stack.process("credential-process", name, "--socket", str(stack.socket),
                                       as_user=who))
    for name in refused:
        out = stack.process("credential-process", name, "--socket", str(stack.socket),
                            as_user=who)
        _refused(out, f"uid {who[0]} may not read connection {name}")
    used = {(u["door"], u["peer"]) for u in stack.status()[allowed[0]]["used_by"]}
    assert ("control", f"uid {who[0]}") in used


@pytest.mark.usefixtures("root_only")
def test_a_user_outside_the_socket_group_cannot_even_connect(stack: Stack) -> None:
    out = stack.process("credential-process", "team", "--socket", str(stack.socket),
                        as_user=(STRANGER, STRANGER, []))
    _refused(out, f"daemon not reachable at {stack.socket}: Permission denied")


def test_credential_process_errors_are_one_clear_line(stack: Stack, tmp_path: Path) -> None:
    absent = tmp_path / "absent.sock"
    _refused(stack.process("credential-process", "app", "--socket", str(absent)),
             f"daemon not reachable at {absent}: No such file or directory")
    _refused(stack.process("credential-process", "nope", "--socket", str(stack.socket)),
             'no connection named "nope"')
    config = tmp_path / "no-control.toml"
    config.write_text('[health]\nlisten = "127.0.0.1:0"\n')
    _refused(stack.process("credential-process", "app", "--config", str(config)),
             f"{config} has no [control] socket; or pass --socket PATH")



def _installed_script(root: Path) -> Path:
    """The script in a venv-like layout (bin/, lib/pythonX.Y/site-packages/credential_sidecar),
    the package linked in, so it takes its fast path: an editable install has no such copy."""
    repo = Path(__file__).resolve().parents[2]
    bin_dir = root / "bin"
    site = root / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    bin_dir.mkdir(parents=True)
    site.mkdir(parents=True)
    (site / "credential_sidecar").symlink_to(repo / "daemon")
    (bin_dir / "python3").symlink_to(sys.executable)
    (bin_dir / "credential-sidecar").symlink_to(Path(sys.executable).with_name(
        "credential-sidecar"))
    script = bin_dir / "credential-sidecar-process"
    shutil.copy(repo / "scripts" / "credential-sidecar-process", script)
    return script


def test_the_script_answers_as_the_command_does(stack: Stack, tmp_path: Path) -> None:
    """credential-sidecar-process (python3 -I -S, the installed client; the full command for
    other arguments) and the CLI command: the same stdout, stderr and exit code, byte for byte."""
    script = _installed_script(tmp_path / "venv")
    config = tmp_path / "no-control.toml"
    config.write_text('[health]\nlisten = "127.0.0.1:0"\n')
    sock = str(stack.socket)
    cases = [["app", "--socket", sock], ["--socket=" + sock, "app"],
             ["app", "--config", str(stack.daemon.config_path)], ["nope", "--socket", sock],
             ["app", "--socket", str(tmp_path / "absent.sock")], ["app", "--config", str(config)],
             ["app", "--config", str(tmp_path / "absent.toml")],
             ["app", "--socket", sock, "--config", str(config)], ["--sock", sock, "app"], []]
    for args in cases:
        ours = subprocess.run([str(script), *args], capture_output=True, text=True, timeout=30,
                              env=h.clean_env(), cwd="/")
        cli = stack.process("credential-process", *args)
        assert ours.returncode == cli.returncode, (args, ours.stderr, cli.stderr)
        assert ours.stdout == cli.stdout, args
        assert ours.stderr == cli.stderr, args


# --- status ----------------------------------------------------------------------------------


def _config_variant(stack: Stack, tmp: Path, **changes: dict[str, Any]) -> Path:
    data = tomllib.loads(stack.daemon.config_path.read_text())
    data.update(changes)
    path = tmp / "variant.toml"
    path.write_text(h.to_toml(data))
    return path


def test_status_table_and_json(stack: Stack) -> None:
    out = stack.process("status", "--config", str(stack.daemon.config_path))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    for heading in ("NAME", "TYPE", "STATE", "EXPIRES", "LAST RENEWAL", "LAST ERROR",
                    "CERT NOT AFTER", "KEY AGE (DAYS)", "USED BY"):
        assert heading in lines[0]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == {"app", "team", "private"}
    assert all(row[1:3] == ["roles-anywhere", "ready"] for row in rows.values())
    cert = stack.status()["app"]["certificate_not_after"]
    assert rows["app"][5:8] == ["-", cert, "-"], "no error; cert not-after; key age unknown"
    out = stack.process("status", "--config", str(stack.daemon.config_path), "--json")
    assert out.returncode == 0
    report = json.loads(out.stdout)
    assert report["ready"] is True
    by_name = {row["name"]: row for row in report["connections"]}
    assert by_name["app"]["certificate_not_after"] == cert
    assert by_name["app"]["state"] == "ready" and by_name["app"]["expires_at"]


def test_status_prefers_the_control_socket_and_falls_back_to_health(
    stack: Stack, tmp_path: Path
) -> None:
    dead = f"127.0.0.1:{h.free_port()}"
    via_control = _config_variant(stack, tmp_path, health={"listen": dead})
    out = stack.process("status", "--config", str(via_control), "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["ready"] is True  # only the control socket's answer has this
    health = stack.daemon.url("health").removeprefix("http://").rstrip("/")
    via_health = _config_variant(stack, tmp_path, control={"socket": str(tmp_path / "x.sock")},
                                 health={"listen": health})
    out = stack.process("status", "--config", str(via_health), "--json")
    assert out.returncode == 0, out.stderr
    assert "ready" not in json.loads(out.stdout) and json.loads(out.stdout)["connections"]
    neither = _config_variant(stack, tmp_path, control={"socket": str(tmp_path / "x.sock")},
                              health={"listen": dead})
    out = stack.process("status", "--config", str(neither))
    assert out.returncode == 1
    assert out.stderr.startswith("daemon unreachable: control socket")
    assert "health listener" in out.stderr


# --- metrics ---------------------------------------------------------------------------------


def test_metrics_count_every_door_and_describe_every_connection(stack: Stack) -> None:
    before = stack.metrics()
    h.imds_read(stack.daemon.url("imds:app"))
    h.imds_read(stack.daemon.url("imds:private"))
    stack.container("app", stack.token("app"))
    stack.container("app", None)
    stack.container("app", "x" * 43)
    stack.container("team", stack.token("app"))
    _creds_ok(stack, stack.process("credential-process", "app", "--socket", str(stack.socket)))
    stack.process("credential-process", "nope", "--socket", str(stack.socket))
    after = stack.metrics()

    def delta(door: str, status: str) -> float:
        name = "credential_sidecar_requests_total"
        return (metric(after, name, door=door, status=status)
                - metric(before, name, door=door, status=status))

    assert delta("imds:app", "200") == 3  # token, role name, credentials
    assert delta("imds:private", "200") == 3
    for status in ("200", "401", "403", "404"):
        assert delta("container", status) == 1, status
    assert delta("control", "200") == 1 and delta("control", "404") == 1

    rows = stack.status()
    for name in ("app", "team", "private"):
        assert metric(after, "credential_sidecar_renewals_total", connection=name,
                      result="ok") >= 1
        assert metric(after, "credential_sidecar_ready", connection=name) == 1
        assert 3000 < metric(after, "credential_sidecar_credentials_seconds_left",
                             connection=name) <= 3600
        assert metric(after, "credential_sidecar_upstream_seconds_count", connection=name) >= 1
        days = metric(after, "credential_sidecar_certificate_days_left", connection=name)
        not_after = rows[name]["certificate_not_after"]
        expected = (datetime.fromisoformat(not_after.replace("Z", "+00:00")).timestamp()
                    - time.time()) / 86400
        assert abs(days - expected) < 0.01


# --- readiness -------------------------------------------------------------------------------


def _readyz(daemon: h.Daemon) -> tuple[int, dict[str, Any]]:
    code, _, body = h.http("GET", daemon.url("health") + "readyz")
    return code, json.loads(body)


def test_readyz_names_what_has_nothing_fresh_and_optional_does_not_hold_it_back(
    tmp_path: Path,
) -> None:
    trusted = h.make_pki(tmp_path / "pki")
    stranger = h.make_pki(tmp_path / "stranger", name="stranger")  # a CA the emulator rejects
    sock = Path(tempfile.mkdtemp(prefix="cs-ready-")) / "control.sock"
    extra = {"control": {"socket": str(sock)}}
    try:
        with h.emulator(tmp_path, [trusted.ca_file]) as emu:
            conns = [h.connection("good", trusted, emu.url),
                     h.connection("bad", stranger, emu.url)]
            (tmp_path / "required").mkdir()
            with h.daemon(tmp_path / "required", conns, extra=extra, wait_ready=False) as daemon:

                def settled() -> tuple[int, dict[str, Any]] | None:
                    code, body = _readyz(daemon)  # "good" renewed, "bad" refused by upstream
                    not_ready = body.get("not_ready", {})
                    done = list(not_ready) == ["bad"] and "Exception" in not_ready["bad"]
                    return (code, body) if done else None

                code, body = h.wait_for(settled, what="good ready, bad refused")
                assert code == 503 and body["ready"] is False
                assert set(body["not_ready"]) == {"bad"}
                assert "AccessDeniedException" in body["not_ready"]["bad"]
                out = subprocess.run([*h.CLI, "status", "--config", str(daemon.config_path)],
                                     capture_output=True, text=True, timeout=30, env=h.clean_env())
                assert out.returncode == 3, out.stdout + out.stderr
                bad_row = next(line for line in out.stdout.splitlines() if line.startswith("bad"))
                assert "failed" in bad_row and "AccessDeniedException" in bad_row
                refused = subprocess.run(
                    [*h.CLI, "credential-process", "bad", "--socket", str(sock)],
                    capture_output=True, text=True, timeout=30, env=h.clean_env())
                assert refused.returncode == 1
                assert refused.stderr.startswith(
                    "credential-sidecar: connection bad has no fresh credentials:")
                code, _, metrics = h.http("GET", daemon.url("health") + "metrics")
                assert 'credential_sidecar_ready{connection="bad"} 0.0' in metrics.decode()
                assert 'credential_sidecar_ready{connection="good"} 1.0' in metrics.decode()

            conns[1] = h.connection("bad", stranger, emu.url, optional=True)
            (tmp_path / "optional").mkdir()
            with h.daemon(tmp_path / "optional", conns, extra=extra) as daemon:
                code, body = _readyz(daemon)  # the harness waited for 200
                assert code == 200 and body["ready"] is True
                assert "not_ready" not in body
    finally:
        shutil.rmtree(sock.parent, ignore_errors=True)


# --- reload ----------------------------------------------------------------------------------


def test_sighup_rereads_tokens_starts_new_ones_and_moves_the_socket(tmp_path: Path) -> None:
    material = h.make_pki(tmp_path / "pki")
    sock_dir = Path(tempfile.mkdtemp(prefix="cs-reload-"))
    first, second = sock_dir / "first.sock", sock_dir / "second.sock"
    container = {"listen": "127.0.0.1:0"}
    try:
        with h.emulator(tmp_path, [material.ca_file]) as emu:
            conns = [h.connection("app", material, emu.url)]
            extra = {"container": container, "control": {"socket": str(first)}}
            with h.daemon(tmp_path, conns, extra=extra) as daemon:
                url = daemon.url("container") + "v1/credentials/"
                tokens = tmp_path / "state" / "tokens"
                old = (tokens / "app.token").read_text()
                assert h.http("GET", url + "app", {"Authorization": old})[0] == 200
                (tokens / "app.token").write_text("rotated-by-the-operator-0123456789\n")
                config = h.daemon_config(
                    tmp_path, [*conns, h.connection("new", material, emu.url)],
                    extra={"container": container, "control": {"socket": str(second)}})
                daemon.config_path.write_text(h.to_toml(config))
                daemon.process.proc.send_signal(signal.SIGHUP)
                h.wait_for(lambda: any(e.get("event") == "reloaded" for e in daemon.events()),
                           what="the reload")
                # The container listener kept its port; its tokens follow the files.
                assert h.http("GET", url + "app", {"Authorization": old})[0] == 403
                rotated = {"Authorization": "rotated-by-the-operator-0123456789"}
                assert h.http("GET", url + "app", rotated)[0] == 200
                new = {"Authorization": (tokens / "new.token").read_text()}
                h.wait_for(lambda: h.http("GET", url + "new", new)[0] == 200,
                           what="the new connection's first set")
                # The control socket moved with its setting.
                assert not first.exists() and second.exists()
                out = subprocess.run([*h.CLI, "credential-process", "new", "--socket",
                                      str(second)], capture_output=True, text=True, timeout=30,
                                     env=h.clean_env())
                assert out.returncode == 0, out.stderr
                assert json.loads(out.stdout)["AccessKeyId"] in {
                    c["accessKeyId"] for c in emu.stats()["issued"]}
    finally:
        shutil.rmtree(sock_dir, ignore_errors=True)


@pytest.mark.parametrize("path", ["status", "metrics", "readyz", "healthz"])
def test_the_health_door_refuses_a_rebound_host(stack: Stack, path: str) -> None:
    base = stack.daemon.url("health")
    port = base.rstrip("/").rsplit(":", 1)[1]
    for host in ("attacker.example", f"attacker.example:{port}", "127.0.0.1:1"):
        status, _, body = h.http("GET", base + path, {"Host": host})
        assert status == 400 and json.loads(body)["Code"] == "BadHost", host
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost"):
        assert h.http("GET", base + path, {"Host": host})[0] == 200, host
