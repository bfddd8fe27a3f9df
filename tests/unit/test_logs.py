from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
import structlog

from daemon import logs


def test_redaction_processor_blanks_keys_and_scrubs_registered_values() -> None:
    stream = io.StringIO()
    logs.configure("json", "debug", stream=stream)
    canary = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYCANARYKEY"
    logs.SECRETS.add(canary)
    log = structlog.get_logger()
    log.info("renewed", secret_access_key=canary, session_token="tok-123456789",
             detail=f"upstream said {canary} oops", nested={"password": "hunter2hunter2"})
    try:
        raise ValueError(f"boom {canary}")
    except ValueError:
        log.exception("failed")
    text = stream.getvalue()
    assert canary not in text
    assert "tok-123456789" not in text and "hunter2hunter2" not in text
    first = json.loads(text.splitlines()[0])
    assert first["secret_access_key"] == logs.REDACTED
    assert first["detail"] == f"upstream said {logs.REDACTED} oops"
    assert first["nested"] == {"password": logs.REDACTED}
    assert logs.REDACTED in text.splitlines()[1]


def test_registry_is_bounded() -> None:
    registry = logs.SecretRegistry(limit=3)
    registry.add("secret-number-1", "secret-number-2", "secret-number-3", "secret-number-4")
    assert registry.scrub("secret-number-1") == "secret-number-1"
    assert registry.scrub("x secret-number-4 y") == f"x {logs.REDACTED} y"


def test_lines_carry_a_syslog_priority_when_stderr_is_the_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "journal-stream"
    with path.open("w+") as stream:
        info = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino}")
        logs.configure("json", "debug", stream=stream)
        log = structlog.get_logger()
        log.warning("careful")
        log.error("broken")
        log.info("fine")
    lines = path.read_text().splitlines()
    assert [line[:3] for line in lines] == ["<4>", "<3>", "<6>"]
    assert json.loads(lines[0][3:])["event"] == "careful"
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")
    other = io.StringIO()
    logs.configure("json", "debug", stream=other)
    structlog.get_logger().info("plain")
    assert other.getvalue().startswith("{")
