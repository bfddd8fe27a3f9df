"""The real daemon under real systemd 252 (PID 1 of a Debian 12 guest in systemd-nspawn), installed
and started by README's "Installing on Debian/Ubuntu with systemd" blocks, run verbatim.

The guest is a cached debootstrap root (tests/helpers/nspawn.py) with a copy of the clone; pip
finds the project's build backend and dependencies offline in a host-built wheelhouse. Its
upstream is the Roles Anywhere emulator, run in the guest as a transient unit. The guest has no
network but its loopback. With an empty cache ~5 min on 2 cores (debootstrap, wheels; cached
afterwards in /var/cache/credential-sidecar-test); then ~2 min.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import harness as h
from tests.helpers import nspawn
from tests.helpers.readme import block

ROOT = Path(__file__).resolve().parents[2]
UNIT = "credential-sidecar.service"
SOCKET_UNIT = "credential-sidecar.socket"
EMULATOR = "127.0.0.1:9990"
IMDS, CONTAINER, HEALTH = "127.0.0.1:9911", "127.0.0.1:9912", "127.0.0.1:9913"
CONTROL = "/run/credential-sidecar/control.sock"
SOURCE = "/root/credential-sidecar"
ALICE, BOB = 2001, 2002  # an app user the connection names, and one it does not
PYTHON = "/opt/credential-sidecar/bin/python"  # has botocore: the guest's SDK client
TOKEN = "/run/credential-sidecar/reports.token"

pytestmark = [
    pytest.mark.timeout(900),
    pytest.mark.skipif(os.geteuid() != 0, reason="systemd-nspawn needs root (mounts, namespaces)"),
]

CONFIG = f"""\
[daemon]
log_format = "json"
log_level = "debug"
ready_timeout_seconds = 30

[[imds]]
listen = "{IMDS}"
connection = "reports"

[container]
listen = "{CONTAINER}"

[health]
listen = "{HEALTH}"

[control]
socket = "{CONTROL}"

