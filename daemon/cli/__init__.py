"""The command line: parse, then hand over to the module that does the work.

Imports are deferred to each command so that short-lived commands start fast.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # argparse is imported when a parser is built: credential-process needs none
    import argparse

DEFAULT_CONFIG = "/etc/credential-sidecar/config.toml"


def _cmd_run(args: argparse.Namespace) -> int:
    from credential_sidecar.supervisor import run

    return run(args.config)


def _cmd_check_config(args: argparse.Namespace) -> int:
    from credential_sidecar.config.errors import ConfigError
    from credential_sidecar.upstream.preflight import validate

    try:
        config = validate(args.config)  # the same check start and reload make
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(f"{args.config}: valid ({len(config.connections)} connection(s))")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    import asyncio

    from credential_sidecar.devtools.demo import demo

    return asyncio.run(demo(key_type=args.key_type, key_store=args.key_store))


def _cmd_emulator(args: argparse.Namespace) -> int:
    import asyncio

    from credential_sidecar.devtools.emulator.cli import run

    return asyncio.run(run(args))


def _cmd_status(args: argparse.Namespace) -> int:
    from credential_sidecar.cli.status import status

    return status(args.config, as_json=args.json, name=args.name)


def _cmd_credential_process(args: argparse.Namespace) -> int:
    from credential_sidecar.cli.credential_process import run as credential_process

    return credential_process(args.name, config=args.config, socket_path=args.socket)


def _cmd_import_keys(args: argparse.Namespace) -> int:
    from credential_sidecar.cli.import_keys import import_keys

    return import_keys(args.file, args.name, secret_file=args.secret_file, user=args.user,
                       region=args.region, force=args.force)


def _cmd_test_connection(args: argparse.Namespace) -> int:
    from credential_sidecar.cli.connection_test import run as test_connection

    # Without --endpoint-url, botocore itself honours AWS_ENDPOINT_URL(_STS, _S3).
    return test_connection(args.config, args.name, endpoint_url=args.endpoint_url)


def _cmd_rotate_keys(args: argparse.Namespace) -> int:
    from credential_sidecar.cli.rotate_keys import run as rotate_keys

    return rotate_keys(args.config, args.name, delete_inactive=args.delete_inactive,
                       delete_old=args.delete_old, wait_seconds=args.wait_seconds,
                       endpoint_url=args.endpoint_url)


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=DEFAULT_CONFIG, help=f"default: {DEFAULT_CONFIG}")


def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--key-type", choices=["p256", "p384", "rsa"], default="p256")
    p.add_argument("--key-store", choices=["file", "softhsm"], default="file",
                   help="softhsm: the client key is generated on a throwaway SoftHSM2 token "
                        "(P-256, non-extractable); needs Debian's softhsm2 and p11-kit-modules")


def _emulator_args(p: argparse.ArgumentParser) -> None:
    from credential_sidecar.devtools.emulator.cli import configure_parser

    configure_parser(p)


def _status_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME", nargs="?",
                   help="one connection's whole record (id, notes, times, used by, key)")
    _config_arg(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _process_args(p: argparse.ArgumentParser) -> None:
    from credential_sidecar.cli.credential_process import configure_parser

    configure_parser(p)


def _import_keys_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE", help="accessKeys.csv, credentials.csv or rootkey.csv")
    p.add_argument("--name", required=True, help="the connection name to print a config block for")
    p.add_argument("--secret-file", help="where to store the secret (mode 0600; default:"
                   " /etc/credential-sidecar/NAME.secret); an existing file is kept")
    p.add_argument("--user", help="which user's row, when the file holds several")
    p.add_argument("--region", default="us-east-1", help="for the config block (us-east-1)")
    p.add_argument("--force", action="store_true", help="replace an existing secret file")


def _test_connection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME", help="the connection to test")
    _config_arg(p)
    p.add_argument("--endpoint-url", help="send the STS and S3 calls here (a test server);"
                   " default: $AWS_ENDPOINT_URL, else AWS")


def _rotate_keys_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME", help="the access-keys connection")
    _config_arg(p)
    p.add_argument("--delete-inactive", action="store_true",
                   help="with two keys already, delete the other one if it is inactive")
    p.add_argument("--delete-old", action="store_true",
                   help="delete the old key at the end (default: only deactivate it)")
    p.add_argument("--wait-seconds", type=float, default=60.0,
                   help="how long the new key may take to work, and the daemon to reload (60)")
    p.add_argument("--endpoint-url", help="send the IAM and STS calls here (a test server)")


Handler = Callable[["argparse.Namespace"], int]
Arguments = Callable[["argparse.ArgumentParser"], None]

# name, help, its arguments, its handler: one row a command, in the order --help lists them.
COMMANDS: tuple[tuple[str, str, Arguments, Handler], ...] = (
    ("run", "run the daemon in the foreground (systemd runs this)", _config_arg, _cmd_run),
    ("check-config", "validate a configuration file without starting", _config_arg,
     _cmd_check_config),
    ("demo", "throwaway CA, built-in emulator and the daemon on loopback", _demo_args, _cmd_demo),
    ("emulator", "the built-in IAM Roles Anywhere emulator, for tests", _emulator_args,
     _cmd_emulator),
    ("status", "the running daemon's connections", _status_args, _cmd_status),
    ("credential-process", "print a connection's credential_process JSON from the running daemon",
     _process_args, _cmd_credential_process),
    ("import-keys", "store the secret of an AWS console key file (CSV or rootkey.csv)",
     _import_keys_args, _cmd_import_keys),
    ("test-connection", "GetCallerIdentity, then ListBuckets, with a connection's credentials",
     _test_connection_args, _cmd_test_connection),
    ("rotate-keys", "rotate an access-key connection's key: create, prove, swap, retire",
     _rotate_keys_args, _cmd_rotate_keys),
)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """Every command; with ``only``, that command's arguments alone are set up (the others stay
    listed in --help), so ``run`` does not import the emulator's options, and aiohttp with them."""
    import argparse

    from credential_sidecar import __version__

    parser = argparse.ArgumentParser(
        prog="credential-sidecar",
        description="Keeps temporary AWS credentials fresh and serves them to local programs.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text, arguments, handler in COMMANDS:
        p = sub.add_parser(name, help=text)
        if only is None or name == only:
            arguments(p)
        p.set_defaults(func=handler)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["credential-process"]:
        # SDKs run this often: skip the full parser (and argparse, for NAME --socket PATH).
        from credential_sidecar.cli.credential_process import main as credential_process

        return credential_process(argv[1:])
    command = argv[0] if argv and any(argv[0] == row[0] for row in COMMANDS) else None
    args = build_parser(command).parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
