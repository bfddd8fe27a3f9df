"""The credentials-file door: a real daemon writes AWS_SHARED_CREDENTIALS_FILE for a throwaway
user, whose clients (botocore, the AWS CLI, rclone) read it as that user; the file is replaced
whole across renewals, a full disk (a real tmpfs) and kill -9.

Needs root (useradd, chown, mount), as CI has.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.helpers import harness as h
from tests.helpers.time_machine import TimeMachine
from tests.helpers.users import User, throwaway_user

MARKER = "# managed by credential-sidecar; do not edit"
CLI_V2 = "/usr/bin/aws"
MOTO = Path(sys.executable).with_name("moto_server")
# The test venv's boto3, run by the system python 3.11: the venv's interpreter lives under
# root's home, which the throwaway user cannot enter; its site-packages it can read.
SITE_PACKAGES = str(Path(boto3.__file__).parents[1])
BOTO3_SNIPPET = """
import json, boto3
session = boto3.Session(profile_name="{profile}")
creds = session.get_credentials().get_frozen_credentials()
print(json.dumps({{"access_key": creds.access_key, "secret_key": creds.secret_key,
                  "token": creds.token, "method": session.get_credentials().method,
                  "region": session.region_name}}))
"""


@pytest.fixture
def app_user() -> Iterator[User]:
    with throwaway_user() as user:
        yield user


@pytest.fixture
def small_fs() -> Iterator[Path]:
    """A 1 MiB tmpfs any user can traverse, owned by root, mode 0755: the file's directory."""
    if os.geteuid() != 0:
        pytest.fail("needs root (mount, chown): CI runs as root")
    where = Path(tempfile.mkdtemp(prefix="cs-credfile-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(where)],
                   check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=False)
        where.rmdir()


def run_as(user: User, args: list[str], env: dict[str, str],
           timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """A command (not only python) as ``user``: its uid and primary gid, no other groups."""
    prefix = ["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--clear-groups", "--"]
    return subprocess.run(prefix + args, capture_output=True, text=True, env=env,
                          timeout=timeout, check=False, cwd="/")


def read_profiles(path: Path) -> dict[str, dict[str, str]]:
    """The file as an SDK parses it; asserts it is whole (marker first, every key present)."""
    text = path.read_text()
    assert text.startswith(MARKER + "\n"), "not the daemon's file"
    parser = configparser.ConfigParser()
    parser.read_string(text)
    out = {}
    for section in parser.sections():
        values = dict(parser[section])
        assert {"aws_access_key_id", "aws_secret_access_key", "aws_session_token"} <= set(values)
        out[section] = values
    return out


def served(daemon: h.Daemon) -> dict[str, str]:
    """Connection name -> the access key id the daemon serves now (/status)."""
    code, _, body = h.http("GET", daemon.url("health") + "status")
    assert code == 200
    return {row["name"]: row["access_key_id"] for row in json.loads(body)["connections"]}


def readyz(daemon: h.Daemon) -> tuple[int, dict[str, Any]]:
    code, _, body = h.http("GET", daemon.url("health") + "readyz")
    return code, json.loads(body)


def user_env(path: Path, profile: str) -> dict[str, str]:
    env = h.clean_env(AWS_SHARED_CREDENTIALS_FILE=str(path), AWS_CONFIG_FILE="/dev/null",
                      AWS_PROFILE=profile, AWS_EC2_METADATA_DISABLED="true", HOME="/nonexistent",
                      AWS_DEFAULT_REGION="us-east-1")
    for key in ("AWS_CA_BUNDLE", "HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy"):
        env.pop(key, None)
    return env


def test_clients_read_the_file_as_its_owner(tmp_path: Path, app_user: User,
                                            small_fs: Path) -> None:
    material = h.make_pki(tmp_path / "pki")
    path = small_fs / "app.credentials"
    files = [
        {"path": str(path), "connection": "app", "owner": app_user.name},
        {"path": str(path), "connection": "other", "profile": "other", "owner": app_user.name,
         "region": "eu-west-1"},
    ]
    port = h.free_port()
    moto_log = (tmp_path / "moto.log").open("wb")
    moto = subprocess.Popen([str(MOTO), "-H", "127.0.0.1", "-p", str(port)], stdout=moto_log,
                            stderr=subprocess.STDOUT, env=h.clean_env())
    try:
        with h.emulator(tmp_path, [material.ca_file]) as emu, h.daemon(
            tmp_path, [h.connection("app", material, emu.url),
                       h.connection("other", material, emu.url, session_name="other-e2e")],
            extra={"credentials_file": files},
        ) as daemon:
            keys = served(daemon)
            h.wait_for(lambda: path.exists() and {
                p: v["aws_access_key_id"] for p, v in read_profiles(path).items()
            } == {"default": keys["app"], "other": keys["other"]}, what="the file")
            st = os.stat(path)
            assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (
                app_user.uid, app_user.gid, 0o600)
            profiles = read_profiles(path)
            assert profiles["other"]["region"] == "eu-west-1"
            assert "expiration" not in profiles["default"]
            issued = {c["accessKeyId"]: c for c in emu.stats()["issued"]}

            # boto3 / botocore, as the owning user
            for profile, conn in (("default", "app"), ("other", "other")):
                env = user_env(path, profile) | {"PYTHONPATH": SITE_PACKAGES}
                env.pop("AWS_DEFAULT_REGION")
                result = run_as(app_user, ["/usr/bin/python3", "-c",
                                       BOTO3_SNIPPET.format(profile=profile)], env)
                assert result.returncode == 0, result.stderr
                got = json.loads(result.stdout)
                assert got["method"] == "shared-credentials-file"
                assert got["region"] == ("eu-west-1" if profile == "other" else None)
                assert got["access_key"] == keys[conn]
                assert got["secret_key"] == issued[keys[conn]]["secretAccessKey"]
                assert got["token"] == issued[keys[conn]]["sessionToken"]

            # the AWS CLI v2
            result = run_as(app_user, [CLI_V2, "configure", "export-credentials", "--profile",
                                   "other", "--format", "process"], user_env(path, "other"))
            assert result.returncode == 0, result.stderr
            exported = json.loads(result.stdout)
            assert exported["AccessKeyId"] == keys["other"]
            assert exported["SessionToken"] == issued[keys["other"]]["sessionToken"]
            result = run_as(app_user, [CLI_V2, "configure", "list", "--profile", "default"],
                                  user_env(path, "default"))
            assert result.returncode == 0 and keys["app"][-4:] in result.stdout, result.stdout

            # rclone (Go SDK v1's shared-credentials provider through env_auth), against moto
            h.wait_for(lambda: h.http("GET", f"http://127.0.0.1:{port}/moto-api/")[0] == 200,
                       what="moto_server")
            rclone = shutil.which("rclone")
            assert rclone, "rclone is missing: .ci/run installs Debian's rclone"
            env = user_env(path, "other") | {"RCLONE_CONFIG": "/dev/null"}
            result = run_as(app_user,
                [rclone, "lsd", ":s3:", "--s3-provider", "AWS", "--s3-env-auth",
                 "--s3-region", "us-east-1", "--s3-endpoint", f"http://127.0.0.1:{port}",
                 "--dump", "headers,auth", "--retries", "1", "--low-level-retries", "1"], env)
            assert result.returncode == 0, result.stderr[-2000:]
            key = re.search(r"Credential=(A[A-Z0-9]{19})/", result.stderr)
            token = re.search(r"X-Amz-Security-Token: (\S+)", result.stderr)
            assert key and token, "no signed request in rclone's dump"
            assert key.group(1) == keys["other"]
            assert token.group(1) == issued[keys["other"]]["sessionToken"]

            # nobody else: not another user, not through the directory
            with throwaway_user() as stranger:
                result = run_as(stranger, ["cat", str(path)], h.clean_env())
                assert result.returncode != 0 and "Permission denied" in result.stderr
    finally:
        moto.terminate()
        moto.wait(15)
        moto_log.close()


class Reader(threading.Thread):
    """Reads the file as fast as it can: every read must be a whole file (old or new)."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.reads = 0
        self.error: BaseException | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            while not self._halt.is_set():
                read_profiles(self.path)
                self.reads += 1
        except BaseException as exc:  # re-raised in the test by stop()
            self.error = exc

    def stop(self) -> None:
        self._halt.set()
        self.join(10)
        assert not self.is_alive()
        if self.error is not None:
            raise self.error
        assert self.reads > 0


def test_renewals_full_disk_and_kill(tmp_path: Path, app_user: User, small_fs: Path) -> None:
    clock = TimeMachine(tmp_path / "clock-offset")
    env = h.clean_env(CREDENTIAL_SIDECAR_TEST_CLOCK_FILE=str(clock.path))
    material = h.make_pki(tmp_path / "pki")
    path = small_fs / "app.credentials"
    files = [{"path": str(path), "connection": "app", "owner": app_user.uid}]
    extra = {"credentials_file": files, "control": {"socket": str(tmp_path / "c.sock")}}
    with h.emulator(tmp_path, [material.ca_file], env=env) as emu:
        conns = [h.connection("app", material, emu.url)]
        with h.daemon(tmp_path, conns, env=env, extra=extra,
                      expect_exit=None) as daemon:  # killed with SIGKILL below
            def current() -> str | None:
                key = served(daemon)["app"]
                on_disk = read_profiles(path)["default"]["aws_access_key_id"] \
                    if path.exists() else None
                return key if on_disk == key else None

            first = h.wait_for(current, what="the first set in the file")
            reader = Reader(path)
            reader.start()
            try:
                # Renewals replace the file whole, never half-written
                for _ in range(2):
                    before = served(daemon)["app"]
                    clock.advance(1850)  # renewal falls due 1440..1800 s after issue
                    h.wait_for(lambda b=before: (k := current()) and k != b,
                               what="a renewal written to the file")
            finally:
                reader.stop()
            assert served(daemon)["app"] != first

            # A full disk: the old file stays whole, /readyz names it; freed, it is written
            filler = small_fs / "filler"
            fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                while True:
                    os.write(fd, b"\0" * 4096)
            except OSError:
                pass
            finally:
                os.close(fd)
            old = path.read_bytes()
            before = served(daemon)["app"]
            clock.advance(1850)
            h.wait_for(lambda: served(daemon)["app"] != before, what="a renewal")
            _, body = h.wait_for(lambda: (r := readyz(daemon))[0] == 503 and r,
                                 what="/readyz naming the file")
            assert f"credentials_file:{path}" in body["not_ready"], body
            shown = h.run_cli(["status", "--config", str(daemon.config_path)])
            assert f"not ready: credentials_file:{path}: not written: No space left" in \
                shown.stdout, shown.stdout + shown.stderr
            _, _, raw = h.http("GET", daemon.url("health") + "status")
            assert json.loads(raw)["connections"][0]["credentials_files"] == [str(path)]
            assert path.read_bytes() == old
            assert sorted(p.name for p in small_fs.iterdir()) == ["app.credentials", "filler"]
            filler.unlink()
            clock.advance(30)
            h.wait_for(lambda: current() == served(daemon)["app"] and readyz(daemon)[0] == 200,
                       what="the file written after the retry")
            assert path.read_bytes() != old

            # kill -9: the file is whole; the next daemon rewrites it from its cache
            daemon.process.proc.send_signal(signal.SIGKILL)
            daemon.process.proc.wait(10)
            survivor = read_profiles(path)["default"]["aws_access_key_id"]
            assert survivor == served_key_from_log(daemon)
            mtime = os.stat(path).st_mtime_ns
        with h.daemon(tmp_path, conns, env=env, extra=extra,
                      log_name="daemon2.log") as again:
            h.wait_for(lambda: os.stat(path).st_mtime_ns != mtime, what="the file rewritten")
            assert read_profiles(path)["default"]["aws_access_key_id"] == served(again)["app"]
            assert any(e.get("event") == "credentials restored from cache" for e in again.events())
            assert os.stat(path).st_uid == app_user.uid


def served_key_from_log(daemon: h.Daemon) -> str:
    written = [e for e in daemon.events() if e.get("event") == "credentials file written"]
    return str(written[-1]["access_key_id"])


def test_a_file_it_did_not_write_is_never_overwritten(tmp_path: Path, small_fs: Path) -> None:
    material = h.make_pki(tmp_path / "pki")
    path = small_fs / "mine.credentials"
    path.write_text("[default]\naws_access_key_id = AKIAUSERSOWNKEY00000\n")
    files = [{"path": str(path), "connection": "app"}]
    config = h.daemon_config(tmp_path, [h.connection("app", material, "http://127.0.0.1:9")],
                             extra={"credentials_file": files})
    config_path = tmp_path / "config.toml"
    config_path.write_text(h.to_toml(config))
    proc = h.start(["run", "--config", str(config_path)], tmp_path / "refused.log")
    assert proc.proc.wait(30) == 1
    assert "did not write" in proc.log.read_text() and str(path) in proc.log.read_text()
    assert path.read_text().startswith("[default]")
    # nor in a directory others may write
    path.unlink()
    small_fs.chmod(0o777)
    proc = h.start(["run", "--config", str(config_path)], tmp_path / "refused2.log")
    assert proc.proc.wait(30) == 1
    assert "group or others may write" in proc.log.read_text()
    assert not path.exists()
