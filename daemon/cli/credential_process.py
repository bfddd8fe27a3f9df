"""``credential-sidecar credential-process NAME``: the credential_process JSON, from the daemon.

SDKs run this whenever their credentials near expiry, so it imports only the standard library and
never calls the upstream: it asks the running daemon for its cached set over the control socket.
Exit 0 with the Version 1 JSON on stdout; exit 1 with one line on stderr otherwise.

The command lives in ``credential_sidecar.client`` (self-contained, so that it also runs as the
``credential-sidecar-process`` script under ``python3 -I -S``); this is its place in the CLI.
"""

from __future__ import annotations

from collections.abc import Sequence

from credential_sidecar.client import DEFAULT_CONFIG, PROG, configure_parser, run
from credential_sidecar.client import main as client_main

__all__ = ["DEFAULT_CONFIG", "PROG", "configure_parser", "main", "run"]


def main(argv: Sequence[str]) -> int:
    """The command as ``credential-sidecar credential-process``, with that name in its usage."""
    return client_main(argv, prog=f"{PROG} credential-process")
