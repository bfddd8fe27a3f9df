"""The process around the daemon: signals, reloads, pid file, what systemd is told, exit code.

Kept apart from server.py (which assembles the daemon and applies a config) as uvicorn keeps its
supervisors apart from its server: everything here is about one process's life.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from credential_sidecar import hardening, logs
from credential_sidecar.config.errors import ConfigError
from credential_sidecar.config.load import load_config
from credential_sidecar.config.model import (
    Config,
)
from credential_sidecar.files import FileError
from credential_sidecar.server import Daemon
from credential_sidecar.state import pidfile
from credential_sidecar.systemd.activation import SocketPool
from credential_sidecar.systemd.link import ServiceLink, install_test_hooks
from credential_sidecar.systemd.notify import Notifier, listen_fds
from credential_sidecar.upstream.preflight import validate

log = logs.get_logger()

async def serve(
    config: Config, config_path: str | None = None, *, notifier: Notifier | None = None
) -> int:
    notifier = notifier or Notifier.from_env()
    stop = asyncio.Event()
    hangup = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, hangup.set)
    install_test_hooks(loop)
    daemon = Daemon(config, sockets=SocketPool(listen_fds()))
    try:
        await daemon.start()
    except (OSError, FileError) as exc:
        log.error("cannot start", error=str(exc))
        await daemon.stop()
        return 1
    link = ServiceLink(notifier, daemon._manager(), daemon._required,
                       ready_timeout=config.daemon.ready_timeout_seconds)
    link.start()
    pid_file = pidfile.write(config.daemon.state_dir)  # how rotate-keys finds us to reload
    while not stop.is_set():
        waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(hangup.wait())]
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for waiter in waiters:
            waiter.cancel()
        if hangup.is_set() and not stop.is_set():
            hangup.clear()
            link.reloading()
            link.reloaded(await _reload(daemon, config_path))
    log.info("stopping")
    link.stopping()
    pidfile.remove(pid_file)
    await link.close()
    await daemon.stop()
    log.info("stopped")
    return 0


async def _reload(daemon: Daemon, config_path: str | None) -> str | None:
    """SIGHUP: a config that does not validate is refused and the old one keeps serving.

    Returns what went wrong, in a few words for systemd's STATUS=, or None.
    """
    if config_path is None:
        log.warning("reload requested but the daemon was not started from a file")
        return "reload ignored: not started from a file"
    log.info("reloading", config=config_path)
    try:
        # The check check-config makes: shape, then every file the connections name.
        config = await asyncio.to_thread(validate, config_path)
    except ConfigError as exc:
        log.error("reload refused: the new config is invalid; still serving the old one",
                  problems=exc.problems)
        return f"reload refused: config invalid ({len(exc.problems)} problem(s))"
    try:
        await daemon.reload(config)
    except Exception as exc:  # whatever it was, the daemon keeps serving
        log.exception("reload incomplete; still serving", error=f"{type(exc).__name__}: {exc}")
        return "reload incomplete: see the log"
    problems = daemon.door_problems()
    log.info("reloaded", connections=len(config.connections), door_problems=problems or None)
    return "reload incomplete: " + "; ".join(problems.values()) if problems else None


def run(config_path: str) -> int:
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        if logs.writes_to_journal(sys.stderr):
            # Under systemd, before the config could say how to log: one JSON line at error
            # priority, so `journalctl -p err` shows why the start failed.
            logs.configure("json", "info")
            log.error("not starting: the configuration is invalid", config=config_path,
                      problems=exc.problems)
        else:
            print(exc, file=sys.stderr)
        return 2
    logs.configure(config.daemon.log_format, config.daemon.log_level)
    _harden()
    return asyncio.run(serve(config, config_path))


def _harden() -> None:
    """No core dump, no same-uid ptrace (hardening.py); a failure is logged, not fatal."""
    try:
        facts = hardening.harden()
    except OSError as exc:
        log.warning("process could not be made non-dumpable", error=str(exc))
        return
    if facts["dumpable"] != 0 or facts["core_limit"] != [0, 0]:
        log.warning("process only partly hardened: set LimitCORE=0", **facts)
    else:
        log.info("process hardened", **facts)