[[connections]]
name = "reports"
type = "roles-anywhere"
certificate = "/etc/credential-sidecar/reports.crt"
private_key = "$CREDENTIALS_DIRECTORY/private_reports.key"
trust_anchor_arn = "{h.TRUST_ANCHOR}"
profile_arn = "{h.PROFILE}"
role_arn = "{h.ROLE}"
session_name = "reports-systemd"
duration_seconds = 3600
endpoint = "http://{EMULATOR}"
container_token_file = "{TOKEN}"
allowed_uids = [{ALICE}]
"""


def curl(m: nspawn.Machine, *args: str, check: bool = True) -> str:
    return m.run(["curl", "-sS", "--max-time", "20", *args], check=check).stdout


def imds_credentials(m: nspawn.Machine) -> dict[str, Any]:
    """What an SDK does, from inside the guest: token PUT, role name, credentials document."""
    base = f"http://{IMDS}/"
    token = curl(m, "-X", "PUT", "-H", f"{h.IMDS_TTL}: 60", "-f", base + "latest/api/token")
    header = f"X-aws-ec2-metadata-token: {token}"
    role = curl(m, "-f", "-H", header, base + h.IMDS_CREDS)
    assert role == "reports"
    return json.loads(curl(m, "-f", "-H", header, base + h.IMDS_CREDS + role))  # type: ignore[no-any-return]


def issued(m: nspawn.Machine) -> list[str]:
    stats = json.loads(curl(m, "-f", f"http://{EMULATOR}/_emulator/stats"))
    return [c["accessKeyId"] for c in stats["issued"]]


def wait_active(m: nspawn.Machine, unit: str = UNIT, timeout: float = 60) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    props: dict[str, str] = {}
    while time.monotonic() < deadline:
        props = m.show(unit, "ActiveState", "SubState", "MainPID", "StatusText", "NRestarts",
                       "Result", "ExecMainStatus")
        if props["ActiveState"] == "active" and props["SubState"] == "running":
            return props
        if props["ActiveState"] == "failed":
            break
        time.sleep(0.2)
    journal = m.run(["journalctl", "-u", unit, "-o", "cat", "--no-pager", "-n", "40"],
                    check=False).stdout
    raise AssertionError(f"{unit} not active: {props}\n{journal}")


def daemon_events(m: nspawn.Machine) -> list[dict[str, Any]]:
    events = []
    for record in m.journal(UNIT):
        message = record.get("MESSAGE")
        if isinstance(message, str) and message.startswith("{"):
            events.append(json.loads(message))
    return events


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[nspawn.Machine]:
    """A fresh Debian 12 guest where README's "Installing on Debian/Ubuntu with systemd" ran
    verbatim up to the operator's edit: the program, the units, the user, the directories."""
    missing = nspawn.missing_tools()
    assert not missing, f"missing {missing}: tests/setup/realsys.sh installs them"
    nspawn.sweep()
    tarball = nspawn.root_tarball()
    wheels = nspawn.wheelhouse(ROOT)
    tmp = tmp_path_factory.mktemp("realsys")
    source = tmp / "source"
    nspawn.source_copy(ROOT, source)
    material = h.make_pki(tmp / "pki", "p256", name="reports")
    (tmp / "config.toml").write_text(CONFIG)
    copies = [(source, SOURCE), (wheels, "/root/wheels"),
              (material.cert, "/root/reports.crt"), (material.key, f"{SOURCE}/reports.key"),
              (material.ca_file, "/etc/cs-test/ca.pem")]
    machine = nspawn.Machine(f"cs-sd-{os.getpid()}", tarball, copies=copies)
    with machine:
        readme(machine, "systemd-install")
        # two app users, both in the control socket's group (README, "Who may use it")
        machine.sh(f"""
            useradd -u {ALICE} -m alice && useradd -u {BOB} -m bob
            usermod -aG credential-sidecar alice && usermod -aG credential-sidecar bob
        """)
        # the operator's edit: this suite's config and certificate
        machine.write("/etc/credential-sidecar/config.toml", CONFIG)
        machine.run(["install", "-m", "0644", "/root/reports.crt", "/etc/credential-sidecar/"])
        machine.run([
            "systemd-run", "--unit=cs-emulator", "--property=Type=exec", "--quiet",
            "/usr/bin/credential-sidecar", "emulator", "--listen", EMULATOR,
            "--ca", "/etc/cs-test/ca.pem", "--trust-anchor-arn", h.TRUST_ANCHOR,
            "--profile-arn", h.PROFILE, "--role-arn", h.ROLE,
        ])
        h.wait_for(lambda: machine.run(["curl", "-sf", f"http://{EMULATOR}/_emulator/stats"],
                                       check=False).returncode == 0,
                   timeout=60, what="the emulator in the guest")
        yield machine


def readme(m: nspawn.Machine, name: str) -> None:
    """A README block, verbatim, as root in the clone; pip finds its packages offline (the
    guest has no network) through its environment, not through changed commands."""
    started = time.monotonic()
    m.run(["env", "PIP_NO_INDEX=1", "PIP_FIND_LINKS=/root/wheels", "PIP_NO_CACHE_DIR=1",
           "PIP_DISABLE_PIP_VERSION_CHECK=1", "DEBIAN_FRONTEND=noninteractive",
           "/bin/bash", "-euxo", "pipefail", "-c", f"cd {SOURCE}\n" + block(name)],
          timeout=600)
    nspawn.log(f"README block {name} in {time.monotonic() - started:.1f}s")


def test_guest_runs_systemd_252_as_pid_1(guest: nspawn.Machine) -> None:
    assert guest.run(["systemctl", "is-system-running"]).stdout.strip() == "running"
    assert guest.run(["systemctl", "--version"]).stdout.startswith("systemd 252")
    assert guest.run(["cat", "/proc/1/comm"]).stdout.strip() == "systemd"


def test_the_unit_verifies_in_the_guest(guest: nspawn.Machine) -> None:
    result = guest.run(["systemd-analyze", "verify", f"/etc/systemd/system/{UNIT}",
                        f"/etc/systemd/system/{SOCKET_UNIT}"], check=False)
    assert result.returncode == 0, result.stderr


