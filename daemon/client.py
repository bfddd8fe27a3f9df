"""Ask the running daemon over its control socket, standard library only. Used by ``status``,
``rotate-keys`` and ``credential-process`` (run by SDKs, often). See doors.control for the
protocol.

The script ``credential-sidecar-process`` (scripts/) runs ``main`` here under ``python3 -I -S``
(``site`` alone costs more than the request), so this module imports nothing from the package and
only builtin modules: ``_socket`` and ``_json`` stand in for ``socket`` and ``json``, which import
``enum`` and ``re``. ``NAME --socket PATH`` is answered here; any other arguments exec
``credential-sidecar credential-process`` itself.
"""

import _socket
import sys

try:
    import _json
except ImportError:  # not CPython: json itself does the work
    _json = None  # type: ignore[assignment]

# Annotations are strings: neither typing nor __future__ is imported (mypy takes this as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from pathlib import Path
    from typing import Any

TIMEOUT = 5.0
# A restart without socket activation leaves a moment with no socket file (ENOENT: the old
# process removed it at stop, the new one has not bound yet) or one nobody listens on
# (ECONNREFUSED: what a kill -9 leaves); a start takes about a second. SDKs take a failed
# credential_process as "no credentials", so those two errors, and only those, are tried again
# for this long, well inside an SDK's patience. Every answer the daemon gives is final at once.
RETRY_SECONDS = 4.0
RETRY_DELAYS = (0.02, 0.05, 0.1, 0.2)  # then 0.2 s each: short at first, a restart is quick
PROG = "credential-sidecar"
_SPACE = " \t\n\r"  # what json skips around a document


class Unreachable(Exception):
    """The daemon could not be asked (not running, no permission, it hung up)."""


class _Context:
    """What json's C scanner reads from its decoder: json.loads' defaults."""

    strict = True
    object_hook = object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = {"-Infinity": float("-inf"), "Infinity": float("inf"),
                      "NaN": float("nan")}.__getitem__


def loads(data: bytes) -> "Any":
    """``json.loads(data)``; json's own C scanner for the ASCII the daemon sends."""
    if _json is None or not data.isascii():
        import json

        return json.loads(data)
    text = data.decode()
    start = len(text) - len(text.lstrip(_SPACE))
    try:
        value, end = _json.make_scanner(_Context())(text, start)  # type: ignore[arg-type]
    except StopIteration:
        raise ValueError("Expecting value") from None
    if text[end:].strip(_SPACE):
        raise ValueError("Extra data")
    return value


def dumps(value: "Any") -> str:
    """``json.dumps(value)``; without json for a flat object of str and int."""
    if _json is not None and type(value) is dict:
        quote = _json.encode_basestring_ascii
        items = []
        for key, item in value.items():
            if type(key) is not str or type(item) not in (str, int):
                break
            items.append(quote(key) + ": " + (quote(item) if type(item) is str else str(item)))
        else:
            return "{" + ", ".join(items) + "}"
    import json

    return json.dumps(value)


def _plain(path: str) -> bool:
    """True when ``str(Path(path)) == path``: nothing for pathlib to normalise."""
    parts = path.split("/")
    return all(part not in ("", ".") for part in parts[path.startswith("/"):])


def _has_dir(target: str) -> bool:
    """Whether the socket's directory exists (``posix`` is builtin and already loaded)."""
    import posix

    head = target.rpartition("/")[0] or ("/" if target.startswith("/") else ".")
    try:
        posix.stat(head)
    except OSError:
        return False
    return True


