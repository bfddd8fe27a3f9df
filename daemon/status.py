"""`credential-sidecar status`: ask the running daemon how its connections are."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request

COLUMNS = ("name", "type", "state", "expires_at", "last_renewal", "last_error")


def fetch_status(base_url: str, timeout: float = 3.0) -> dict[str, object]:
    with urllib.request.urlopen(base_url.rstrip("/") + "/status", timeout=timeout) as response:  # noqa: S310 (loopback URL from config)
        return json.loads(response.read())  # type: ignore[no-any-return]


def render_table(rows: list[dict[str, object]]) -> str:
    cells = [[str(row.get(c) if row.get(c) is not None else "-") for c in COLUMNS] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(COLUMNS)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(COLUMNS, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(line.rstrip() for line in lines)


def status(config_path: str, *, as_json: bool = False) -> int:
    from daemon.config import ConfigError, load_config

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    if config.health is None:
        print(f"{config_path}: no [health] listener configured to ask", file=sys.stderr)
        return 1
    url = f"http://{config.health.listen}/"
    try:
        report = fetch_status(url)
    except (OSError, urllib.error.URLError, ValueError) as exc:
        print(f"daemon unreachable at {url}: {exc}", file=sys.stderr)
        return 1
    rows = list(report.get("connections", []))  # type: ignore[call-overload]
    print(json.dumps(report, indent=2) if as_json else render_table(rows))
    return 0 if all(row.get("state") in ("ready", "degraded") for row in rows) else 3
