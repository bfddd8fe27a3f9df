"""A start that fails before logging is configured still reaches the journal as JSON at error
priority, so `journalctl -p err` says why; in a terminal it stays plain text."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.helpers import harness as h


def test_a_bad_config_under_systemd_is_one_json_line_at_error_priority(tmp_path: Path) -> None:
    bad = tmp_path / "config.toml"
    bad.write_text('[daemon]\nlog_levle = "info"\n')
    journal = tmp_path / "journal"
    with journal.open("wb") as stream:
        info = os.fstat(stream.fileno())
        env = h.clean_env(JOURNAL_STREAM=f"{info.st_dev}:{info.st_ino}")
        done = subprocess.run([*h.CLI, "run", "--config", str(bad)], stdout=subprocess.DEVNULL,
                              stderr=stream, env=env, timeout=60, check=False)
    assert done.returncode == 2
    lines = journal.read_text().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("<3>"), "journald reads <3> as PRIORITY=3 (err)"
    entry = json.loads(lines[0][3:])
    assert entry["level"] == "error" and entry["config"] == str(bad)
    assert "daemon.log_levle: unknown key" in entry["problems"]


def test_a_bad_config_in_a_terminal_stays_plain_text(tmp_path: Path) -> None:
    bad = tmp_path / "config.toml"
    bad.write_text('[daemon]\nlog_levle = "info"\n')
    done = h.run_cli(["run", "--config", str(bad)])
    assert done.returncode == 2
    assert "daemon.log_levle: unknown key" in done.stderr
    assert not done.stderr.lstrip().startswith("{")
