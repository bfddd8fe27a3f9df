"""The daemon's memory stays its own: not dumpable, no core file.

The daemon's own process is checked through /proc (its limits) and its log (PR_GET_DUMPABLE read
back); what non-dumpable means is checked on a process of another user, where the kernel hands
its /proc files to root and refuses its own user a look at its memory.
"""

from __future__ import annotations

from pathlib import Path

import credential_sidecar.hardening
from tests.helpers import harness as h
from tests.helpers import users

# Loads hardening.py by path (the system python3 cannot see the venv), hardens, reports, waits.
HARDENED = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("hardening", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
print(json.dumps(module.harden()), flush=True)
sys.stdin.read()
"""


def _core_limit(pid: int) -> list[str]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max core file size"):
            return line.split()[4:6]
    raise AssertionError("no core limit line")


def test_the_daemon_is_not_dumpable_and_has_no_core_limit(tmp_path: Path) -> None:
    material = h.make_pki(tmp_path / "pki")
    with h.emulator(tmp_path, [material.ca_file]) as emu, \
            h.daemon(tmp_path, [h.connection("app", material, emu.url)]) as daemon:
        pid = daemon.process.proc.pid
        assert _core_limit(pid) == ["0", "0"]
        hardened = [e for e in daemon.events() if e.get("event") == "process hardened"]
        assert hardened and hardened[0]["dumpable"] == 0
        assert hardened[0]["core_limit"] == [0, 0]


def test_non_dumpable_means_its_own_user_cannot_read_its_memory() -> None:
    with users.throwaway_user() as user:
        child = users.popen_as(user, HARDENED, credential_sidecar.hardening.__file__)
        try:
            assert child.stdout is not None
            facts = child.stdout.readline()
            assert '"dumpable": 0' in facts and '"core_limit": [0, 0]' in facts
            proc = Path(f"/proc/{child.pid}")
            assert (proc / "status").stat().st_uid == 0  # no longer the user's own
            peek = users.as_user(user, "import sys; open(sys.argv[1], 'rb').read(1)",
                                 str(proc / "mem"))
            assert "PermissionError" in peek.stderr
        finally:
            child.communicate(timeout=10)
        assert child.returncode == 0, child.stderr
