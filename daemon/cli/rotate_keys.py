"""``credential-sidecar rotate-keys NAME``: replace an access-key connection's long-term key.

AWS recommends rotating access keys every 90 days and lets an identity hold two, so rotation is
create, prove, swap, retire:

1. list the identity's keys (with the configured key); with two already, stop and explain, unless
   ``--delete-inactive`` may delete the other one because it is inactive;
2. create a key; its secret goes at once to ``<secret file>.new`` (0600): AWS shows it only once;
3. prove it: the daemon's own STS call (GetSessionToken or AssumeRole) must succeed three times in
   a row, within ``--wait-seconds`` (IAM is eventually consistent; a new key may fail at first);
4. swap: the old secret file stays as ``<secret file>.bak``, the new one is renamed into place,
   and the config's ``access_key_id`` line (and ``created``, if set) is rewritten;
5. reload the running daemon (SIGHUP; its PID from ``state_dir/daemon.pid``) and wait until it
   reports renewing with the new key;
6. deactivate the old key (``--delete-old``: then delete it), remove the backup.

Whatever fails, a working key stays configured, and the last lines say what state each key is in
and what, if anything, is left to do by hand. Exit 0 done, 4 failed with nothing lost, 2 when the
config or NAME is wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
import urllib.error
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from credential_sidecar.clock import SystemClock
from credential_sidecar.config.edit import ConfigEditError, rewrite, set_key
from credential_sidecar.config.errors import ConfigError
from credential_sidecar.config.load import load_connection
from credential_sidecar.config.model import AccessKeysConnection, Config
from credential_sidecar.files import FileError
from credential_sidecar.logs import SECRETS
from credential_sidecar.state import pidfile
from credential_sidecar.upstream.base import UpstreamError
from credential_sidecar.upstream.secret_file import SecretFile, write_secret

OK, FAILED, BAD_CONFIG = 0, 4, 2
PROOFS = 3  # consecutive successful STS calls with the new key


class Stop(Exception):
    """A step failed; the message says which and why (state is reported by the caller)."""


@dataclass
class Key:
    id: str
    status: str
    created: datetime | None = None


@dataclass
class Ledger:
    """What each key is right now, to report on success and (above all) on failure."""

    configured: str
    keys: dict[str, str] = field(default_factory=dict)  # key id -> state in words
    todo: list[str] = field(default_factory=list)

    def report(self, out: TextIO) -> None:
        for key_id, state in self.keys.items():
            mark = " (configured: the daemon uses this one)" if key_id == self.configured else ""
            print(f"  key {key_id}: {state}{mark}", file=out)
        for line in self.todo:
            print(f"  to do: {line}", file=out)


class Rotation:
    def __init__(self, config: Config, connection: AccessKeysConnection, *,
                 delete_inactive: bool, delete_old: bool, wait_seconds: float,
                 endpoint_url: str | None, out: TextIO) -> None:
        self.config = config
        self.connection = connection
        self.delete_inactive = delete_inactive
        self.delete_old = delete_old
        self.wait_seconds = wait_seconds
        self.endpoint_url = endpoint_url
        self.out = out
        self.config_path = config.source
        # Without secret_access_key_file the secret is a systemd credential: preflight stops.
        self.secret_path = Path(connection.secret_access_key_file or "/nonexistent/secret")
        self.pending = self.secret_path.with_name(self.secret_path.name + ".new")
        self.backup = self.secret_path.with_name(self.secret_path.name + ".bak")
        self.ledger = Ledger(connection.access_key_id)
        self.old_id = connection.access_key_id
        self.old_secret = ""
        self._stack = AsyncExitStack()
        from aiobotocore.session import AioSession

        self._session = AioSession()

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    async def client(self, service: str, key_id: str, secret: str) -> Any:
        from credential_sidecar.upstream.aws_clients import boto_config, side_endpoint

        if service == "sts":
            endpoint = self.endpoint_url or self.connection.endpoint
        else:
            endpoint = side_endpoint(self.connection.endpoint, self.endpoint_url)
        return await self._stack.enter_async_context(self._session.create_client(
            service, region_name=self.connection.region, endpoint_url=endpoint,
            aws_access_key_id=key_id, aws_secret_access_key=secret, config=boto_config(15.0)))

    async def call(self, what: str, call: Callable[[], Awaitable[Any]]) -> Any:
        from credential_sidecar.upstream.aws_clients import CALL_ERRORS, call_error

        try:
            return await call()
        except CALL_ERRORS as exc:
            error = call_error(exc, what)
            raise Stop(f"{what} failed: {error.code}: {error.message}") from None

    # -- 0. before touching anything ----------------------------------------------------------

    def preflight(self) -> None:
        raw = str(self.connection.secret_access_key_file or "")
        if not raw or "CREDENTIALS_DIRECTORY" in raw or (
                os.environ.get("CREDENTIALS_DIRECTORY")
                and raw.startswith(os.environ["CREDENTIALS_DIRECTORY"])):
            raise Stop("the secret comes from a systemd credential ($CREDENTIALS_DIRECTORY),"
                       " which systemd copies only when the service starts: a reload cannot hand"
                       " the daemon a new one. Rotate it by hand: create a key, write its secret"
                       " to the LoadCredential= source file, update access_key_id, systemctl"
                       " restart credential-sidecar, then deactivate the old key")
        try:
            self.old_secret, _ = SecretFile(self.secret_path).read()
        except FileError as exc:
            raise Stop(str(exc)) from None
        SECRETS.add(self.old_secret)
        for leftover in (self.pending, self.backup):
            if leftover.exists():
                raise Stop(f"{leftover} exists, left by an earlier rotation: check which key it"
                           " holds (the end of that run said), then remove or move it")
        if self.config_path is None:
            raise Stop("the config was not read from a file")
        try:
            text = self.config_path.read_bytes().decode("utf-8")
            rewrite(text, self.connection.name, "AKIA" + "A" * 16)
        except (OSError, UnicodeDecodeError, ConfigEditError) as exc:
            raise Stop(f"{self.config_path} cannot be updated with the new key id: {exc};"
                       " nothing was changed") from None

    # -- 1. the identity's keys ----------------------------------------------------------------

    async def list_keys(self) -> list[Key]:
        iam = await self.client("iam", self.old_id, self.old_secret)
        listed = await self.call("iam:ListAccessKeys", iam.list_access_keys)
        keys = [Key(k["AccessKeyId"], k["Status"], k.get("CreateDate"))
                for k in listed.get("AccessKeyMetadata", [])]
        for key in keys:
            self.ledger.keys[key.id] = key.status
        if self.old_id not in self.ledger.keys:
            raise Stop(f"the configured key {self.old_id} is not among the keys IAM lists for"
                       " its identity")
        return keys

    async def make_room(self, keys: list[Key]) -> None:
        others = [k for k in keys if k.id != self.old_id]
        if not others:
            return
        other = others[0]
        if other.status == "Inactive" and self.delete_inactive:
            iam = await self.client("iam", self.old_id, self.old_secret)
            await self.call(f"iam:DeleteAccessKey {other.id}",
                            lambda: iam.delete_access_key(AccessKeyId=other.id))
            self.ledger.keys[other.id] = "deleted (it was inactive; --delete-inactive)"
            self.say(f"deleted the inactive key {other.id} to make room")
            return
        created = f", created {other.created:%Y-%m-%d}" if other.created else ""
        hint = ("pass --delete-inactive to let rotate-keys delete it" if other.status == "Inactive"
                else "deactivate and delete it if nothing uses it")
        raise Stop(f"the identity already has two access keys, the most AWS allows: the configured"
                   f" {self.old_id} and {other.id} ({other.status}{created}); {hint}, then run"
                   " rotate-keys again")

    # -- 2. and 3. a new key, proven ------------------------------------------------------------

    async def create(self) -> tuple[Key, str]:
        iam = await self.client("iam", self.old_id, self.old_secret)
        made = (await self.call("iam:CreateAccessKey", iam.create_access_key))["AccessKey"]
        key = Key(made["AccessKeyId"], made.get("Status", "Active"), made.get("CreateDate"))
        secret = made["SecretAccessKey"]
        SECRETS.add(secret)
        self.ledger.keys[key.id] = f"{key.status}, new, not yet used"
        try:
            write_secret(self.pending, secret)  # AWS will never show this secret again
            # Owned as the old file is: the daemon may run as its own user (systemd's User=).
            owner = self.secret_path.stat()
            os.chown(self.pending, owner.st_uid, owner.st_gid)
        except OSError as exc:
            await self.discard(key, f"its secret could not be saved ({exc.strerror})")
            raise Stop(f"cannot write {self.pending}: {exc.strerror}") from None
        self.ledger.keys[key.id] = f"{key.status}, new, secret saved in {self.pending}"
        self.say(f"created {key.id}; its secret is saved in {self.pending} (mode 0600)")
        return key, secret

    async def prove(self, key: Key) -> None:
        """The daemon's own call with the new key, until it works PROOFS times in a row."""
        from credential_sidecar.upstream.access_keys import AccessKeySource

        trial = self.connection.model_copy(update={
            "access_key_id": key.id, "secret_access_key_file": self.pending,
            "endpoint": self.endpoint_url or self.connection.endpoint})
        source = AccessKeySource(trial, SystemClock(), learn=False)
        deadline = time.monotonic() + self.wait_seconds
        streak, attempts, last = 0, 0, None
        try:
            while streak < PROOFS:
                attempts += 1
                try:
                    await source.fetch()
                    streak += 1
                except UpstreamError as error:
                    streak, last = 0, error
                if streak < PROOFS:
                    if time.monotonic() + 1 > deadline:
                        raise Stop(f"the new key {key.id} did not work within"
                                   f" {self.wait_seconds:g} s ({attempts} tries; last: {last})")
                    await asyncio.sleep(1)
        finally:
            await source.close()
        self.say(f"the new key works: {PROOFS} STS calls in a row succeeded"
                 f" ({attempts} tries)")

    async def discard(self, key: Key, why: str) -> None:
        """Undo a new key that will not be used: delete it with the old key."""
        iam = await self.client("iam", self.old_id, self.old_secret)
        try:
            await self.call(f"iam:DeleteAccessKey {key.id}",
                            lambda: iam.delete_access_key(AccessKeyId=key.id))
        except Stop as stop:
            self.ledger.keys[key.id] = f"Active, unused ({why}); could not delete it: {stop}"
            self.ledger.todo.append(f"delete {key.id}: aws iam delete-access-key"
                                    f" --access-key-id {key.id}")
            return
        self.ledger.keys[key.id] = f"deleted ({why})"
        with contextlib.suppress(FileNotFoundError):
            self.pending.unlink()

    # -- 4. swap --------------------------------------------------------------------------------

    def swap(self, key: Key) -> None:
        assert self.config_path is not None
        os.link(self.secret_path, self.backup)  # the old secret, kept until the end
        try:
            os.replace(self.pending, self.secret_path)
        except OSError:
            self.backup.unlink()
            raise
        created = key.created.astimezone(UTC).date() if key.created else None
        try:
            set_key(self.config_path, self.connection.name, key.id, created)
        except (OSError, ConfigEditError):
            # Put the old secret back: the config still names the old key.
            os.replace(self.backup, self.secret_path)
            raise
        self.ledger.configured = key.id
        self.ledger.keys[key.id] = f"Active, in {self.secret_path} and {self.config_path}"
        self.ledger.keys[self.old_id] = f"Active, previous secret kept in {self.backup}"
        self.say(f"{self.secret_path} now holds the new secret (the old one is in {self.backup});"
                 f" {self.config_path} names {key.id}")

    # -- 5. reload --------------------------------------------------------------------------------

    def daemon_rows(self) -> dict[str, dict[str, Any]] | None:
        """The running daemon's status rows, over the control socket or the health listener."""
        from credential_sidecar.cli.status import fetch_status
        from credential_sidecar.client import Unreachable, ask

        report: dict[str, Any] | None = None
        if self.config.control is not None:
            with contextlib.suppress(Unreachable):
                answer = ask(self.config.control.socket, {"op": "status"})
                report = answer if answer.get("ok") is not False else None
        if report is None and self.config.health is not None:
            with contextlib.suppress(OSError, urllib.error.URLError, ValueError):
                report = fetch_status(f"http://{self.config.health.listen}/")
        if report is None:
            return None
        return {str(r.get("name")): r for r in report.get("connections", [])}

    async def reload(self, key: Key) -> None:
        pid = pidfile.find(self.config.daemon.state_dir)
        if pid is None:
            self.say(f"no running daemon found ({pidfile.pid_path(self.config.daemon.state_dir)}):"
                     " it will use the new key when it starts")
            return
        os.kill(pid, signal.SIGHUP)
        self.say(f"asked the daemon (pid {pid}) to reload")
        if self.config.control is None and self.config.health is None:
            self.say("the config has neither [control] nor [health]: cannot confirm the reload")
            return
        deadline = time.monotonic() + self.wait_seconds
        seen: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            rows = await asyncio.to_thread(self.daemon_rows)
            seen = (rows or {}).get(self.connection.name)
            if seen and seen.get("renewed_with_key_id") == key.id and not seen.get("last_error"):
                self.say(f"the daemon renewed with the new key at {seen.get('last_renewal')}")
                return
            await asyncio.sleep(0.5)
        error = seen.get("last_error") if seen else None
        detail = f" (last error: {error})" if error else ""
        self.ledger.todo.append(
            f"check `credential-sidecar status`; once {self.connection.name} runs on {key.id},"
            f" deactivate the old key: aws iam update-access-key --access-key-id {self.old_id}"
            " --status Inactive")
        raise Stop(f"the daemon (pid {pid}) did not confirm renewing with the new key within"
                   f" {self.wait_seconds:g} s{detail}; the old key was left active")

    # -- 6. retire the old key --------------------------------------------------------------------

    async def retire(self, key: Key, secret: str) -> None:
        iam = await self.client("iam", key.id, secret)  # the new key: proven, and now in use
        try:
            await self.call(f"iam:UpdateAccessKey {self.old_id} Inactive",
                            lambda: iam.update_access_key(AccessKeyId=self.old_id,
                                                          Status="Inactive"))
        except Stop:
            self.ledger.keys[self.old_id] = f"Active, no longer used; old secret in {self.backup}"
            self.ledger.todo.append(f"deactivate {self.old_id}: aws iam update-access-key"
                                    f" --access-key-id {self.old_id} --status Inactive; then"
                                    f" remove {self.backup}")
            raise
        self.ledger.keys[self.old_id] = "Inactive"
        self.say(f"deactivated the old key {self.old_id}")
        if self.delete_old:
            try:
                await self.call(f"iam:DeleteAccessKey {self.old_id}",
                                lambda: iam.delete_access_key(AccessKeyId=self.old_id))
            except Stop:
                self.ledger.todo.append(f"delete {self.old_id}: aws iam delete-access-key"
                                        f" --access-key-id {self.old_id}")
                raise
            self.ledger.keys[self.old_id] = "deleted (--delete-old)"
            self.say(f"deleted the old key {self.old_id}")
        self.backup.unlink()

    # -- all of it --------------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            self.preflight()
            self.say(f'Rotating the key of connection "{self.connection.name}" ({self.old_id})')
            keys = await self.list_keys()
            await self.make_room(keys)
            key, secret = await self.create()
            try:
                await self.prove(key)
            except Stop as stop:
                await self.discard(key, "it never worked")
                raise Stop(f"{stop}; the old key stays configured") from None
            try:
                self.swap(key)
            except (OSError, ConfigEditError) as exc:
                await self.discard(key, "the swap failed")
                raise Stop(f"could not put the new key in place ({exc}); the old key stays"
                           " configured") from None
            await self.reload(key)
            await self.retire(key, secret)
        finally:
            await self._stack.aclose()


