from __future__ import annotations

import io
import json
import logging
import os
import re
from pathlib import Path

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from credential_sidecar import logs


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


@settings(max_examples=300, deadline=None)
@given(secrets=st.lists(st.text("ab", min_size=8, max_size=14), max_size=6),
       text=st.text("abx", max_size=60))
def test_scrub_replaces_what_a_longest_first_regex_would(secrets: list[str], text: str) -> None:
    """Leftmost match first, the longest secret on a tie, never overlapping: as the regex
    alternation the registry used to compile, without its cost at thousands of secrets."""
    registry = logs.SecretRegistry()
    registry.add(*secrets)
    expected = text
    if secrets:
        ordered = sorted(set(secrets), key=len, reverse=True)
        expected = re.sub("|".join(map(re.escape, ordered)), logs.REDACTED, text)
    assert registry.scrub(text) == expected


@settings(max_examples=300, deadline=None)
@given(secrets=st.lists(st.text("abc", min_size=8, max_size=30), max_size=8),
       evicted=st.integers(0, 8), text=st.text("abcx", max_size=120))
def test_the_strided_look_finds_every_secret_the_full_scan_would(
        secrets: list[str], evicted: int, text: str) -> None:
    """Lines are first looked at every few characters (SecretRegistry's prefilter): the answer is
    still the leftmost-longest replacement, for secrets of every length, across evictions."""
    registry = logs.SecretRegistry(limit=max(1, len(secrets) - evicted))
    registry.add(*secrets)
    kept = list(registry._order)  # what eviction left
    for secret in kept[: len(kept) // 2]:  # secrets placed in the text, at any offset
        text = text[: len(text) // 2] + secret + text[len(text) // 2 :]
    expected = text
    if kept:
        ordered = sorted(set(kept), key=len, reverse=True)
        expected = re.sub("|".join(map(re.escape, ordered)), logs.REDACTED, text)
    assert registry.scrub(text) == expected


def test_scrub_finds_every_secret_among_thousands() -> None:
    registry = logs.SecretRegistry(limit=4096)
    values = [f"secret-{i:05d}-{'x' * (i % 7)}" for i in range(4096)]
    registry.add(*values)
    text = " ".join(values[::512])
    assert registry.scrub(text) == " ".join([logs.REDACTED] * 8)
    registry.add("one-more-secret")  # evicts the oldest, which is no longer scrubbed
    assert registry.scrub(values[0]) == values[0]
    assert registry.scrub(values[1]) == logs.REDACTED


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


def _drop_our_handler() -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_credential_sidecar", False):
            root.removeHandler(handler)


def test_library_lines_are_json_and_redacted_like_the_daemons() -> None:
    out = io.StringIO()
    logs.configure("json", "info", stream=out, extra_secrets=["registered-token-0123456789"])
    try:
        try:
            raise ValueError("Bad status line 'GET /registered-token-0123456789 HTTP/1.1'")
        except ValueError:
            logging.getLogger("aiohttp.server").exception("Error handling request from %s",
                                                          "127.0.0.1")
        logging.getLogger("botocore").warning("header registered-token-0123456789 rejected")
        logging.getLogger("asyncio").info("below the libraries' level: dropped")
    finally:
        _drop_our_handler()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(e["logger"], e["level"]) for e in lines] == [("aiohttp.server", "error"),
                                                           ("botocore", "warning")]
    assert "registered-token-0123456789" not in out.getvalue()
    assert "Traceback" in lines[0]["exception"] and logs.REDACTED in lines[0]["exception"]


def test_a_repeated_library_message_is_one_line_per_interval() -> None:
    clock = [1000.0]
    limiter = logs.RepeatFilter(interval=10.0, clock=lambda: clock[0])

    def record(msg: str, arg: int) -> logging.LogRecord:
        return logging.LogRecord("asyncio", logging.ERROR, __file__, 1, msg, (arg,), None)

    storm = "socket.accept() out of system resource\nsocket: %s"
    passed = [limiter.filter(record(storm, i)) for i in range(78000)]
    assert passed.count(True) == 1
    assert limiter.filter(record("another message %s", 1))  # another kind passes
    clock[0] += 10.0
    later = record(storm, 0)
    assert limiter.filter(later) and later.suppressed == 77999  # type: ignore[attr-defined]
