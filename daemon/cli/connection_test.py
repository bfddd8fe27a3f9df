"""``credential-sidecar test-connection NAME``: do this connection's credentials really work?

As an AWS console's "Test Connection" does: get the credentials the daemon would serve, ask
STS who they belong to (``GetCallerIdentity``: the account and ARN, with a warning for the
account root), then list the S3 buckets. A valid identity that may not list buckets fails the
test: the operator learns it now rather than from an application at 3 a.m. Each step says
whether it passed; a failure names the step and quotes the service's own code and message.

Exit 0 when every step passed, 4 when one failed, 2 when the config or NAME is wrong.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any, TextIO

from credential_sidecar.clock import SystemClock
from credential_sidecar.config.errors import ConfigError
from credential_sidecar.config.load import load_connection
from credential_sidecar.config.model import AccessKeysConnection, RolesAnywhereConnection
from credential_sidecar.config.values import check_endpoint
from credential_sidecar.credentials import Credentials, iso_z
from credential_sidecar.upstream.base import UpstreamError

OK, FAILED, BAD_CONFIG = 0, 4, 2
STEPS = 3
ROOT_ADVICE = ("these are the AWS account root user's credentials; AWS advises an IAM user"
               " with only the permissions needed instead")


class StepFailed(Exception):
    def __init__(self, step: int, name: str, error: UpstreamError, advice: str = "") -> None:
        super().__init__(f"{name}: {error}")
        self.step, self.name, self.error, self.advice = step, name, error, advice


class ConnectionTest:
    def __init__(self, connection: AccessKeysConnection | RolesAnywhereConnection,
                 endpoint_url: str | None, out: TextIO, daemon_ca_bundle: Path | None = None
                 ) -> None:
        self.connection = connection
        self.endpoint_url = endpoint_url
        self.out = out
        self.daemon_ca_bundle = daemon_ca_bundle  # [daemon] ca_bundle: trusted as the daemon does

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def endpoints(self) -> tuple[str | None, str | None]:
        """(STS, S3): --endpoint-url; else an access-keys connection's STS endpoint for STS
        (and for S3 too when it is a loopback emulator); else botocore's choice, which honours
        AWS_ENDPOINT_URL and AWS_ENDPOINT_URL_<SERVICE>."""
        from credential_sidecar.upstream.aws_clients import side_endpoint

        if self.endpoint_url:
            return self.endpoint_url, self.endpoint_url
        if isinstance(self.connection, AccessKeysConnection):
            return self.connection.endpoint, side_endpoint(self.connection.endpoint)
        return None, None

    async def credentials(self) -> Credentials:
        c = self.connection
        source: Any
        if isinstance(c, AccessKeysConnection):
            from credential_sidecar.upstream.access_keys import AccessKeySource

            if self.endpoint_url and not c.endpoint:
                c = c.model_copy(update={"endpoint": self.endpoint_url})
            source = AccessKeySource(c, SystemClock(), learn=False,
                                     daemon_ca_bundle=self.daemon_ca_bundle)
            how = (f"AssumeRole {c.role_arn}" if c.role_arn else "GetSessionToken") + (
                f" with {c.access_key_id}")
        else:
            from credential_sidecar.upstream.roles_anywhere import RolesAnywhereSource

            source = RolesAnywhereSource(c, SystemClock(), daemon_ca_bundle=self.daemon_ca_bundle)
            how = f"Roles Anywhere CreateSession for {c.role_arn}"
        try:
            creds: Credentials = await source.fetch()
        except UpstreamError as error:
            raise StepFailed(1, "credentials", error,
                             "the daemon could not get credentials for this connection") from None
        finally:
            await source.close()
        self.say(f"[1/{STEPS}] credentials: ok: {creds.access_key_id} from {how},"
                 f" valid until {iso_z(creds.expiration)}")
        return creds

    async def run(self) -> None:
        from aiobotocore.session import AioSession

        from credential_sidecar.upstream.aws_clients import CALL_ERRORS, boto_config, call_error
        from credential_sidecar.upstream.network import resolve_ca_bundle

        c = self.connection
        mode = ("AssumeRole" if c.role_arn else "GetSessionToken") if isinstance(
            c, AccessKeysConnection) else "Roles Anywhere"
        self.say(f'Test Connection "{c.name}" ({c.type}, {mode}, {c.region})')
        creds = await self.credentials()
        sts_url, s3_url = self.endpoints()
        session = AioSession()
        bundle = resolve_ca_bundle(c.ca_bundle, self.daemon_ca_bundle)

        def client(service: str, endpoint: str | None) -> Any:
            return session.create_client(
                service, region_name=c.region, endpoint_url=endpoint,
                verify=str(bundle) if bundle is not None else None,
                aws_access_key_id=creds.access_key_id,
                aws_secret_access_key=creds.secret_access_key,
                aws_session_token=creds.session_token, config=boto_config(15.0))

        try:
            async with client("sts", sts_url) as sts:
                who = await sts.get_caller_identity()
        except CALL_ERRORS as exc:
            raise StepFailed(2, "sts:GetCallerIdentity", call_error(exc, "STS"),
                             "STS does not accept these credentials") from None
        self.say(f"[2/{STEPS}] sts:GetCallerIdentity: ok: account {who.get('Account')},"
                 f" {who.get('Arn')}")
        if str(who.get("Arn", "")).endswith(":root"):
            self.say(f"      warning: {ROOT_ADVICE}")
        try:
            async with client("s3", s3_url) as s3:
                listed = await s3.list_buckets()
        except CALL_ERRORS as exc:
            raise StepFailed(3, "s3:ListBuckets", call_error(exc, "S3"),
                             "the identity is valid but may not list buckets"
                             " (it needs s3:ListAllMyBuckets)") from None
        count = len(listed.get("Buckets") or [])
        self.say(f"[3/{STEPS}] s3:ListBuckets: ok: {count} bucket{'' if count == 1 else 's'}")


def run(config_path: str, name: str, *, endpoint_url: str | None = None,
                    out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    from credential_sidecar import logs

    logs.configure("console", "error", stream=err)
    try:
        config, connection = load_connection(config_path, name)
    except ConfigError as exc:
        print(exc, file=err)
        return BAD_CONFIG
    try:
        if endpoint_url:
            check_endpoint(endpoint_url)  # the same rule as the config's endpoint keys
    except ValueError as exc:
        print(f"--endpoint-url: {exc}", file=err)
        return BAD_CONFIG
    test = ConnectionTest(connection, endpoint_url, out, config.daemon.ca_bundle)
    try:
        asyncio.run(test.run())
    except StepFailed as failed:
        test.say(f"[{failed.step}/{STEPS}] {failed.name}: FAILED: {failed.error.code}:"
                 f" {failed.error.message}")
        print(f"Test Connection failed at step {failed.step} ({failed.name}): {failed.advice}."
              f" The service said: {failed.error.code}: {failed.error.message}", file=err)
        return FAILED
    test.say("Test Connection succeeded.")
    return OK


__all__ = ["ConnectionTest", "run"]