def _connect(target: str, timeout: float, retry_for: float,
             now: "Callable[[], float] | None", sleep: "Callable[[float], object] | None",
             ) -> "_socket.socket":
    """A socket connected to ``target``; ENOENT (while the socket's directory exists) and
    ECONNREFUSED are tried again for ``retry_for`` seconds (``time`` is imported only then: the
    usual call needs no clock)."""
    deadline = None
    attempt = 0
    while True:
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(target)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            sock.close()
            if retry_for <= 0 or (isinstance(exc, FileNotFoundError) and not _has_dir(target)):
                raise  # no directory: a wrong path, or a daemon never started; nothing to wait for
            if now is None or sleep is None:
                import time

                now, sleep = now or time.monotonic, sleep or time.sleep
            deadline = now() + retry_for if deadline is None else deadline
            left = deadline - now()
            if left <= 0:
                raise
            sleep(min(RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)], left))
            attempt += 1
        except BaseException:
            sock.close()
            raise
        else:
            return sock


def ask(
    socket_path: "Path | str", request: "dict[str, Any]", timeout: float = TIMEOUT, *,
    retry_for: float = 0.0, now: "Callable[[], float] | None" = None,
    sleep: "Callable[[float], object] | None" = None,
) -> "dict[str, Any]":
    """Send one request, return the daemon's one-line JSON answer. ``retry_for``: how long a
    socket that is missing or refuses is tried again (see RETRY_SECONDS); ``now`` and
    ``sleep`` are the clock for it (tests pass their own)."""
    target = str(socket_path)
    if not _plain(target):
        from pathlib import Path

        target = str(Path(target))
    try:
        sock = _connect(target, timeout, retry_for, now, sleep)
    except TimeoutError:
        raise Unreachable(f"no answer within {timeout:g} s") from None
    except OSError as exc:
        raise Unreachable(exc.strerror or str(exc)) from None
    try:
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


def socket_from_config(config_path: str) -> "Path | None":
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


def fail(message: str) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return 1


def print_credentials(name: str, socket_path: str, *, now: "Callable[[], float] | None" = None,
                      sleep: "Callable[[float], object] | None" = None) -> int:
    """credential-process's answer: the JSON on stdout and 0, or one line on stderr and 1.
    A daemon restarting is waited for (RETRY_SECONDS)."""
    try:
        answer = ask(socket_path, {"op": "credentials", "name": name}, retry_for=RETRY_SECONDS,
                     now=now, sleep=sleep)
    except Unreachable as exc:
        return fail(f"daemon not reachable at {socket_path}: {exc}")
    if answer.get("ok") is not True or not isinstance(answer.get("credentials"), dict):
        return fail(str(answer.get("message") or "the daemon refused without a reason"))
    print(dumps(answer["credentials"]))
    return 0


def quick_args(argv: "Sequence[str]") -> "tuple[str, str] | None":
    """(name, socket) from ``NAME --socket PATH`` (any order, or ``--socket=PATH``), the shape
    SDK profiles use; None for anything else, which argparse then answers as it always did."""
    if len(argv) == 2 and argv[0].startswith("--socket="):
        argv = [argv[1], "--socket", argv[0][9:]]
    elif len(argv) == 2 and argv[1].startswith("--socket="):
        argv = [argv[0], "--socket", argv[1][9:]]
    if len(argv) != 3:
        return None
    name, option, path = argv if argv[1] == "--socket" else (argv[2], argv[0], argv[1])
    if option != "--socket" or name[:1] == "-" or path[:1] in ("-", ""):
        return None
    return name, path


def main(argv: "Sequence[str] | None" = None) -> int:
    """The script: ``NAME --socket PATH`` here; otherwise the full command, exec'd."""
    args = list(sys.argv[1:] if argv is None else argv)
    quick = quick_args(args)
    if quick is None:
        import os

        cli = os.path.join(os.path.dirname(os.path.realpath(sys.argv[0])), PROG)
        if not os.access(cli, os.X_OK):
            cli = PROG  # from PATH
        try:
            os.execvp(cli, [PROG, "credential-process", *args])  # noqa: S606 (our own command)
        except OSError as exc:
            return fail(f"cannot run {cli}: {exc.strerror or exc}")
    try:
        return print_credentials(*quick)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
