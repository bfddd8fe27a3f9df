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

from credential_sidecar import logs
from credential_sidecar.config.load import parse_config
from credential_sidecar.devtools import pki
from credential_sidecar.devtools.emulator.server import Emulator, Profile
from credential_sidecar.files import atomic_write
from credential_sidecar.server import Daemon

ACCOUNT = "111122223333"
REGION = "us-east-1"
TRUST_ANCHOR = f"arn:aws:rolesanywhere:{REGION}:{ACCOUNT}:trust-anchor/demo-anchor"
PROFILE = f"arn:aws:rolesanywhere:{REGION}:{ACCOUNT}:profile/demo-profile"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/demo"


def demo_config(workdir: Path, emulator_url: str) -> dict[str, object]:
    return {
        "daemon": {"state_dir": str(workdir / "state"), "log_format": "console"},
        "imds": [{"listen": "127.0.0.1:0", "connection": "demo"}],
        "health": {"listen": "127.0.0.1:0"},
        "connections": [
            {
                "name": "demo",
                "type": "roles-anywhere",
                "certificate": str(workdir / "demo.crt"),
                "private_key": str(workdir / "demo.key"),
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


async def demo(key_type: pki.KeyType = "p256") -> int:
    logs.configure("console", "info")
    workdir = Path(tempfile.mkdtemp(prefix="credential-sidecar-demo-"))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    ca = await asyncio.to_thread(pki.make_ca, "credential-sidecar demo CA", key_type)
    leaf = await asyncio.to_thread(pki.make_leaf, ca, "demo-host", key_type)
    atomic_write(workdir / "demo.crt", leaf.cert_pem(), mode=0o644)
    pki.write_private(workdir / "demo.key", leaf.key_pem())
    emulator = Emulator(trust_anchors={TRUST_ANCHOR: [ca.certificate]},
                        profiles={PROFILE: Profile(role_arns=(ROLE,))})
    daemon: Daemon | None = None
    try:
        emulator_url = await emulator.start("127.0.0.1", 0)
        config = parse_config(demo_config(workdir, emulator_url), source="<demo>")
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
