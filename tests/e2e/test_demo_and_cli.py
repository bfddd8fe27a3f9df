"""The commands a user types first: demo, check-config, run with a bad config."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

from tests.helpers import harness as h
from tests.helpers.sdk import BOTO3_SNIPPET, imds_env


def test_demo_serves_boto3_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    process = h.start(["demo"], tmp_path / "demo.log")
    try:
        line = h.wait_for(
            lambda: next((x for x in process.lines()
                          if x.startswith("export AWS_EC2_METADATA_SERVICE_ENDPOINT=")), None),
            timeout=60, what="the demo's export line")
        endpoint = line.split("=", 1)[1]
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", endpoint), "trailing slash required"
        assert "export AWS_EC2_METADATA_V1_DISABLED=true" in process.lines()
        out = subprocess.run([sys.executable, "-c", BOTO3_SNIPPET], capture_output=True,
                             text=True, env=imds_env(endpoint, tmp_path), timeout=60, check=True)
        got = json.loads(out.stdout)
        assert got["method"] == "iam-role" and got["access_key"].startswith("ASIA")
        workdir = next(x.split("certificate=", 1)[1].split()[0] for x in process.lines()
                       if "certificate=" in x)
        assert Path(workdir).exists()
    finally:
        code = process.stop(signal.SIGTERM)
    assert code == 0
    assert not Path(workdir).exists(), "the demo's throwaway keys are removed on exit"


def test_demo_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    process = h.start(["demo"], tmp_path / "demo.log")
    h.wait_for(lambda: any(x.startswith("export ") for x in process.lines()), timeout=60,
               what="the demo to start")
    assert process.stop(signal.SIGINT) == 0


def test_check_config_reports_every_problem_with_its_key_path(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(
        """
[[imds]]
listen = "127.0.0.1:9911"
connection = "nope"

[[connections]]
name = "a"
type = "roles-anywhere"
certificate = "a.crt"
private_key = "a.key"
trust_anchor_arn = "arn:aws:rolesanywhere:us-east-1:111122223333:trust-anchor/x"
profile_arn = "arn:aws:rolesanywhere:eu-west-1:111122223333:profile/y"
role_arn = "arn:aws:iam::111122223333:role/r"
session_name = "s1"
duration_seconds = 60
"""
    )
    result = subprocess.run([*h.CLI, "check-config", "--config", str(config)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "connections[0].duration_seconds: must be between 900 and 43200" in result.stderr
    assert "connections[0].profile_arn" in result.stderr
    assert 'imds[0].connection: no connection named "nope"' in result.stderr
    # `run` refuses the same file with the same exit code and starts nothing.
    run = subprocess.run([*h.CLI, "run", "--config", str(config)], capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 2
    assert "connections[0].duration_seconds" in run.stderr


def test_check_config_finds_only_the_missing_files_in_the_shipped_example() -> None:
    """The example's shape is valid; check-config also opens every file a connection names,
    and the example's (in /etc, /run) exist only on an operator's machine."""
    example = Path(__file__).resolve().parents[2] / "config" / "example.toml"
    result = subprocess.run([*h.CLI, "check-config", "--config", str(example)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    problems = [line for line in result.stderr.splitlines() if line.startswith("  - ")]
    assert problems, result.stderr
    for line in problems:
        assert line.startswith("  - connections["), line
        assert "does not exist" in line or "No such file or directory" in line, line
