"""Access-key connections: the long-term key buys STS session credentials; only those are served.

The daemon signs ``GetSessionToken`` (or ``AssumeRole`` when a role is configured) with the
connection's long-term key through aiobotocore, and hands out what STS returns. The long-term
secret is read from its 0600 file (re-read whenever the file changes on disk) and never leaves
this module. Service errors keep STS's own code and message; network trouble becomes a retryable
code, so the manager's schedule and failure rules are the same as for Roles Anywhere.

Beside the credentials, each source learns a few facts about its key once, in the background:
who it belongs to (``GetCallerIdentity``: the account, and whether it is the account root), and
when it was created (IAM ``ListAccessKeys`` when the key may call it, else ``created`` from the
config), so the daemon can report the key's age and warn when it is due for rotation.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiobotocore.session import AioSession
from botocore.config import Config as BotoConfig
from botocore.exceptions import (
    BotoCoreError,
)

from credential_sidecar.arn import Arn
from credential_sidecar.clock import Clock, utc
from credential_sidecar.config.model import AccessKeysConnection, Connection
from credential_sidecar.credentials import Credentials, iso_z
from credential_sidecar.files import FileError, stat_key
from credential_sidecar.logs import SECRETS, get_logger
from credential_sidecar.upstream.aws_clients import (
    CALL_ERRORS,
    boto_config,
    call_error,
    side_endpoint,
)
from credential_sidecar.upstream.aws_network import boto_network
from credential_sidecar.upstream.base import UpstreamError, digest
from credential_sidecar.upstream.endpoints import (
    EndpointError,
    default_partitions,
    resolve_endpoint,
)
from credential_sidecar.upstream.key_facts import DAY, KeyFacts, config_created
from credential_sidecar.upstream.network import CABundleError
from credential_sidecar.upstream.proxy import ProxyConfigError
from credential_sidecar.upstream.secret_file import SecretFile

log = get_logger()
WARN_EVERY = DAY  # repeat the key-age warning at most daily


















def credentials_from_response(
    response: dict[str, Any], issued_at: float, account_id: str | None, long_term_secret: str
) -> Credentials:
    """A 2xx without a usable set is an error, never an empty success."""
    try:
        creds = response["Credentials"]
        access_key, secret, token = (
            creds["AccessKeyId"], creds["SecretAccessKey"], creds["SessionToken"]
        )
        SECRETS.add(secret, token)
        expiration = creds["Expiration"]
        if isinstance(expiration, str):
            expiration = datetime.fromisoformat(expiration.replace("Z", "+00:00"))
        if expiration.tzinfo is None:
            expiration = expiration.replace(tzinfo=UTC)
        expiration = expiration.astimezone(UTC)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UpstreamError(
            "MalformedResponse", f"STS answered without a usable credential set ({exc!r})"
        ) from None
    if not (access_key and secret and token):
        raise UpstreamError("MalformedResponse", "STS answered with empty credentials")
    if secret == long_term_secret:
        # Whatever happened upstream, the long-term secret is never handed to a client.
        raise UpstreamError("MalformedResponse", "STS answered with the long-term key itself")
    assumed = (response.get("AssumedRoleUser") or {}).get("Arn")
    if assumed:
        arn = Arn.split(str(assumed))
        account_id = arn.account if arn is not None and arn.account else account_id
    return Credentials(
        access_key_id=access_key, secret_access_key=secret, session_token=token,
        expiration=expiration, issued_at=utc(issued_at), account_id=account_id,
    )







def default_url(service: str, connection: AccessKeysConnection) -> str:
    """Where botocore will send ``service`` calls without an endpoint_url: the URL the proxy
    decision (NO_PROXY) is made for. STS as the ruleset says (upstream/endpoints.py); IAM at
    ``iam.<partition's DNS suffix>`` (its partition-global endpoint)."""
    c = connection
    if service == "sts":
        return resolve_endpoint("sts", c.region, use_fips=c.use_fips_endpoint,
                                use_dualstack=c.use_dualstack_endpoint).url
    for name in (f"AWS_ENDPOINT_URL_{service.upper()}", "AWS_ENDPOINT_URL"):
        if os.environ.get(name, "").strip():
            return os.environ[name].strip()
    return f"https://{service}.{default_partitions().for_region(c.region).dns_suffix}"


