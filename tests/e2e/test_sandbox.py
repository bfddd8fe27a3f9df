"""The unit's sandbox must not break the daemon. MemoryDenyWriteExecute=yes is the setting an
interpreter can trip over (JITs, ctypes/cffi callbacks), so the daemon runs here under the
kernel's own equivalent, PR_SET_MDWE, and must renew and serve as usual."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import harness as h

MDWE = [sys.executable, str(Path(__file__).resolve().parent.parent / "helpers" / "mdwe.py")]
WX_MAP = ("import mmap; mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE"
          " | mmap.PROT_EXEC)")


def test_the_daemon_runs_with_memory_deny_write_execute(tmp_path: Path) -> None:
    probe = subprocess.run([*MDWE, sys.executable, "-c", WX_MAP], capture_output=True,
                           text=True, timeout=60)
    if probe.returncode == 3:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux 6.3+)")
    assert "PermissionError" in probe.stderr, "the restriction is in force for the child"

    material = h.make_pki(tmp_path / "pki", "rsa")
    with h.emulator(tmp_path, [material.ca_file]) as emu:
        conn = h.connection("reports", material, emu.url)
        with h.daemon(tmp_path, [conn], prefix=MDWE) as d:
            base = d.url("imds:reports")
            status, _, token = h.http("PUT", base + "latest/api/token",
                                      {"X-aws-ec2-metadata-token-ttl-seconds": "60"})
            assert status == 200
            status, _, body = h.http(
                "GET", base + "latest/meta-data/iam/security-credentials/reports",
                {"X-aws-ec2-metadata-token": token.decode()})
            assert status == 200, body
            served = json.loads(body)
            issued = [c["accessKeyId"] for c in emu.stats()["issued"]]
            assert served["Code"] == "Success" and served["AccessKeyId"] in issued
