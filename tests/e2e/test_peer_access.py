"""allowed_uids and allowed_gids hold on the TCP doors too: IMDS and container, against the daemon
running as a process and clients running as real other users (throwaway accounts, setpriv).

Needs root, as CI runs it.
"""

from __future__ import annotations

import json
import shutil
import signal
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import harness as h
from tests.helpers import users

# What an SDK does against IMDS, as one user: token PUT, role list, the document. Prints the
# three statuses and the last body.
IMDS = """
import json, sys, urllib.request, urllib.error
base = sys.argv[1]
def call(method, path, headers):
    request = urllib.request.Request(base + path, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
s1, token = call("PUT", "latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "60"})
h = {"X-aws-ec2-metadata-token": token} if s1 == 200 else {}
s2, role = call("GET", "latest/meta-data/iam/security-credentials/", h)
creds = "latest/meta-data/iam/security-credentials/" + (role if s2 == 200 else "x")
s3, body = call("GET", creds, h)
print(json.dumps([s1, s2, s3, body]))
"""


@dataclass
class Stack:
    daemon: h.Daemon
    tmp: Path
    alice: users.User  # in app's allowed_uids
    bob: users.User  # a member of team's allowed_gids
    carol: users.User  # in nothing
    tokens: Path  # a directory every user may traverse, holding the token files

    def imds(self, who: users.User, name: str) -> tuple[list[int], str]:
        out = users.as_user(who, IMDS, self.daemon.url(f"imds:{name}"))
        assert out.returncode == 0, out.stderr
        *codes, body = json.loads(out.stdout)
        return codes, body

    def container(self, who: users.User, name: str) -> tuple[int, str]:
        token = (self.tokens / f"{name}.token").read_text()
        return users.fetch_as(who, self.daemon.url("container") + f"v1/credentials/{name}",
                              {"Authorization": token})

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        code, _, body = h.http("GET", self.daemon.url("health") + "metrics")
        assert code == 200
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(body.decode()) for s in f.samples}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    users.need_root()
    tmp = tmp_path_factory.mktemp("peers")
    material = h.make_pki(tmp / "pki")
    tokens = Path(tempfile.mkdtemp(prefix="csx-tokens-"))
    tokens.chmod(0o711)
    with users.throwaway_group() as (group, gid), \
            users.throwaway_user() as alice, \
            users.throwaway_user(groups=(group,)) as bob, \
            users.throwaway_user() as carol, \
            h.emulator(tmp, [material.ca_file]) as emu:
        conns = [
            h.connection(name, material, emu.url,
                         container_token_file=str(tokens / f"{name}.token"), **grant)
            for name, grant in (("app", {"allowed_uids": [alice.uid]}),
                                ("team", {"allowed_gids": [gid]}), ("open", {}))
        ]
        imds = [{"listen": "127.0.0.1:0", "connection": name} for name in ("app", "team", "open")]
        extra = {"container": {"listen": "127.0.0.1:0"}}
        with h.daemon(tmp, conns, imds=imds, extra=extra) as daemon:
            yield Stack(daemon, tmp, alice, bob, carol, tokens)
    shutil.rmtree(tokens, ignore_errors=True)


def test_imds_serves_only_the_users_a_connection_names(stack: Stack) -> None:
    codes, body = stack.imds(stack.alice, "app")
    assert codes == [200, 200, 200] and json.loads(body)["Code"] == "Success"
    codes, body = stack.imds(stack.bob, "team")  # by group membership
    assert codes == [200, 200, 200]
    for who, name in ((stack.carol, "app"), (stack.bob, "app"), (stack.carol, "team")):
        codes, body = stack.imds(who, name)
        assert codes == [403, 403, 403]
        assert body == json.dumps({"Code": "Forbidden",
                                   "Message": f"uid {who.uid} may not read connection {name}"})
    # A connection that names nobody is served to every local user, as before.
    assert stack.imds(stack.carol, "open")[0] == [200, 200, 200]
    # Root is always served (as on the control socket).
    assert h.imds_read(stack.daemon.url("imds:app"))[1]["Code"] == "Success"


def test_container_serves_only_the_users_a_connection_names(stack: Stack) -> None:
    status, body = stack.container(stack.alice, "app")
    assert status == 200 and json.loads(body)["AccessKeyId"]
    assert stack.container(stack.bob, "team")[0] == 200
    status, body = stack.container(stack.carol, "app")  # the right token, the wrong user
    assert status == 403
    assert json.loads(body) == {"Code": "Forbidden",
                                "Message": f"uid {stack.carol.uid} may not read connection app"}
    assert stack.container(stack.carol, "open")[0] == 200