class AccessKeySource:
    """GetSessionToken / AssumeRole with one connection's long-term key (CredentialSource)."""

    def __init__(
        self,
        connection: AccessKeysConnection,
        clock: Clock,
        *,
        warn_after_days: int = 90,
        session: AioSession | None = None,
        timeout: float = 10.0,
        learn: bool = True,
        daemon_ca_bundle: Path | None = None,
    ) -> None:
        self.name = connection.name
        self.connection = connection
        self.clock = clock
        self.warn_after_days = warn_after_days
        self._session = session or AioSession()
        self._timeout = timeout
        self._config = boto_config(timeout)
        self._secret: str | None = None
        self._secret_stat: tuple[int, int, int, int] | None = None
        self._stack: AsyncExitStack | None = None
        self._sts: Any = None
        self._stale = False  # the STS client signs with a key or secret no longer current
        self.renewed_with: str | None = None  # the key id of the last successful fetch
        self.facts = self._initial_facts()
        self._learning: asyncio.Task[None] | None = None
        self._learned_key: str | None = None
        self._warned_at: float | None = None
        self._learn_facts = learn  # False: one-off uses (test-connection) make no extra calls
        self.daemon_ca_bundle = daemon_ca_bundle

    # -- the long-term key ------------------------------------------------------------------------

    def _initial_facts(self) -> KeyFacts:
        created = config_created(self.connection)
        return KeyFacts(self.connection.access_key_id, created, "config" if created else None)

    def secret_file(self) -> SecretFile:
        return SecretFile.for_connection(self.name, self.connection.secret_access_key_file)

    async def _long_term_secret(self) -> str:
        """The secret, re-read when its file changed on disk (rotation, new systemd credential)."""
        try:
            secret_file = self.secret_file()
            st = await asyncio.to_thread(os.stat, secret_file.path)
            if self._secret is None or stat_key(st) != self._secret_stat:
                secret, opened = await asyncio.to_thread(secret_file.read)
                SECRETS.add(secret)
                if self._secret is not None and secret != self._secret:
                    log.info("secret access key file changed on disk; using it",
                             connection=self.name, path=str(secret_file.path))
                    self._stale = True  # the next fetch makes a client with it
                self._secret, self._secret_stat = secret, stat_key(opened)
        except FileError as exc:
            raise UpstreamError("FileError", str(exc)) from None
        except OSError as exc:
            path = self.connection.secret_access_key_file
            raise UpstreamError(
                "FileError", f"secret access key file {path} cannot be read: {exc.strerror}"
            ) from None
        return self._secret

    async def secret_changed(self) -> bool:
        """True when the secret file on disk is no longer the one read last (SIGHUP re-check)."""
        try:
            st = await asyncio.to_thread(os.stat, self.secret_file().path)
        except (OSError, FileError):
            return False
        return self._secret_stat is not None and stat_key(st) != self._secret_stat

    def network(self, service: str, endpoint: str | None) -> tuple[dict[str, Any], BotoConfig]:
        """``verify`` and a Config with the proxy decided as for Roles Anywhere (curl's rules,
        NO_PROXY with CIDR), never botocore's own environment reading (docs/network.md)."""
        c = self.connection
        try:
            target = endpoint or default_url(service, c)
            net = boto_network(
                target, proxy=c.proxy, no_proxy=c.no_proxy,
                proxy_credentials_file=c.proxy_credentials_file, ca_bundle=c.ca_bundle,
                daemon_ca_bundle=self.daemon_ca_bundle,
            )
        except (ProxyConfigError, CABundleError, EndpointError) as exc:
            raise UpstreamError("NetworkConfigError", str(exc)) from None
        extra: dict[str, Any] = dict(net.config_kwargs())
        if c.use_fips_endpoint is not None:
            extra["use_fips_endpoint"] = c.use_fips_endpoint
        if c.use_dualstack_endpoint is not None:
            extra["use_dualstack_endpoint"] = c.use_dualstack_endpoint
        return net.client_kwargs(), self._config.merge(BotoConfig(**extra))

    async def _client(self, service: str, key_id: str, secret: str, endpoint: str | None) -> Any:
        """A client signing with the long-term key, closed with this source."""
        if self._stack is None:
            self._stack = AsyncExitStack()
        client_kwargs, config = self.network(service, endpoint)
        try:
            return await self._stack.enter_async_context(self._session.create_client(
                service, region_name=self.connection.region, endpoint_url=endpoint,
                aws_access_key_id=key_id, aws_secret_access_key=secret, config=config,
                **client_kwargs,
            ))
        except BotoCoreError as exc:
            raise UpstreamError("ClientConfigError", str(exc)) from None

    async def _close_clients(self) -> None:
        stack, self._stack, self._sts = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    # -- CredentialSource -------------------------------------------------------------------------

    async def binding(self) -> str:
        c = self.connection
        self._start_learning()
        endpoint = (c.endpoint or os.environ.get("AWS_ENDPOINT_URL_STS")
                    or os.environ.get("AWS_ENDPOINT_URL") or "")
        return digest(c.type, c.access_key_id, c.role_arn, c.session_name, c.external_id,
                      c.region, c.duration_seconds, endpoint)

    def session_name(self) -> str:
        return self.connection.session_name or f"credential-sidecar-{self.name}"[:64]

    async def fetch(self) -> Credentials:
        c = self.connection  # one key id and one secret for this whole call
        secret = await self._long_term_secret()
        if self._stale:
            # Only here: the manager runs one fetch per connection at a time, so no call is
            # in flight on the client being closed.
            await self._close_clients()
            self._stale = False
        if self._sts is None:
            self._sts = await self._client("sts", c.access_key_id, secret, c.endpoint)
        where = self._sts.meta.endpoint_url
        now = self.clock.time()
        try:
            async with asyncio.timeout(self._timeout + 5):
                if c.role_arn:
                    params: dict[str, Any] = {
                        "RoleArn": c.role_arn, "RoleSessionName": self.session_name(),
                        "DurationSeconds": c.duration_seconds,
                    }
                    if c.external_id:
                        params["ExternalId"] = c.external_id
                    response = await self._sts.assume_role(**params)
                else:
                    response = await self._sts.get_session_token(DurationSeconds=c.duration_seconds)
        except CALL_ERRORS as exc:
            raise call_error(exc, where) from None
        self._start_learning()
        if self.facts.account is None and self._learning is not None:
            # GetSessionToken does not say which account; the first set waits (briefly) for
            # GetCallerIdentity, so that container clients get AccountId from the start.
            await asyncio.wait({self._learning}, timeout=2.0)
        creds = credentials_from_response(response, now, self.facts.account, secret)
        self.renewed_with = c.access_key_id
        self.check_age()
        return creds

    async def close(self) -> None:
        task, self._learning = self._learning, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._close_clients()

    # -- a new key (rotation) ---------------------------------------------------------------------

    async def recheck(self) -> bool:
        if await self.secret_changed():
            log.info("secret access key file changed on disk, renewing", connection=self.name)
            return True
        return False

    async def rekey(self, connection: Connection) -> bool:
        if not isinstance(connection, AccessKeysConnection):
            return False
        await self.update(connection)
        log.info("access key changed, renewing with it", connection=self.name,
                 access_key_id=connection.access_key_id)
        return True

    async def update(self, connection: AccessKeysConnection) -> None:
        """Switch to another key of the same connection; the caller renews at once."""
        if connection.access_key_id != self.connection.access_key_id:
            self._learned_key, self._warned_at = None, None
        self.connection = connection
        self.facts = self._initial_facts() if self._learned_key is None else self.facts
        self._secret, self._secret_stat = None, None
        self._stale = True

    # -- key facts: owner, creation date, age -----------------------------------------------------

    def _start_learning(self) -> None:
        key_id = self.connection.access_key_id
        if not self._learn_facts or self._learned_key == key_id or (
                self._learning and not self._learning.done()):
            return
        self._learning = asyncio.get_running_loop().create_task(
            self._learn(key_id), name=f"key-facts:{self.name}")

    async def _learn(self, key_id: str) -> None:
        """GetCallerIdentity, then IAM ListAccessKeys for this key; once per key."""
        facts = self._initial_facts()
        transient = False
        try:
            secret = await self._long_term_secret()
        except UpstreamError:
            return  # the renewal reports it; try again after the next success
        async with AsyncExitStack() as stack:
            async def client(service: str, endpoint: str | None) -> Any:
                client_kwargs, config = self.network(service, endpoint)
                return await stack.enter_async_context(self._session.create_client(
                    service, region_name=self.connection.region, endpoint_url=endpoint,
                    aws_access_key_id=key_id, aws_secret_access_key=secret, config=config,
                    **client_kwargs))

            try:
                sts = await client("sts", self.connection.endpoint)
                who = await sts.get_caller_identity()
                facts.arn, facts.account = who.get("Arn"), who.get("Account")
            except (*CALL_ERRORS, UpstreamError) as exc:
                error = (exc if isinstance(exc, UpstreamError)
                         else call_error(exc, "sts:GetCallerIdentity"))
                transient = not error.persistent
                log.info("cannot tell whose key this is", connection=self.name, error=str(error))
            try:
                iam = await client("iam", side_endpoint(self.connection.endpoint))
                listed = await iam.list_access_keys()
                mine = next((k for k in listed.get("AccessKeyMetadata", [])
                             if k.get("AccessKeyId") == key_id), None)
                if mine is not None and mine.get("CreateDate"):
                    facts.created = mine["CreateDate"].astimezone(UTC)
                    facts.created_from, facts.status = "iam", mine.get("Status")
            except (*CALL_ERRORS, UpstreamError) as exc:
                error = (exc if isinstance(exc, UpstreamError)
                         else call_error(exc, "iam:ListAccessKeys"))
                transient = transient or not error.persistent
                log.info("key creation date not available from IAM; using created from the config"
                         if facts.created else "key creation date unknown: IAM did not tell and the"
                         " config has no created = YYYY-MM-DD", connection=self.name,
                         error=str(error))
        if self.connection.access_key_id != key_id:
            return  # rotated meanwhile: these facts are stale
        self.facts = facts
        self._learned_key = None if transient else key_id
        if facts.is_root:
            log.warning(
                "this connection uses the AWS account root user's access key; AWS advises an IAM"
                " user's key with only the permissions needed", connection=self.name,
                account=facts.account)
        self.check_age()

    def key_age_days(self) -> float | None:
        return self.facts.age_days(self.clock.time())

    def check_age(self) -> None:
        """Warn (at most daily) once the key is older than key_age_warning_days."""
        age = self.key_age_days()
        now = self.clock.time()
        if age is None or age <= self.warn_after_days:
            return
        if self._warned_at is not None and now - self._warned_at < WARN_EVERY:
            return
        self._warned_at = now
        log.warning(
            "access key is older than the warning age: rotate it", connection=self.name,
            access_key_id=self.connection.access_key_id, key_age_days=int(age),
            key_age_warning_days=self.warn_after_days,
            hint=f"credential-sidecar rotate-keys {self.name} --config PATH",
        )

    def describe(self) -> dict[str, object]:
        """For /status rows: never a secret (the key id is public by design)."""
        facts = self.facts
        age = self.key_age_days()
        return {
            "long_term_key_id": self.connection.access_key_id,
            "renewed_with_key_id": self.renewed_with,  # rotate-keys waits for the new key here
            "key_created": iso_z(facts.created) if facts.created else None,
            "key_created_from": facts.created_from,
            "key_age_days": int(age) if age is not None else None,
            "key_age_warning": age is not None and age > self.warn_after_days,
            "key_status": facts.status,
            "identity_arn": facts.arn,
            "account_id": facts.account,
            "root_key": facts.is_root,
            "mode": "AssumeRole" if self.connection.role_arn else "GetSessionToken",
        }


__all__ = ["AccessKeySource"]
