#!/bin/sh
""":"; p="${0%/*}/python3"; [ -x "$p" ] || p=python3; exec "$p" -I -S "$0" "$@"

The line above is for /bin/sh: this file is also installed as the script
``credential-sidecar-process``, and run that way it hands itself to the python3 beside it with
``-I -S``, so neither ``site`` nor site-packages is loaded (``site`` alone costs more than the
rest of the run). It therefore imports nothing from the package and keeps even the standard
library to builtin modules on the usual path.

Ask the running daemon over its control socket: standard library only, so it starts fast.
Used by ``credential-process`` (run by SDKs, often: ``main`` here is that command) and
``status``. See doors.control for the protocol.

Why ``_socket`` and ``_json`` rather than ``socket`` and ``json``: those two import ``enum``,
``re``, ``selectors`` and ``collections``, several milliseconds on a process whose floor is the
interpreter's own ~15 ms start. Only the answer's shape the daemon sends (ASCII JSON; a flat
object of strings and integers) takes the short road; anything else goes through ``json`` itself,
so what is printed is byte for byte what ``json.dumps`` prints.
"""

from __future__ import annotations

import _socket
import sys

try:
    import _json
except ImportError:  # not CPython: json itself does the work
    _json = None  # type: ignore[assignment]

TYPE_CHECKING = False  # typing costs an import; mypy treats this name as true
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Sequence
    from pathlib import Path
    from typing import Any

TIMEOUT = 5.0
DEFAULT_CONFIG = "/etc/credential-sidecar/config.toml"
PROG = "credential-sidecar"
_WHITESPACE = " \t\n\r"  # what json skips around a document


class Unreachable(Exception):
    """The daemon could not be asked (not running, no permission, it hung up)."""


def socket_from_config(config_path: str) -> Path | None:
    """``[control] socket`` from a config file (relative to it), or None when not configured.

    Only TOML is parsed here, not the whole schema: a caller needs the path, not a validation.
    Raises OSError or ValueError when the file cannot be read or parsed.
    """
    import tomllib
    from pathlib import Path

    path = Path(config_path)
    with path.open("rb") as handle:
        data = tomllib.load(handle)
    control = data.get("control")
    if not isinstance(control, dict) or not isinstance(control.get("socket"), str):
        return None
    socket_path = Path(control["socket"])
    return socket_path if socket_path.is_absolute() else path.absolute().parent / socket_path


def _scanner() -> Callable[[str, int], tuple[Any, int]] | None:
    """json's own C scanner, set up as ``json.loads`` sets it up; None where there is none."""
    if _json is None:
        return None

    class Context:
        strict = True
        object_hook = None
        object_pairs_hook = None
        parse_float = float
        parse_int = int
        parse_constant = {"-Infinity": float("-inf"), "Infinity": float("inf"),
                          "NaN": float("nan")}.__getitem__

    return _json.make_scanner(Context())  # type: ignore[arg-type]  # any object with these


def loads(data: bytes) -> Any:
    """``json.loads(data)``, without importing ``json`` for the ASCII answers the daemon sends."""
    scan = _scanner() if data.isascii() else None
    if scan is None:
        import json

        return json.loads(data)
    text = data.decode("ascii")
    start = len(text) - len(text.lstrip(_WHITESPACE))
    try:
        value, end = scan(text, start)
    except StopIteration:
        raise ValueError("Expecting value") from None
    if text[end:].strip(_WHITESPACE):
        raise ValueError("Extra data")
    return value


def dumps(value: Any) -> str:
    """``json.dumps(value)``, without importing ``json`` for a flat object of str and int."""
    if _json is not None and type(value) is dict:
        quote = _json.encode_basestring_ascii
        items = []
        for key, item in value.items():
            if type(key) is not str or type(item) not in (str, int):
                break
            text = quote(item) if type(item) is str else int.__repr__(item)
            items.append(f"{quote(key)}: {text}")
        else:
            return "{" + ", ".join(items) + "}"
    import json

    return json.dumps(value)


