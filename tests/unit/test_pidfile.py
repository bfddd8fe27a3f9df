"""state_dir/daemon.pid: found only while it names a running credential-sidecar daemon."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from credential_sidecar.state import pidfile


def test_our_own_file_is_written_and_removed(tmp_path: Path) -> None:
    path = pidfile.write(tmp_path / "state")
    assert path == tmp_path / "state" / "daemon.pid"
    assert path.read_text() == f"{os.getpid()}\n"
    pidfile.remove(path)
    assert not path.exists()


def test_another_daemons_file_is_not_removed(tmp_path: Path) -> None:
    path = tmp_path / "daemon.pid"
    path.write_text("1\n")
    pidfile.remove(path)
    assert path.exists()


def test_only_a_running_daemon_is_found(tmp_path: Path) -> None:
    assert pidfile.find(tmp_path) is None, "no file"
    (tmp_path / "daemon.pid").write_text(f"{os.getpid()}\n")
    assert pidfile.find(tmp_path) is None, "pytest is not the daemon"
    # A process whose command line is the daemon's (it sleeps instead of serving).
    fake = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "-m",
                             "credential_sidecar", "run"])
    try:
        (tmp_path / "daemon.pid").write_text(f"{fake.pid}\n")
        # Until the child has exec'd, /proc shows the parent's command line: wait for it.
        for _ in range(500):
            if b"credential_sidecar" in Path(f"/proc/{fake.pid}/cmdline").read_bytes():
                break
            time.sleep(0.01)
        assert pidfile.find(tmp_path) == fake.pid
    finally:
        fake.kill()
        fake.wait()
    assert pidfile.find(tmp_path) is None, "a stale file after a crash"
    (tmp_path / "daemon.pid").write_text("garbage")
    assert pidfile.find(tmp_path) is None


def test_an_unwritable_state_dir_gives_no_file_and_no_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert pidfile.write(blocker / "state") is None
