"""``credential-sidecar credential-process NAME``: the credential_process JSON, from the daemon.

SDKs run this whenever their credentials near expiry, so it imports only the standard library and
never calls the upstream: it asks the running daemon for its cached set over the control socket.
Exit 0 with the Version 1 JSON on stdout; exit 1 with one line on stderr otherwise.

``NAME --socket PATH`` needs neither argparse nor tomllib (``client.quick_args``); the script
``credential-sidecar-process`` (``client.py`` run as a file) answers that shape alone, without
even ``site``, and execs this command for every other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from credential_sidecar.client import PROG, fail, print_credentials, quick_args, socket_from_config

if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence

DEFAULT_CONFIG = "/etc/credential-sidecar/config.toml"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help="the connection to print credentials for")
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--config", help=f"read [control] socket from here (default: {DEFAULT_CONFIG})"
    )
    where.add_argument("--socket", help="the daemon's control socket")


def run(name: str, *, config: str | None = None, socket_path: str | None = None) -> int:
    if socket_path is None:
        config = config or DEFAULT_CONFIG
        try:
            found = socket_from_config(config)
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            return fail(f"cannot read {config}: {reason}; or pass --socket PATH")
        if found is None:
            return fail(f"{config} has no [control] socket; or pass --socket PATH")
        socket_path = str(found)
    return print_credentials(name, socket_path)


def main(argv: Sequence[str]) -> int:
    quick = quick_args(argv)
    if quick is not None:
        return print_credentials(*quick)
    import argparse

    parser = argparse.ArgumentParser(
        prog=f"{PROG} credential-process",
        description="Print a connection's credential_process JSON from the running daemon.",
    )
    configure_parser(parser)
    args = parser.parse_args(argv)
    return run(args.name, config=args.config, socket_path=args.socket)
