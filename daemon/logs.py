"""Structured logging with a redaction processor in front of every renderer.

Secrets reach log calls in two ways: under a telling key (``secret_access_key=``)
or buried in text (an exception message that quotes a body). The processor
handles both: it blanks sensitive keys and scrubs every string value of the
secrets the daemon has registered as it handled them.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, MutableMapping
from typing import Any, TextIO

import structlog

REDACTED = "[REDACTED]"
_SENSITIVE_KEY = re.compile(
    r"(secret|password|passphrase|session_?token|authorization|private_?key|^token$|credentials?$)",
    re.IGNORECASE,
)


@functools.lru_cache(maxsize=1024)
def _sensitive(key: str) -> bool:
    """Whether a field's name says it holds a secret; remembered, as the same few names come
    with every line (the regex cost a fifth of the redaction of an audit line)."""
    return _SENSITIVE_KEY.search(key) is not None


class SecretRegistry:
    """The secret values seen so far, bounded so a long-running daemon does not grow.

    Indexed by each secret's first ``_PREFIX`` characters rather than compiled into one regex:
    a regex of thousands of alternatives took a second to rebuild after every new secret and
    milliseconds per scrub, which stalled the event loop once many connections renewed.

    Most lines hold no secret, and every one is scrubbed (an audit line per credential hand-out
    made scrubbing a fifth of an IMDS fetch's CPU). So a line is first looked at only every
    ``_STRIDE`` characters: a secret of ``_PREFIX + _STRIDE - 1`` characters or more, wherever
    it starts, covers one window of ``_PREFIX`` characters at a multiple of ``_STRIDE``, and each
    such secret files its windows at offsets 0 to ``_STRIDE - 1``. Shorter secrets are looked for
    at every position, as before. Only a line that may hold a secret is scanned in full.
    """

    _PREFIX = 8  # also the shortest secret registered
    _STRIDE = 4

    # Each renewal registers two secrets, oldest dropped first: 32768 keeps every live secret
    # (and the previous set's) of 8 000 connections, for a few MB of strings.
    def __init__(self, limit: int = 32768) -> None:
        self._order: deque[str] = deque()
        self._values: set[str] = set()
        self._limit = limit
        self._lock = threading.Lock()
        # first _PREFIX characters -> the secrets starting with them, longest first (replaced,
        # never mutated, so scrub() may read it without the lock)
        self._index: dict[str, tuple[str, ...]] = {}
        # the prefilter: window -> how many (secret, offset) pairs file it, for long secrets at
        # offsets 0.._STRIDE - 1 (_strided), for short ones their first window (_short)
        self._strided: dict[str, int] = {}
        self._short: dict[str, int] = {}

    def _windows(self, value: str) -> tuple[dict[str, int], list[str]]:
        width, stride = self._PREFIX, self._STRIDE
        if len(value) < width + stride - 1:
            return self._short, [value[:width]]
        return self._strided, [value[k : k + width] for k in range(stride)]

    def _file(self, value: str, present: bool) -> None:
        table, windows = self._windows(value)
        for window in windows:
            left = table.get(window, 0) + (1 if present else -1)
            if left > 0:
                table[window] = left
            else:
                table.pop(window, None)
        key = value[: self._PREFIX]
        bucket = [v for v in self._index.get(key, ()) if v != value]
        if present:
            bucket.append(value)
        if bucket:
            self._index[key] = tuple(sorted(bucket, key=len, reverse=True))
        else:
            self._index.pop(key, None)

    def add(self, *values: str | None) -> None:
        with self._lock:
            for value in values:
                if not value or len(value) < self._PREFIX or value in self._values:
                    continue
                self._values.add(value)
                self._order.append(value)
                self._file(value, True)
                if len(self._order) > self._limit:
                    oldest = self._order.popleft()
                    self._values.discard(oldest)
                    self._file(oldest, False)

    def scrub(self, text: str) -> str:
        """Every registered secret in ``text`` replaced, leftmost first, the longest on a tie."""
        index, width = self._index, self._PREFIX
        if not index or len(text) < width or not self._may_hold(text):
            return text
        pieces: list[str] = []
        start = i = 0
        last = len(text) - width
        while i <= last:
            candidates = index.get(text[i : i + width])
            if candidates is not None:
                found = next((v for v in candidates if text.startswith(v, i)), None)
                if found is not None:
                    pieces += (text[start:i], REDACTED)
                    i = start = i + len(found)
                    continue
            i += 1
        if not pieces:
            return text
        pieces.append(text[start:])
        return "".join(pieces)

    def _may_hold(self, text: str) -> bool:
        """False only when no registered secret occurs in ``text`` (see the class docstring)."""
        width, end = self._PREFIX, len(text) - self._PREFIX + 1
        if not self._strided.keys().isdisjoint(
                [text[i : i + width] for i in range(0, end, self._STRIDE)]):
            return True
        short = self._short
        return bool(short) and not short.keys().isdisjoint(
            [text[i : i + width] for i in range(end)])


SECRETS = SecretRegistry()


def _clean(value: Any, registry: SecretRegistry) -> Any:
    if isinstance(value, str):
        return registry.scrub(value)
    if isinstance(value, dict):
        return {
            k: REDACTED if _sensitive(str(k)) else _clean(v, registry)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(_clean(v, registry) for v in value)
    if isinstance(value, BaseException):
        return registry.scrub(repr(value))
    return value


class RedactSecrets:
    """structlog processor: blank sensitive keys, scrub registered secrets from values."""

    def __init__(self, registry: SecretRegistry = SECRETS) -> None:
        self.registry = registry

    def __call__(
        self, logger: Any, method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key, value in list(event_dict.items()):
            if _sensitive(key):
                event_dict[key] = REDACTED
            else:
                event_dict[key] = _clean(value, self.registry)
        return event_dict


def _scrub_rendered(registry: SecretRegistry):  # type: ignore[no-untyped-def]
    """Last line of defence after rendering (tracebacks are formatted late)."""

    def processor(logger: Any, method: str, rendered: str) -> str:
        return registry.scrub(rendered)

    return processor


_SYSLOG_LEVEL = {"debug": 7, "info": 6, "warning": 4, "warn": 4, "error": 3, "exception": 3,
                 "critical": 2}


def _journal_prefix(logger: Any, method: str, rendered: str) -> str:
    """``<N>`` before each line: journald turns it into the entry's PRIORITY (SyslogLevelPrefix)."""
    return f"<{_SYSLOG_LEVEL.get(method, 6)}>{rendered}"


def writes_to_journal(stream: TextIO) -> bool:
    """True when systemd connected this stream to the journal (JOURNAL_STREAM=dev:inode)."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    try:
        info = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return expected == f"{info.st_dev}:{info.st_ino}"


class RepeatFilter(logging.Filter):
    """Lets one record of each kind (logger, level, message template) through per ``interval``
    seconds; the next one that passes says how many were dropped (``suppressed``).

    asyncio logs "socket.accept() out of system resource" with a traceback for every failed
    accept: 78 000 lines in 17 s once descriptors ran out. Library messages that repeat are
    one kind however their arguments differ (addresses, ports).
    """

    def __init__(self, interval: float = 10.0, limit: int = 4096,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.clock = clock
        self.interval = interval
        self.limit = limit
        self._seen: dict[tuple[str, int, str], list[float]] = {}  # -> [passed at, dropped]
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, str(record.msg))
        now = self.clock()
        with self._lock:
            entry = self._seen.get(key)
            if entry is not None and now - entry[0] < self.interval:
                entry[1] += 1
                return False
            if entry is None and len(self._seen) >= self.limit:
                self._seen.clear()
            dropped = int(entry[1]) if entry is not None else 0
            self._seen[key] = [now, 0]
        if dropped:
            record.suppressed = dropped
        return True


def _foreign_fields(logger: Any, method: str, event_dict: MutableMapping[str, Any]
                    ) -> MutableMapping[str, Any]:
    """A library's record as a daemon line: its logger's name, its own message as the event."""
    record = event_dict.get("_record")
    if isinstance(record, logging.LogRecord):
        event_dict["logger"] = record.name
        suppressed = getattr(record, "suppressed", None)
        if suppressed:
            event_dict["suppressed"] = suppressed
    return event_dict


def configure(
    fmt: str = "json",
    level: str = "info",
    stream: TextIO | None = None,
    extra_secrets: Iterable[str] = (),
) -> None:
    SECRETS.add(*extra_secrets)
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=False)
        if fmt == "console"
        else structlog.processors.JSONRenderer()
    )
    stamp: list[Any] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    # After the fields are set: the traceback as text (before redaction, which would turn an
    # exception object into its repr and lose the traceback), blank, scrub, render, scrub the
    # rendered line.
    tail: list[Any] = []
    if fmt != "console":
        tail.append(structlog.processors.format_exc_info)
    tail += [RedactSecrets(), renderer, _scrub_rendered(SECRETS)]
    if writes_to_journal(stream or sys.stderr):
        tail.append(_journal_prefix)
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, *stamp, *tail],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=False,
    )
    # Libraries (aiohttp, asyncio, botocore, urllib3) log through the standard library: their
    # lines go through the same redaction and renderer as the daemon's own (one JSON object per
    # line, registered secrets scrubbed, tracebacks included), at warning or above, each kind
    # at most once per 10 s.
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*stamp, _foreign_fields],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail],
    ))
    handler.addFilter(RepeatFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_credential_sidecar", False):  # ours, from an earlier configure()
            root.removeHandler(old)
    handler._credential_sidecar = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(max(logging.WARNING, logging.getLevelNamesMapping()[level.upper()]))


def get_logger(**initial: Any) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(**initial)  # type: ignore[no-any-return]
