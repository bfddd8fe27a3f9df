"""Ask the running daemon over its control socket: standard library only, so it starts fast.

Used by ``credential-process`` (run by SDKs, often) and ``status``. See doors.control for the
protocol.
"""

from __future__ import annotations

import json
import socket
import tomllib
from pathlib import Path
from typing import Any

TIMEOUT = 5.0


class Unreachable(Exception):
    """The daemon could not be asked (not running, no permission, it hung up)."""


def socket_from_config(config_path: str) -> Path | None:
    """``[control] socket`` from a config file (relative to it), or None when not configured.

    Only TOML is parsed here, not the whole schema: a caller needs the path, not a validation.
    Raises OSError or ValueError when the file cannot be read or parsed.
    """
    path = Path(config_path)
    with path.open("rb") as handle:
        data = tomllib.load(handle)
    control = data.get("control")
    if not isinstance(control, dict) or not isinstance(control.get("socket"), str):
        return None
    socket_path = Path(control["socket"])
    return socket_path if socket_path.is_absolute() else path.absolute().parent / socket_path


def ask(
    socket_path: Path | str, request: dict[str, Any], timeout: float = TIMEOUT
) -> dict[str, Any]:
    """Send one request, return the daemon's one-line JSON answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(socket_path))
            sock.sendall(json.dumps(request).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except TimeoutError:
            raise Unreachable(f"no answer within {timeout:g} s") from None
        except OSError as exc:
            raise Unreachable(exc.strerror or str(exc)) from None
    try:
        answer = json.loads(data)
    except ValueError:
        raise Unreachable("the daemon hung up without an answer") from None
    if not isinstance(answer, dict):
        raise Unreachable("the answer is not a JSON object")
    return answer