def _plain(path: str) -> bool:
    """True when ``str(Path(path)) == path``, so the path needs no pathlib to be normalised."""
    parts = path.split("/")
    if path.startswith("/"):
        parts = parts[1:]
    return all(part not in ("", ".") for part in parts)


def ask(
    socket_path: Path | str, request: dict[str, Any], timeout: float = TIMEOUT
) -> dict[str, Any]:
    """Send one request, return the daemon's one-line JSON answer."""
    target = str(socket_path)
    if not _plain(target):
        from pathlib import Path

        target = str(Path(target))
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(target)
            sock.sendall(dumps(request).encode() + b"\n")
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
    finally:
        sock.close()
    try:
        answer = loads(data)
    except ValueError:
        raise Unreachable("the daemon hung up without an answer") from None
    if not isinstance(answer, dict):
        raise Unreachable("the answer is not a JSON object")
    return answer


# --- the credential-process command -----------------------------------------------------------


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """The command's arguments, for ``credential-sidecar credential-process`` and the script."""
    parser.add_argument("name", metavar="NAME", help="the connection to print credentials for")
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--config", help=f"read [control] socket from here (default: {DEFAULT_CONFIG})"
    )
    where.add_argument("--socket", help="the daemon's control socket")


def _fail(message: str) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return 1


def run(name: str, *, config: str | None = None, socket_path: str | None = None) -> int:
    """Print the connection's credential_process JSON; 0, or 1 with one line on stderr."""
    if socket_path is None:
        config = config or DEFAULT_CONFIG
        try:
            found = socket_from_config(config)
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            return _fail(f"cannot read {config}: {reason}; or pass --socket PATH")
        if found is None:
            return _fail(f"{config} has no [control] socket; or pass --socket PATH")
        socket_path = str(found)
    try:
        answer = ask(socket_path, {"op": "credentials", "name": name})
    except Unreachable as exc:
        return _fail(f"daemon not reachable at {socket_path}: {exc}")
    if answer.get("ok") is not True or not isinstance(answer.get("credentials"), dict):
        return _fail(str(answer.get("message") or "the daemon refused without a reason"))
    print(dumps(answer["credentials"]))
    return 0


def quick_args(argv: Sequence[str]) -> tuple[str, str | None, str | None] | None:
    """(name, socket, config) from the plain shapes SDK profiles use, without argparse.

    ``NAME``, ``--socket PATH`` or ``--config PATH`` (each also as ``--opt=PATH``), in any order,
    at most one of the two options. Anything else (help, abbreviations, a value that looks like
    an option, both options) returns None, and argparse then answers exactly as it always did.
    """
    name: str | None = None
    option: tuple[str, str] | None = None
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("--socket", "--config") and i + 1 < len(argv):
            key, value = arg, argv[i + 1]
            i += 2
        elif arg.startswith(("--socket=", "--config=")):
            key, _, value = arg.partition("=")
            i += 1
        elif not arg.startswith("-") and name is None:
            name = arg
            i += 1
            continue
        else:
            return None
        if option is not None or not value or value.startswith("-"):
            return None
        option = (key, value)
    if name is None:
        return None
    if option is None:
        return name, None, None
    return (name, option[1], None) if option[0] == "--socket" else (name, None, option[1])


def main(argv: Sequence[str] | None = None, prog: str = "credential-sidecar-process") -> int:
    """``credential-process NAME [--socket PATH | --config PATH]``: argparse only when needed."""
    argv = list(sys.argv[1:] if argv is None else argv)
    quick = quick_args(argv)
    try:
        if quick is not None:
            return run(quick[0], socket_path=quick[1], config=quick[2])
        import argparse

        parser = argparse.ArgumentParser(
            prog=prog,
            description="Print a connection's credential_process JSON from the running daemon.",
        )
        configure_parser(parser)
        args = parser.parse_args(argv)
        return run(args.name, config=args.config, socket_path=args.socket)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