def run(config_path: str, name: str, *, delete_inactive: bool = False, delete_old: bool = False,
        wait_seconds: float = 60.0, endpoint_url: str | None = None,
        out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    from credential_sidecar import logs

    logs.configure("console", "error", stream=err)
    try:
        config, connection = load_connection(config_path, name)
    except ConfigError as exc:
        print(exc, file=err)
        return BAD_CONFIG
    if not isinstance(connection, AccessKeysConnection):
        print(f"{config_path}: connection {name!r} is {connection.type}; only access-keys"
              " connections have long-term keys to rotate", file=err)
        return BAD_CONFIG
    rotation = Rotation(config, connection, delete_inactive=delete_inactive,
                        delete_old=delete_old, wait_seconds=wait_seconds,
                        endpoint_url=endpoint_url, out=out)
    try:
        asyncio.run(rotation.run())
    except Stop as stop:
        print(f"rotate-keys failed: {stop}", file=err)
        print("Where things stand:", file=err)
        rotation.ledger.report(err)
        return FAILED
    except KeyboardInterrupt:
        print("rotate-keys interrupted. Where things stand:", file=err)
        rotation.ledger.report(err)
        return 130
    print("Rotation done:", file=out)
    rotation.ledger.report(out)
    return OK


__all__ = ["Rotation", "run"]
