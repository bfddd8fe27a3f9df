"""A whole renewal and request cycle; no secret may appear in any log line, nor in what the
daemon tells operators: /status, /metrics, the control socket's status, `status --json`."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from credential_sidecar.client import ask
from credential_sidecar.devtools import pki
from tests.helpers import harness as h
from tests.helpers.sdk import BOTO3_SNIPPET, imds_env

CANARY_PASSPHRASE = "canary-passphrase-5f1d2c9e7b"


def test_no_secret_reaches_the_logs(tmp_path: Path) -> None:
    material = h.make_pki(tmp_path / "pki")
    # An encrypted key whose passphrase is our canary.
    pki.write_private(material.key, material.leaf.key_pem(CANARY_PASSPHRASE.encode()))
    passphrase = pki.write_private(tmp_path / "pki" / "pass", CANARY_PASSPHRASE.encode() + b"\n")
    key_pem = material.leaf.key_pem().decode()
    with h.emulator(tmp_path, [material.ca_file]) as emu:
        # Fail once first, so the failure path logs too.
        emu.faults(fail_status=500, fail_count=1)
        conn = h.connection("app", material, emu.url, private_key_passphrase_file=str(passphrase))
        sock_dir = Path(tempfile.mkdtemp(prefix="cs-canary-"))
        extra = {"container": {"listen": "127.0.0.1:0"},
                 "control": {"socket": str(sock_dir / "control.sock")}}
        with h.daemon(tmp_path, [conn], log_level="debug", extra=extra) as daemon:
            out = subprocess.run([sys.executable, "-c", BOTO3_SNIPPET], capture_output=True,
                                 text=True, env=imds_env(daemon.url("imds:app"), tmp_path),
                                 timeout=60, check=True)
            served = json.loads(out.stdout)
            # Every door once, a refused container request too, then everything operators see.
            container_token = (tmp_path / "state" / "tokens" / "app.token").read_text()
            creds_url = daemon.url("container") + "v1/credentials/app"
            assert h.http("GET", creds_url, {"Authorization": container_token})[0] == 200
            assert h.http("GET", creds_url, {"Authorization": container_token[::-1]})[0] == 403
            process = subprocess.run([*h.CLI, "credential-process", "app", "--socket",
                                      str(sock_dir / "control.sock")], capture_output=True,
                                     text=True, timeout=30, check=True)
            assert json.loads(process.stdout)["AccessKeyId"] == served["access_key"]
            # Malformed requests carrying the registered token, on every HTTP door.
            for door in ("container", "imds:app", "health"):
                for raw in _malformed(container_token):
                    _send_raw(daemon.url(door), raw)
            status, _, body = h.http("GET", daemon.url("health") + "status")
            assert status == 200
            status, _, metrics = h.http("GET", daemon.url("health") + "metrics")
            assert status == 200 and b"credential_sidecar_requests_total" in metrics
            control_status = json.dumps(ask(sock_dir / "control.sock", {"op": "status"}))
            assert '"ok": true' in control_status
            cli_status = subprocess.run([*h.CLI, "status", "--json", "--config",
                                         str(daemon.config_path)], capture_output=True,
                                        text=True, timeout=30, check=True).stdout
        shutil.rmtree(sock_dir, ignore_errors=True)
        log = daemon.process.log.read_text()
        issued = emu.stats()["issued"]
    assert issued and served["access_key"] in {c["accessKeyId"] for c in issued}
    assert "renewal failed" in log and "credentials renewed" in log
    assert "container request refused" in log
    secrets = [CANARY_PASSPHRASE, served["secret_key"], served["token"], container_token]
    for cred in issued:
        secrets += [cred["secretAccessKey"], cred["sessionToken"]]
    told = {"/status": body.decode(), "/metrics": metrics.decode(),
            "control status": control_status, "status --json": cli_status}
    for secret in secrets:
        assert secret not in log
        for where, text in told.items():
            assert secret not in text, f"a secret in {where}"
    for line in key_pem.splitlines()[1:-1]:
        assert line not in log
    events = [json.loads(line) for line in log.splitlines()]  # library lines: JSON too
    assert all(isinstance(event, dict) for event in events)
    quoted = [e for e in events if e.get("logger") == "aiohttp.server" and "exception" in e]
    assert quoted, "aiohttp's own error line, traceback and all, went through the redactor"
    assert "[REDACTED]" in quoted[0]["exception"]


def _malformed(token: str) -> list[bytes]:
    """Requests aiohttp cannot parse, each quoting the token where its error message would."""
    t = token.encode()
    return [
        t + b" " + t + b" HTTP/1.1\r\n\r\n",  # a garbage request line
        b"GET /" + t + b"\x00 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",  # a bad target
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + t * 400 + b"\r\n\r\n",  # oversized
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n" + t + b"\r\n\r\n",  # a header with no colon
        b"GET / HTTP/1.1\r\nAuthorization: " + t + b"\r\nContent-Length: x" + t
        + b"\r\n\r\n",  # a bad length
        b"\x16\x03\x01" + t + b"\r\n\r\n",  # TLS to a plain-http port
    ]


def _send_raw(url: str, raw: bytes) -> None:
    host, port = url.split("//", 1)[1].rstrip("/").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(raw)
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):
            pass
