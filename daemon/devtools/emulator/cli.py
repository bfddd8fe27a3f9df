"""``credential-sidecar emulator``: its command line (the options are in the package docstring)."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import structlog
from cryptography import x509

from credential_sidecar.clock import Clock, clock_from_env
from credential_sidecar.config.values import MAX_ROLE_DURATION as MAX_DURATION
from credential_sidecar.config.values import MIN_DURATION, Address
from credential_sidecar.devtools.emulator.server import Emulator, Profile
from credential_sidecar.files import atomic_write

DEFAULT_TRUST_ANCHOR_ARN = "arn:aws:rolesanywhere:us-east-1:111122223333:trust-anchor/emulator"
DEFAULT_PROFILE_ARN = "arn:aws:rolesanywhere:us-east-1:111122223333:profile/emulator"
DEFAULT_ROLE_ARN = "arn:aws:iam::111122223333:role/emulator"
DEFAULT_LISTEN = "127.0.0.1:8443"


def _duration(text: str) -> int:
    value = int(text)
    if not MIN_DURATION <= value <= MAX_DURATION:
        raise argparse.ArgumentTypeError(f"must be between {MIN_DURATION} and {MAX_DURATION}")
    return value


def _listen(text: str) -> Address:
    """The one listen-address rule the daemon's config uses too."""
    try:
        return Address.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--listen: {exc}") from exc


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the emulator's options (the CLI mounts this as ``credential-sidecar emulator``)."""
    parser.description = (
        "Run a local IAM Roles Anywhere CreateSession emulator that verifies SigV4-X509 "
        "signatures and certificate chains like AWS and issues fake credentials. "
        "Faults are driven over POST/DELETE /_emulator/faults; GET /_emulator/stats "
        "lists what was issued."
    )
    parser.add_argument(
        "--listen", default=Address.parse(DEFAULT_LISTEN), type=_listen, metavar="HOST:PORT",
        help=f"address to listen on (default {DEFAULT_LISTEN}; port 0 picks a free port)",
    )
    parser.add_argument(
        "--ca", action="append", required=True, type=Path, metavar="FILE", dest="ca",
        help="PEM file of CA certificate(s) the trust anchor trusts (repeatable)",
    )
    parser.add_argument(
        "--trust-anchor-arn", default=DEFAULT_TRUST_ANCHOR_ARN, metavar="ARN",
        help=f"trust anchor ARN; its region is the emulator's region "
        f"(default {DEFAULT_TRUST_ANCHOR_ARN})",
    )
    parser.add_argument(
        "--profile-arn", default=DEFAULT_PROFILE_ARN, metavar="ARN",
        help=f"profile ARN (default {DEFAULT_PROFILE_ARN})",
    )
    parser.add_argument(
        "--role-arn", action="append", default=None, metavar="ARN", dest="role_arns",
        help=f"role ARN the profile allows (repeatable; default {DEFAULT_ROLE_ARN})",
    )
    parser.add_argument(
        "--max-duration", type=_duration, default=MAX_DURATION, metavar="SECONDS",
        help=f"the profile's maximum durationSeconds (default {MAX_DURATION})",
    )
    parser.add_argument(
        "--port-file", type=Path, default=None, metavar="PATH",
        help="write the bound port to PATH once listening (useful with port 0)",
    )


def emulator_from_args(args: argparse.Namespace, clock: Clock | None = None) -> Emulator:
    """Build the emulator the options describe; ValueError/OSError for bad options."""
    cas: list[x509.Certificate] = []
    for path in args.ca:
        found = x509.load_pem_x509_certificates(Path(path).read_bytes())
        cas.extend(found)
    profile = Profile(
        role_arns=tuple(args.role_arns or [DEFAULT_ROLE_ARN]),
        max_duration_seconds=args.max_duration,
    )
    return Emulator(
        trust_anchors={args.trust_anchor_arn: cas},
        profiles={args.profile_arn: profile},
        clock=clock,
    )


def _write_port_file(path: Path, port: int) -> None:
    """Write atomically so a poller never reads a half-written file."""
    atomic_write(path, f"{port}\n".encode("ascii"), mode=0o644)


async def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; 0 on a clean stop, 2 for bad options."""
    try:
        emulator = emulator_from_args(args, clock=clock_from_env())
        host, port = args.listen.host, args.listen.port
    except (OSError, ValueError) as exc:
        print(f"credential-sidecar emulator: {exc}", file=sys.stderr, flush=True)
        return 2
    try:
        url = await emulator.start(host, port)
    except OSError as exc:
        print(f"credential-sidecar emulator: cannot listen on {args.listen}: {exc}",
              file=sys.stderr, flush=True)
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
        if args.port_file is not None:
            _write_port_file(Path(args.port_file), int(url.rsplit(":", 1)[1]))
        print(
            f"trust anchor {args.trust_anchor_arn}, profile {args.profile_arn}, roles "
            f"{', '.join(args.role_arns or [DEFAULT_ROLE_ARN])}",
            file=sys.stderr, flush=True,
        )
        print(f"emulator listening on {url}", flush=True)
        await stop.wait()
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
        await emulator.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m daemon.emulator``: logs go to stderr so stdout holds only the ready line."""
    parser = argparse.ArgumentParser(prog="credential-sidecar emulator")
    configure_parser(parser)
    args = parser.parse_args(argv)
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    return asyncio.run(run(args))









