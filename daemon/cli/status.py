"""`credential-sidecar status`: ask the running daemon how its connections are.

The control socket is asked first when ``[control]`` is configured (it needs no TCP port and
works when no health listener is configured), else or failing that the health listener's
``/status``. Exit 0 when every connection is ready (or degraded: still serving), 3 when some
are not, 1 when the daemon cannot be reached.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from typing import Any

from credential_sidecar.client import Unreachable, ask

COLUMNS = ("name", "type", "state", "expires_at", "last_renewal", "last_error",
           "certificate_not_after", "key_age_days", "used_by")
HEADINGS = {"expires_at": "EXPIRES", "certificate_not_after": "CERT NOT AFTER",
            "key_age_days": "KEY AGE (DAYS)", "last_renewal": "LAST RENEWAL",
            "last_error": "LAST ERROR", "used_by": "USED BY"}


def fetch_status(base_url: str, timeout: float = 3.0) -> dict[str, Any]:
    with urllib.request.urlopen(base_url.rstrip("/") + "/status", timeout=timeout) as response:  # noqa: S310 (loopback URL from config)
        return json.loads(response.read())  # type: ignore[no-any-return]


def _used_by(value: object) -> str | None:
    """``imds:app x3, control (uid 1001) x1``: who fetched, most recent first."""
    if not isinstance(value, list) or not value:
        return None
    entries = sorted((e for e in value if isinstance(e, dict)),
                     key=lambda e: str(e.get("last") or ""), reverse=True)
    parts = []
    for entry in entries:
        peer = f" ({entry['peer']})" if entry.get("peer") else ""
        parts.append(f"{entry.get('door')}{peer} x{entry.get('count')}")
    return ", ".join(parts)


def _cell(row: dict[str, Any], column: str) -> str:
    value = _used_by(row.get(column)) if column == "used_by" else row.get(column)
    return "-" if value is None or value == "" else str(value)


def render_table(rows: list[dict[str, Any]]) -> str:
    heads = [HEADINGS.get(c, c.upper()) for c in COLUMNS]
    cells = [[_cell(row, c) for c in COLUMNS] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(heads)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(line.rstrip() for line in lines)


# One connection's account record (seed 000): id, notes, times, who uses it, and its key.
RECORD = (("name", "name"), ("id", "id"), ("type", "type"), ("mode", "mode"),
          ("state", "state"), ("notes", "notes"), ("created", "created"),
          ("modified", "modified"), ("used_by", "used by"), ("expires_at", "expires at"),
          ("last_renewal", "last renewal"), ("last_error", "last error"),
          ("certificate_not_after", "certificate not after"), ("key_store", "key store"),
          ("long_term_key_id", "access key"), ("key_created", "key created"),
          ("key_age_days", "key age (days)"), ("key_status", "key status"),
          ("identity_arn", "identity"))


def render_record(row: dict[str, Any]) -> str:
    """``credential-sidecar status NAME``: one connection, one field a line."""
    width = max(len(label) for _, label in RECORD) + 1
    lines = []
    for key, label in RECORD:
        if key not in row and key not in ("id", "notes", "created", "modified", "used_by"):
            continue  # fields of the other connection type
        value = _cell(row, key)
        if key == "used_by" and isinstance(row.get("used_by"), list) and row["used_by"]:
            value = ("\n" + " " * (width + 1)).join(
                f"{e.get('door')}{' (' + str(e['peer']) + ')' if e.get('peer') else ''}"
                f" x{e.get('count')}, last {e.get('last')}"
                for e in sorted(row["used_by"], key=lambda e: str(e.get("last")), reverse=True))
        if key == "key_age_days" and row.get("key_age_warning"):
            value += "  (older than the warning age: rotate it)"
        if key == "identity_arn" and row.get("root_key"):
            value += "  (the account root: AWS advises an IAM user's key)"
        lines.append(f"{label + ':':<{width}} {value}")
    return "\n".join(lines)


def status(config_path: str, *, as_json: bool = False, name: str | None = None) -> int:
    from credential_sidecar.config.errors import ConfigError
    from credential_sidecar.config.load import load_config

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    if config.control is None and config.health is None:
        print(f"{config_path}: neither [control] nor [health] is configured to ask",
              file=sys.stderr)
        return 1
    failures: list[str] = []
    report: dict[str, Any] | None = None
    if config.control is not None:
        try:
            report = ask(config.control.socket, {"op": "status"})
        except Unreachable as exc:
            failures.append(f"control socket {config.control.socket}: {exc}")
        else:
            if report.get("ok") is not True:
                failures.append(f"control socket {config.control.socket}: {report.get('message')}")
                report = None
    if report is None and config.health is not None:
        url = f"http://{config.health.listen}/"
        try:
            report = fetch_status(url)
        except (OSError, urllib.error.URLError, ValueError) as exc:
            failures.append(f"health listener {url}: {exc}")
    if report is None:
        print("daemon unreachable: " + "; ".join(failures), file=sys.stderr)
        return 1
    report.pop("ok", None)
    rows = list(report.get("connections", []))
    if name is not None:
        rows = [row for row in rows if row.get("name") == name]
        if not rows:
            print(f"the daemon has no connection named {name!r}", file=sys.stderr)
            return 2
        print(json.dumps(rows[0], indent=2) if as_json else render_record(rows[0]))
    else:
        print(json.dumps(report, indent=2) if as_json else render_table(rows))
        if not as_json:  # door-level problems (listeners, token files, credentials files)
            names = {row.get("name") for row in rows}
            for what, why in dict(report.get("not_ready") or {}).items():
                if what not in names:
                    print(f"not ready: {what}: {why}")
    return 0 if all(row.get("state") in ("ready", "degraded") for row in rows) else 3