def test_every_hand_out_is_audited_counted_and_recorded(stack: Stack) -> None:
    before = stack.metrics()
    stack.imds(stack.alice, "app")
    stack.imds(stack.carol, "app")
    stack.container(stack.alice, "app")
    stack.container(stack.alice, "app")  # the same set again: counted, not logged again
    after = stack.metrics()

    def delta(door: str, result: str) -> float:
        key = ("credential_sidecar_handouts_total",
               tuple(sorted({"door": door, "connection": "app", "result": result}.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("imds:app", "served") == 1
    assert delta("imds:app", "refused") == 3  # each of the three requests
    assert delta("container", "served") == 2

    events = stack.daemon.events()
    served = [e for e in events if e.get("event") == "credentials handed out"
              and e.get("uid") == stack.alice.uid]
    assert {e["door"] for e in served} == {"imds:app", "container"}
    facts = [(e["door"], e["access_key_id"]) for e in served]
    assert len(facts) == len(set(facts)), "one line per set, user and door"
    for event in served:
        assert event["audit"] is True and event["connection"] == "app"
        assert event["access_key_id"].startswith("ASIA")
        assert set(event) <= {"event", "level", "timestamp", "audit", "door", "connection",
                              "uid", "access_key_id"}
    refused = [e for e in events if e.get("event") == "credentials refused"]
    assert any(e["uid"] == stack.carol.uid and e["door"] == "imds:app" for e in refused)

    code, _, body = h.http("GET", stack.daemon.url("health") + "status")
    assert code == 200
    row = next(r for r in json.loads(body)["connections"] if r["name"] == "app")
    used = {(u["door"], u["peer"]) for u in row["used_by"]}
    assert {("imds:app", f"uid:{stack.alice.uid}"),
            ("container", f"uid:{stack.alice.uid}")} <= used
    assert not any(peer == f"uid:{stack.carol.uid}" for _, peer in used)


READ = """
import sys
try:
    print(open(sys.argv[1]).read())
except PermissionError:
    print("EACCES")
"""


def test_each_user_reads_only_their_connections_token_file(stack: Stack) -> None:
    def read(who: users.User, name: str, keep_groups: bool = False) -> str:
        out = users.as_user(who, READ, str(stack.tokens / f"{name}.token"),
                            keep_groups=keep_groups)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    app = (stack.tokens / "app.token").read_text()
    team = (stack.tokens / "team.token").read_text()
    assert read(stack.alice, "app") == app
    assert read(stack.bob, "team", keep_groups=True) == team  # a process in the group
    assert read(stack.bob, "team") == "EACCES"  # files go by the process's groups
    for who, name in ((stack.carol, "app"), (stack.bob, "app"), (stack.alice, "team"),
                      (stack.carol, "open")):
        assert read(who, name) == "EACCES", (who, name)


def test_a_reload_moves_access_to_whom_allowed_uids_now_name(tmp_path: Path) -> None:
    users.need_root()
    material = h.make_pki(tmp_path / "pki")
    tokens = Path(tempfile.mkdtemp(prefix="csx-reload-tokens-"))
    tokens.chmod(0o711)
    token_file = tokens / "app.token"
    try:
        with users.throwaway_user() as before, users.throwaway_user() as after, \
                h.emulator(tmp_path, [material.ca_file]) as emu:
            def conns(uid: int) -> list[dict[str, object]]:
                return [h.connection("app", material, emu.url, allowed_uids=[uid],
                                     container_token_file=str(token_file))]

            extra = {"container": {"listen": "127.0.0.1:0"}}
            with h.daemon(tmp_path, conns(before.uid), extra=extra) as daemon:
                imds = daemon.url("imds:app")

                def read(who: users.User) -> str:
                    out = users.as_user(who, READ, str(token_file))
                    assert out.returncode == 0, out.stderr
                    return out.stdout.strip()

                token = token_file.read_text()
                assert read(before) == token and read(after) == "EACCES"
                assert users.as_user(before, IMDS, imds).stdout.startswith("[200, 200, 200")
                config = h.daemon_config(tmp_path, conns(after.uid), extra=extra)
                daemon.config_path.write_text(h.to_toml(config))
                daemon.process.proc.send_signal(signal.SIGHUP)
                h.wait_for(lambda: any(e.get("event") == "reloaded" for e in daemon.events()),
                           what="the reload")
                # The same token, now readable by the new uid only; the doors follow too.
                assert read(after) == token and read(before) == "EACCES"
                assert users.as_user(after, IMDS, imds).stdout.startswith("[200, 200, 200")
                assert users.as_user(before, IMDS, imds).stdout.startswith("[403, 403, 403")
                status, _ = users.fetch_as(before, daemon.url("container") + "v1/credentials/app",
                                           {"Authorization": token})
                assert status == 403
    finally:
        shutil.rmtree(tokens, ignore_errors=True)
