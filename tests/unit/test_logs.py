from __future__ import annotations

import io
import json

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
