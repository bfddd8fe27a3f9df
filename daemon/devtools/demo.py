"""`credential-sidecar demo`: the whole path on one machine, nothing real involved.

A throwaway CA and client certificate, the built-in Roles Anywhere emulator, and
the daemon serving IMDS on loopback: what a user needs to see it work in a minute.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Literal

import structlog
from cryptography.hazmat.primitives.serialization import Encoding

from credential_sidecar import logs
from credential_sidecar.config.load import parse_config
from credential_sidecar.devtools import pki, softhsm
from credential_sidecar.devtools.emulator.server import Emulator, Profile
from credential_sidecar.files import atomic_write
from credential_sidecar.server import Daemon

ACCOUNT = "111122223333"
REGION = "us-east-1"
TRUST_ANCHOR = f"arn:aws:rolesanywhere:{REGION}:{ACCOUNT}:trust-anchor/demo-anchor"
PROFILE = f"arn:aws:rolesanywhere:{REGION}:{ACCOUNT}:profile/demo-profile"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/demo"
KeyStore = Literal["file", "softhsm"]
log = structlog.get_logger("credential_sidecar.demo")


def demo_config(workdir: Path, emulator_url: str,
                private_key: str | None = None) -> dict[str, object]:
    return {
        "daemon": {"state_dir": str(workdir / "state"), "log_format": "console"},
        "imds": [{"listen": "127.0.0.1:0", "connection": "demo"}],
        "health": {"listen": "127.0.0.1:0"},
        "connections": [
            {
                "name": "demo",
                "type": "roles-anywhere",
                "certificate": str(workdir / "demo.crt"),
                "private_key": private_key or str(workdir / "demo.key"),
                "trust_anchor_arn": TRUST_ANCHOR,
                "profile_arn": PROFILE,
                "role_arn": ROLE,
                "session_name": "demo-host",
                "duration_seconds": 3600,
                "endpoint": emulator_url,
                "notes": "made by credential-sidecar demo",
            }
        ],
    }


async def _client_key(workdir: Path, ca: pki.Issued, key_type: pki.KeyType,
                      key_store: KeyStore) -> str | None:
    """Write the client certificate (and key file); the pkcs11: URI when the key is on a token."""
    if key_store == "softhsm":
        token, public = await asyncio.to_thread(softhsm.make_token, workdir)
        cert = pki.certificate("demo-host", public, ca)
        atomic_write(workdir / "demo.crt", cert.public_bytes(Encoding.PEM), mode=0o644)
        log.info("demo key generated on a pkcs11 token (non-extractable)", token_label=token.token,
                 object=token.object, softhsm2_conf=str(token.conf))
        return f"{token.uri()}?pin-source=file:{token.pin_file}"
    leaf = await asyncio.to_thread(pki.make_leaf, ca, "demo-host", key_type)
    atomic_write(workdir / "demo.crt", leaf.cert_pem(), mode=0o644)
    pki.write_private(workdir / "demo.key", leaf.key_pem())
    return None


async def demo(key_type: pki.KeyType = "p256", key_store: KeyStore = "file") -> int:
    logs.configure("console", "info")
    if key_store == "softhsm" and (reason := softhsm.missing()):
        print(f"demo --key-store softhsm: {reason}", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="credential-sidecar-demo-"))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    ca = await asyncio.to_thread(pki.make_ca, "credential-sidecar demo CA", key_type)
    private_key = await _client_key(workdir, ca, key_type, key_store)
    emulator = Emulator(trust_anchors={TRUST_ANCHOR: [ca.certificate]},
                        profiles={PROFILE: Profile(role_arns=(ROLE,))})
    daemon: Daemon | None = None
    try:
        emulator_url = await emulator.start("127.0.0.1", 0)
        config = parse_config(demo_config(workdir, emulator_url, private_key),
                              source="<demo>")
        daemon = Daemon(config)
        await daemon.start()
        assert daemon.manager is not None
        await asyncio.wait_for(daemon.manager.wait_ready(), timeout=30)
        imds, health = daemon.url("imds:demo"), daemon.url("health")
        print(
            f"""
credential-sidecar demo is running (Ctrl-C to stop)
  Roles Anywhere emulator: {emulator_url}
  IMDS endpoint:           {imds}
  status:                  {health}status

In another shell:
export AWS_EC2_METADATA_SERVICE_ENDPOINT={imds}
export AWS_EC2_METADATA_V1_DISABLED=true
unset AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN AWS_PROFILE

Then try:
  aws configure list
  python3 -c "import boto3; print(boto3.Session().get_credentials().access_key)"
  curl -s {health}status
""",
            flush=True,
        )
        await stop.wait()
    except TimeoutError:
        print("demo: the daemon did not become ready in 30 s", file=sys.stderr)
        return 1
    finally:
        if daemon is not None:
            await daemon.stop()
        await emulator.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0