def test_readme_start_reports_ready_only_with_credentials(guest: nspawn.Machine) -> None:
    readme(guest, "systemd-start")  # check-config as the service sees it, socket, service
    props = wait_active(guest)
    # Type=notify: `systemctl enable --now` returned after READY=1, which needs credentials
    assert issued(guest), "READY=1 came before any credentials were issued"
    assert props["StatusText"], "no STATUS= line reached systemd"
    assert guest.show(SOCKET_UNIT, "ActiveState")["ActiveState"] == "active"
    served = imds_credentials(guest)
    assert served["Code"] == "Success" and served["AccessKeyId"] in issued(guest)
    inherited = {e["door"] for e in daemon_events(guest)
                 if e.get("event") == "listening" and e.get("activated")}
    assert inherited == {"imds:reports", "container", "health", "control"}, (
        "the README's start did not hand the daemon systemd's sockets")


def test_the_documentation_the_unit_names_is_installed(guest: nspawn.Machine) -> None:
    docs = guest.show(UNIT, "Documentation")["Documentation"].split()
    assert docs and all(d.startswith("file:") for d in docs), docs
    for doc in docs:
        guest.run(["test", "-s", doc.removeprefix("file:")])


def test_check_config_as_the_service_refuses_a_key_it_cannot_read(guest: nspawn.Machine) -> None:
    """The README's check runs as the service user with its credentials: a config that names a
    key missing from the credential store fails there, before any start."""
    check = next(line for line in block("systemd-start").splitlines()
                 if "check-config" in line)
    good = guest.run(["cat", "/etc/credential-sidecar/config.toml"]).stdout
    guest.write("/etc/credential-sidecar/config.toml",
                good.replace("private_reports.key", "private_missing.key"))
    try:
        result = guest.sh(check, check=False)
        assert result.returncode != 0 and "private_missing.key" in result.stderr + result.stdout
    finally:
        guest.write("/etc/credential-sidecar/config.toml", good)
    guest.sh(check)


def test_the_sandbox_is_in_force(guest: nspawn.Machine) -> None:
    pid = wait_active(guest)["MainPID"]
    status = dict(line.split(":", 1) for line in
                  guest.run(["cat", f"/proc/{pid}/status"]).stdout.splitlines() if ":" in line)
    uid = status["Uid"].split()[0]
    assert uid != "0" and guest.run(["id", "-u", "credential-sidecar"]).stdout.strip() == uid
    assert int(status["CapEff"], 16) == 0 and int(status["CapBnd"], 16) == 0
    assert status["NoNewPrivs"].strip() == "1" and status["Seccomp"].strip() == "2"
    # ProtectSystem=strict: the mount that holds /usr and /etc is read-only in its namespace
    mounts = [line.split() for line in
              guest.run(["cat", f"/proc/{pid}/mountinfo"]).stdout.splitlines()]
    for path in ("/usr", "/etc"):
        holder = max((m for m in mounts if path == m[4] or path.startswith(m[4].rstrip("/") + "/")),
                     key=lambda m: len(m[4]))
        assert "ro" in holder[5].split(","), (path, holder)
    # probed as the daemon sees the system: its mounts, its uid
    gid = status["Gid"].split()[0]
    inside = ["nsenter", f"--target={pid}", "--mount", f"--setuid={uid}", f"--setgid={gid}"]
    guest.run(["install", "-d", "-o", "credential-sidecar", "/srv/cs-probe"])  # its own dir
    wrote = guest.run([*inside, "touch", "/srv/cs-probe/file"], check=False)
    assert wrote.returncode != 0 and "Read-only file system" in wrote.stderr, wrote
    home = guest.run([*inside, "ls", "/home/alice"], check=False)
    assert home.returncode != 0, "ProtectHome= did not hide /home"
    key = guest.run([*inside, "cat", "/etc/credential-sidecar/private/reports.key"], check=False)
    assert key.returncode != 0, "the service user reads the root-only key store"


def test_journal_carries_the_json_log(guest: nspawn.Machine) -> None:
    wait_active(guest)
    # the daemon's own lines: JSON, from the unit's cgroup, with a priority from the <N> prefix
    lines = [r for r in guest.journal(UNIT) if str(r.get("MESSAGE", "")).startswith("{")]
    assert lines and all(r["_SYSTEMD_UNIT"] == UNIT and "PRIORITY" in r for r in lines)
    events = daemon_events(guest)
    doors = {e.get("door") for e in events if e.get("event") == "listening"}
    assert {"imds:reports", "container", "health"} <= doors, doors


