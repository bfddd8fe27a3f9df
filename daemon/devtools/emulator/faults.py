"""Faults the emulator injects on request (throttling, errors, delays), to test how clients cope."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any


@dataclass
class Faults:
    """Fault switches, mutable at runtime (directly or over ``/_emulator/faults``).

    Counts mean "the next N calls"; -1 means "until cleared". Why: clients must be
    proven against the failures the real service produces, in a controlled order.
    """

    fail_status: int = 0  # status for fail_count calls (0 = 500)
    fail_count: int = 0
    throttle_count: int = 0  # 429 ThrottlingException (+ Retry-After when retry_after is set)
    retry_after: float | None = None
    delay_seconds: float = 0.0  # sleep (via the clock) before answering every call
    malformed_count: int = 0  # 201 with a truncated, non-JSON body
    empty_count: int = 0  # 201 with an empty credentialSet
    deny_count: int = 0  # 403 AccessDeniedException

    def take(self, name: str) -> bool:
        """Consume one unit of a count fault; True when the fault fires for this call."""
        count = getattr(self, name)
        if count == 0:
            return False
        if count > 0:
            setattr(self, name, count - 1)
        return True

    def update(self, changes: Mapping[str, Any]) -> None:
        """Apply a partial update, validating every field first (all or nothing)."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown fault field(s): {', '.join(unknown)}")
        for name, value in changes.items():
            _check_fault_value(name, value)
        for name, value in changes.items():
            setattr(self, name, value)


def _check_fault_value(name: str, value: Any) -> None:
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if name == "retry_after":
        if value is not None and not (is_number and math.isfinite(value) and value >= 0):
            raise ValueError("retry_after must be a number >= 0 or null")
    elif name == "delay_seconds":
        if not (is_number and math.isfinite(value) and value >= 0):
            raise ValueError("delay_seconds must be a number >= 0")
    elif name == "fail_status":
        if not (isinstance(value, int) and not isinstance(value, bool)):
            raise ValueError("fail_status must be an integer")
        if value != 0 and not 400 <= value <= 599:
            raise ValueError("fail_status must be 0 or an HTTP error status (400..599)")
    elif not (isinstance(value, int) and not isinstance(value, bool) and value >= -1):
        raise ValueError(f"{name} must be an integer >= -1 (-1 = until cleared)")

