"""One local user holding thousands of idle connections costs the others nothing: the daemon runs
with 1 024 descriptors, a throwaway user opens 5 000 connections to every door, and another user
is still served by IMDS, the container door and the control socket.

Needs root (other users, a lowered descriptor limit), as CI runs it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import harness as h
from tests.helpers import users

# Opens argv[2] connections spread over the targets in argv[1] and holds them until stdin ends.
FLOOD = """
import json, resource, socket, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (12000, 12000))
targets, count = json.loads(sys.argv[1]), int(sys.argv[2])
held, failed = [], 0
for i in range(count):
    target = targets[i % len(targets)]
    s = socket.socket(socket.AF_UNIX if isinstance(target, str) else socket.AF_INET)
    s.settimeout(10)
    try:
        s.connect(target if isinstance(target, str) else tuple(target))
        held.append(s)
    except OSError:
        s.close()
        failed += 1
print(json.dumps({"held": len(held), "failed": failed}), flush=True)
sys.stdin.read()
"""

# What an allowed app does, each door once. argv: imds url, container url, token, socket path.
SERVED = """
import json, socket, sys, urllib.request
imds, container, token, path = sys.argv[1:]
def get(url, headers, method="GET"):
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers, method=method),
                                timeout=10) as r:
        return r.read().decode()
t = get(imds + "latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "60"}, "PUT")
role = get(imds + "latest/meta-data/iam/security-credentials/", {"X-aws-ec2-metadata-token": t})
doc = json.loads(get(imds + "latest/meta-data/iam/security-credentials/" + role,
                     {"X-aws-ec2-metadata-token": t}))
box = json.loads(get(container, {"Authorization": token}))
s = socket.socket(socket.AF_UNIX)
s.settimeout(10)
s.connect(path)
s.sendall(b'{"op": "credentials", "name": "app"}\\n')
answer = json.loads(s.makefile().readline())
print(json.dumps([doc["Code"], bool(box["AccessKeyId"]), answer["ok"]]))
"""


def _rejected(daemon: h.Daemon) -> float:
    code, _, body = h.http("GET", daemon.url("health") + "metrics")
    assert code == 200
    return sum(s.value for f in text_string_to_metric_families(body.decode())
               for s in f.samples if s.name == "credential_sidecar_connections_rejected_total")


def test_one_user_flooding_every_door_does_not_starve_another(tmp_path: Path) -> None:
    users.need_root()
    material = h.make_pki(tmp_path / "pki")
    run = Path(tempfile.mkdtemp(prefix="csx-bounded-"))
    run.chmod(0o711)
    sock = run / "control.sock"
    try:
        with users.throwaway_group() as (group, gid), \
                users.throwaway_user(groups=(group,)) as flooder, \
                users.throwaway_user(groups=(group,)) as app, \
                h.emulator(tmp_path, [material.ca_file]) as emu:
            conn = h.connection("app", material, emu.url, allowed_uids=[app.uid],
                                container_token_file=str(run / "app.token"))
            extra = {"container": {"listen": "127.0.0.1:0"}, "control": {"socket": str(sock)}}
            with h.daemon(tmp_path, [conn], extra=extra, log_level="info",
                          prefix=["prlimit", "--nofile=1024:1024"]) as daemon:
                os.chown(sock, -1, gid)  # as the unit's Group= would: both users may connect
                limits = Path(f"/proc/{daemon.process.proc.pid}/limits").read_text()
                assert any(line.startswith("Max open files") and line.split()[3] == "1024"
                           for line in limits.splitlines())
                targets = [["127.0.0.1", int(daemon.url(d).rsplit(":", 1)[1].strip("/"))]
                           for d in ("imds:app", "container", "health")] + [str(sock)]
                flood = users.popen_as(flooder, FLOOD, json.dumps(targets), "5000")
                try:
                    assert flood.stdout is not None
                    opened = json.loads(flood.stdout.readline())
                    assert opened["held"] + opened["failed"] == 5000
                    # The flood is over and still held: another user is served by every door.
                    served = users.as_user(
                        app, SERVED, daemon.url("imds:app"),
                        daemon.url("container") + "v1/credentials/app",
                        (run / "app.token").read_text(), str(sock), keep_groups=True)
                    assert served.returncode == 0, served.stderr
                    assert json.loads(served.stdout) == ["Success", True, True]
                    # 3 750 TCP connections, 32 per door may stay: the rest were closed.
                    assert _rejected(daemon) >= 3000  # idle ones close after 5 s: a few more
                finally:
                    flood.communicate(timeout=30)
                lines = daemon.process.lines()
        assert all(json.loads(line) for line in lines), "every line is one JSON object"
        warnings = [line for line in lines if "too many" in line]
        assert 1 <= len(warnings) <= 8, "one warning per door, not one per connection"
        assert not any("out of system resource" in line for line in lines)
    finally:
        shutil.rmtree(run, ignore_errors=True)