def test_container_door_and_control_socket(guest: nspawn.Machine) -> None:
    wait_active(guest)
    token = guest.run(["cat", TOKEN]).stdout.strip()
    body = curl(guest, "-f", "-H", f"Authorization: {token}",
                f"http://{CONTAINER}/v1/credentials/reports")
    assert json.loads(body)["AccessKeyId"] in issued(guest)
    out = guest.run(["credential-sidecar", "credential-process", "reports",
                     "--socket", CONTROL]).stdout
    assert json.loads(out)["Version"] == 1


def as_user(m: nspawn.Machine, user: str, *argv: str,
            env: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return m.run(["runuser", "-u", user, "--", "env", *env, *argv], check=False)


BOTOCORE = ("import botocore.session; c = botocore.session.get_session().get_credentials(); "
            "print(c.get_frozen_credentials().access_key if c else 'none')")


def test_each_app_user_gets_only_what_its_connection_allows(guest: nspawn.Machine) -> None:
    """alice (allowed_uids) gets the set through botocore on both doors and credential-process;
    bob, also in the socket's group, gets nothing anywhere, and no secret reaches the journal."""
    wait_active(guest)
    imds = (f"AWS_EC2_METADATA_SERVICE_ENDPOINT=http://{IMDS}/", "AWS_CONFIG_FILE=/dev/null",
            "AWS_SHARED_CREDENTIALS_FILE=/dev/null")
    container = (f"AWS_CONTAINER_CREDENTIALS_FULL_URI=http://{CONTAINER}/v1/credentials/reports",
                 f"AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE={TOKEN}", "AWS_CONFIG_FILE=/dev/null",
                 "AWS_SHARED_CREDENTIALS_FILE=/dev/null", "AWS_EC2_METADATA_DISABLED=true")
    for door in (imds, container):
        assert as_user(guest, "alice", PYTHON, "-c", BOTOCORE, env=door).stdout.strip() \
            in issued(guest), door
        refused = as_user(guest, "bob", PYTHON, "-c", BOTOCORE, env=door)
        assert refused.stdout.strip() not in issued(guest), door
    assert as_user(guest, "bob", "cat", TOKEN).returncode != 0, "bob reads alice's token"
    process = ("credential-sidecar", "credential-process", "reports", "--socket", CONTROL)
    allowed = as_user(guest, "alice", *process)
    assert allowed.returncode == 0, allowed.stderr
    secret = json.loads(allowed.stdout)["SecretAccessKey"]
    # README's credential_process line: the script pip installed, under python3 -I -S
    script = as_user(guest, "alice", "/opt/credential-sidecar/bin/credential-sidecar-process",
                     "reports", "--socket", CONTROL)
    assert script.returncode == 0 and json.loads(script.stdout) == json.loads(allowed.stdout)
    refused = as_user(guest, "bob", *process)
    assert refused.returncode == 1 and f"uid {BOB} may not read connection reports" \
        in refused.stderr, refused
    status = as_user(guest, "bob", "credential-sidecar", "status", "--config",
                     "/etc/credential-sidecar/config.toml")
    assert status.returncode == 0 and secret not in status.stdout, status
    journal = guest.run(["journalctl", "-o", "cat", "--no-pager"]).stdout
    assert secret not in journal and "reports" in journal


def poller(imports: str, attempt: str) -> str:
    """A guest-side script that runs ``attempt`` (statements that raise on a failure) every
    10 ms for argv[1] seconds and prints how many passed and failed, and the first failure."""
    body = "\n".join("        " + line for line in attempt.strip().splitlines())
    return f"""
import json, sys, time, {imports}
ok = errors = 0
first = None
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    try:
{body}
        ok += 1
    except Exception as exc:
        errors += 1
        first = first or repr(exc)
    time.sleep(0.01)
print(json.dumps({{"ok": ok, "errors": errors, "first": first}}))
"""


# A whole IMDSv2 fetch, as an SDK makes it.
POLLER = poller("urllib.request", f"""
put = urllib.request.Request("http://{IMDS}/latest/api/token", method="PUT",
                             headers={{"X-aws-ec2-metadata-token-ttl-seconds": "60"}})
token = urllib.request.urlopen(put, timeout=5).read().decode()
get = urllib.request.Request("http://{IMDS}/{h.IMDS_CREDS}reports",
                             headers={{"X-aws-ec2-metadata-token": token}})
assert json.loads(urllib.request.urlopen(get, timeout=5).read())["Code"] == "Success"
""")

# credential_process as alice's SDK runs it (README: the script pip installed, under -I -S), in a
# loop: every run must print a set.
PROCESS_POLLER = poller("subprocess", f"""
done = subprocess.run(["/opt/credential-sidecar/bin/credential-sidecar-process", "reports",
                       "--socket", "{CONTROL}"], capture_output=True, text=True)
assert done.returncode == 0 and json.loads(done.stdout)["Version"] == 1, done.stderr
""")


def poll_through_restarts(m: nspawn.Machine, restarts: int = 3) -> dict[str, dict[str, Any]]:
    """Clients in the guest while the service restarts: one fetching from IMDS every 10 ms,
    and alice running credential-process every 10 ms."""
    m.write("/root/poll.py", POLLER)
    m.write("/usr/local/lib/poll-process.py", PROCESS_POLLER)
    seconds = str(4 + 3 * restarts)
    enter = ["nsenter", f"--target={m.leader}", "--all", "--root", "--wd"]
    pollers = {
        "imds": subprocess.Popen(
            [*enter, "env", "-i", *nspawn.GUEST_ENV, PYTHON, "/root/poll.py", seconds],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
        "credential-process": subprocess.Popen(
            [*enter, "runuser", "-u", "alice", "--", "env", "-i", *nspawn.GUEST_ENV,
             "/usr/bin/python3", "/usr/local/lib/poll-process.py", seconds],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
    }
    results: dict[str, dict[str, Any]] = {}
    try:
        time.sleep(2)
        for _ in range(restarts):
            m.run(["systemctl", "restart", UNIT], timeout=120)
            time.sleep(1)
        for name, poller in pollers.items():
            out, err = poller.communicate(timeout=60)
            results[name] = json.loads(out)
            results[name]["stderr"] = err[-2000:]
    finally:
        for poller in pollers.values():
            poller.kill()
            poller.wait()
    return results


def control_activated(m: nspawn.Machine) -> bool | None:
    """Whether the running daemon serves the control socket systemd holds (None: not yet)."""
    pid = wait_active(m)["MainPID"]
    for record in m.journal(UNIT):
        message = str(record.get("MESSAGE"))
        if record.get("_PID") == pid and message.startswith("{"):
            event = json.loads(message)
            if event.get("event") == "listening" and event.get("door") == "control":
                return bool(event["activated"])
    return None


def test_restarts_under_polling_clients_answer_no_error_with_the_socket(
    guest: nspawn.Machine,
) -> None:
    """systemd holds the ports and the control socket: a client that connects while the daemon
    restarts waits in the queue. Three restarts under an IMDS client and credential-process,
    each polling every 10 ms: not one error."""
    guest.run(["systemctl", "start", SOCKET_UNIT, UNIT], timeout=120)
    wait_active(guest)
    result = poll_through_restarts(guest)
    nspawn.log(f"polling through 3 restarts with the socket unit: {result}")
    for door in ("imds", "credential-process"):
        assert result[door]["ok"] > 50 and result[door]["errors"] == 0, result
    assert control_activated(guest) is True, "the daemon bound its own control socket"
    mode = guest.run(["stat", "-c", "%a %G %F", CONTROL]).stdout.split()
    assert mode == ["660", "credential-sidecar", "socket"], mode


def test_reload_keeps_the_process_and_serving(guest: nspawn.Machine) -> None:
    before = wait_active(guest)
    guest.run(["systemctl", "reload", UNIT], timeout=60)
    after = wait_active(guest)
    assert after["MainPID"] == before["MainPID"]
    assert imds_credentials(guest)["Code"] == "Success"


def test_a_reload_with_a_bad_config_is_refused_and_serving_goes_on(guest: nspawn.Machine) -> None:
    before = wait_active(guest)
    good = guest.run(["cat", "/etc/credential-sidecar/config.toml"]).stdout
    guest.write("/etc/credential-sidecar/config.toml", good + "\n[nonsense]\nkey = 1\n")
    try:
        guest.run(["systemctl", "reload", UNIT], timeout=60)
        h.wait_for(lambda: "reload refused" in guest.show(UNIT, "StatusText")["StatusText"],
                   timeout=30, what="STATUS= saying the reload was refused")
        after = wait_active(guest)
        assert after["MainPID"] == before["MainPID"]
        assert imds_credentials(guest)["Code"] == "Success"
        errors = [r for r in guest.journal(UNIT) if r.get("PRIORITY") == "3"
                  and "nonsense" in str(r.get("MESSAGE"))]
        assert errors, "the refusal is not in `journalctl -p err`"
    finally:
        guest.write("/etc/credential-sidecar/config.toml", good)
    guest.run(["systemctl", "reload", UNIT], timeout=60)
    h.wait_for(lambda: "reload refused" not in guest.show(UNIT, "StatusText")["StatusText"],
               timeout=30, what="STATUS= back to normal after a good reload")


def test_restart_serves_the_cached_set_without_asking_upstream(guest: nspawn.Machine) -> None:
    served = imds_credentials(guest)["AccessKeyId"]
    calls = len(issued(guest))
    before = wait_active(guest)
    guest.run(["systemctl", "restart", UNIT], timeout=120)
    after = wait_active(guest)
    assert after["MainPID"] != before["MainPID"]
    assert imds_credentials(guest)["AccessKeyId"] == served
    assert len(issued(guest)) == calls, "a restart asked the upstream again"


def test_stop_is_a_clean_exit(guest: nspawn.Machine) -> None:
    wait_active(guest)
    guest.run(["systemctl", "stop", UNIT], timeout=60)
    props = guest.show(UNIT, "ActiveState", "Result", "ExecMainStatus", "ExecMainCode")
    assert props["ActiveState"] == "inactive" and props["Result"] == "success", props
    assert props["ExecMainStatus"] == "0", props


def test_container_tokens_survive_a_stop_and_a_reboot(guest: nspawn.Machine) -> None:
    """/run/credential-sidecar outlives a stop (RuntimeDirectoryPreserve=yes) but not a reboot;
    an app that copied its token must still be admitted after either."""
    guest.run(["systemctl", "start", UNIT], timeout=120)
    wait_active(guest)
    token = guest.run(["cat", TOKEN]).stdout.strip()
    guest.run(["systemctl", "stop", UNIT], timeout=60)
    assert guest.run(["cat", TOKEN]).stdout.strip() == token, "kept across a stop"
    # A reboot empties /run: the socket unit (holding the control socket there) and the
    # service are down, the directory is gone.
    guest.run(["systemctl", "stop", SOCKET_UNIT], timeout=60)
    guest.run(["rm", "-rf", "/run/credential-sidecar"])
    guest.run(["systemctl", "start", SOCKET_UNIT, UNIT], timeout=120)
    wait_active(guest)
    assert guest.run(["cat", TOKEN]).stdout.strip() == token, "restored from the kept copy"
    body = curl(guest, "-f", "-H", f"Authorization: {token}",
                f"http://{CONTAINER}/v1/credentials/reports")
    assert json.loads(body)["AccessKeyId"] in issued(guest)


def test_socket_activation_starts_the_daemon_on_first_connection(guest: nspawn.Machine) -> None:
    guest.run(["systemctl", "stop", UNIT], timeout=60)  # the socket unit keeps the ports
    assert guest.show(UNIT, "ActiveState")["ActiveState"] == "inactive"
    served = imds_credentials(guest)  # the first connection waits in the socket's queue
    assert served["Code"] == "Success"
    pid = wait_active(guest)["MainPID"]
    inherited = [r for r in guest.journal(UNIT) if r.get("_PID") == pid
                 and str(r.get("MESSAGE")).startswith("{")
                 and json.loads(str(r["MESSAGE"])).get("activated") is True]
    assert inherited, "the daemon bound its own sockets instead of systemd's"
    assert control_activated(guest) is True, "systemd's control socket did not outlive a stop"
    # credential-process alone starts a stopped daemon too: its connection waits in the queue.
    guest.run(["systemctl", "stop", UNIT], timeout=60)
    assert guest.show(UNIT, "ActiveState")["ActiveState"] == "inactive"
    out = as_user(guest, "alice", "/opt/credential-sidecar/bin/credential-sidecar-process",
                  "reports", "--socket", CONTROL)
    assert out.returncode == 0 and json.loads(out.stdout)["Version"] == 1, out
    assert control_activated(guest) is True


def test_readme_moves_a_running_install_to_the_socket(guest: nspawn.Machine) -> None:
    guest.run(["systemctl", "disable", "--now", SOCKET_UNIT, UNIT], timeout=60)
    guest.run(["systemctl", "start", UNIT], timeout=120)  # as installed before the socket unit
    wait_active(guest)
    without = poll_through_restarts(guest)  # what the socket unit is for
    nspawn.log(f"polling through 3 restarts without the socket unit: {without}")
    assert without["imds"]["ok"] > 50 and without["imds"]["errors"] > 0, without
    # ... though credential-process waits out a restart's missing socket by itself
    process = without["credential-process"]
    assert process["ok"] > 50 and process["errors"] == 0, without
    refused = guest.run(["systemctl", "start", SOCKET_UNIT], check=False, timeout=60)
    assert refused.returncode != 0, "the README's order would be needless"
    guest.run(["systemctl", "reset-failed", SOCKET_UNIT], check=False)
    readme(guest, "systemd-socket-upgrade")
    wait_active(guest)
    assert guest.show(SOCKET_UNIT, "ActiveState")["ActiveState"] == "active"
    assert imds_credentials(guest)["Code"] == "Success"
    guest.run(["systemctl", "disable", "--now", SOCKET_UNIT, UNIT], timeout=60)


def test_a_bad_config_is_not_restarted(guest: nspawn.Machine) -> None:
    good = guest.run(["cat", "/etc/credential-sidecar/config.toml"]).stdout
    guest.write("/etc/credential-sidecar/config.toml", good + "\n[nonsense]\nkey = 1\n")
    try:
        result = guest.run(["systemctl", "start", UNIT], check=False, timeout=120)
        props = guest.show(UNIT, "ActiveState", "ExecMainStatus", "NRestarts", "Result")
        assert result.returncode != 0 and props["ExecMainStatus"] == "2", props
        assert props["NRestarts"] == "0", "RestartPreventExitStatus=2 did not hold"
    finally:
        guest.write("/etc/credential-sidecar/config.toml", good)
        guest.run(["systemctl", "reset-failed", UNIT], check=False)


def test_a_hung_daemon_is_restarted_by_the_watchdog(guest: nspawn.Machine) -> None:
    """The keep-alives come from the event loop: a healthy daemon outlives several WatchdogSec=
    periods, a frozen one (SIGSTOP) is killed and restarted, serving the cached set again."""
    guest.write(f"/etc/systemd/system/{UNIT}.d/watchdog.conf", "[Service]\nWatchdogSec=2s\n")
    guest.run(["systemctl", "daemon-reload"])
    try:
        guest.run(["systemctl", "start", UNIT], timeout=120)
        first = wait_active(guest)
        deadline = time.monotonic() + 6  # three periods: no restart while it is healthy
        while time.monotonic() < deadline:
            assert guest.show(UNIT, "NRestarts")["NRestarts"] == first["NRestarts"]
            time.sleep(0.5)
        guest.run(["kill", "-STOP", first["MainPID"]])
        h.wait_for(lambda: guest.show(UNIT, "NRestarts")["NRestarts"] != first["NRestarts"],
                   timeout=30, what="the watchdog to restart the frozen daemon")
        again = wait_active(guest)
        assert again["MainPID"] != first["MainPID"]
        journal = guest.run(["journalctl", "-u", UNIT, "-o", "cat", "--no-pager"]).stdout
        assert "Watchdog timeout" in journal
        assert imds_credentials(guest)["Code"] == "Success"
    finally:
        guest.run(["rm", "-f", f"/etc/systemd/system/{UNIT}.d/watchdog.conf"])
        guest.run(["systemctl", "daemon-reload"])
        guest.run(["systemctl", "stop", UNIT], timeout=60, check=False)
