"""IAM Roles Anywhere CreateSession over aiohttp, signed with SigV4-X509."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp

from credential_sidecar.arn import Arn
from credential_sidecar.clock import Clock, utc
from credential_sidecar.config.model import Connection, RolesAnywhereConnection
from credential_sidecar.credentials import Credentials, iso_z, parse_time
from credential_sidecar.files import FileError
from credential_sidecar.logs import SECRETS, get_logger
from credential_sidecar.upstream.base import UpstreamError, digest
from credential_sidecar.upstream.certificate import HardwareSettings, Identity
from credential_sidecar.upstream.endpoints import EndpointError, resolve_endpoint
from credential_sidecar.upstream.hardware.base import HardwareKey, HardwareKeyError
from credential_sidecar.upstream.hardware.factory import key_store
from credential_sidecar.upstream.identity_source import IdentitySource
from credential_sidecar.upstream.network import (
    CABundleError,
    ProxyRefused,
    Route,
    check_proxy_response,
    classify,
    route,
)
from credential_sidecar.upstream.proxy import ProxyConfigError
from credential_sidecar.upstream.sigv4_x509 import sign_request

log = get_logger()

SERVICE = "rolesanywhere"


def default_endpoint(
    region: str,
    *,
    use_fips: bool | None = None,
    use_dualstack: bool | None = None,
    env: Mapping[str, str] | None = None,
) -> str:
    """As the SDKs resolve it: partitions (aws-cn, aws-us-gov, the ISO ones...), FIPS, dual-stack,
    ``AWS_ENDPOINT_URL_ROLESANYWHERE`` / ``AWS_ENDPOINT_URL`` (upstream/endpoints.py)."""
    return resolve_endpoint(
        "rolesanywhere", region, use_fips=use_fips, use_dualstack=use_dualstack, env=env
    ).url


def account_of(role_arn: str) -> str | None:
    arn = Arn.split(role_arn)
    return arn.account if arn and arn.account else None


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def error_from_response(status: int, headers: Any, text: str) -> UpstreamError:
    """Keep the service's own error type and message verbatim, as the seed docs promise."""
    code = (headers.get("X-Amzn-ErrorType") or "").split(":", 1)[0]
    message = ""
    try:
        body = json.loads(text) if text else {}
    except ValueError:
        body = {}
    if isinstance(body, dict):
        code = code or str(body.get("code") or body.get("__type") or "").rsplit("#", 1)[-1]
        message = str(body.get("message") or body.get("Message") or "")
    if not code:
        code = "ThrottlingException" if status == 429 else f"HTTP{status}"
    if not message:
        message = text.strip()[:300] or "no message in the response"
    return UpstreamError(code, message, status, _retry_after(headers.get("Retry-After")))


def credentials_from_body(text: str, issued_at: float, account_id: str | None) -> Credentials:
    """A 2xx without a usable set is an error, never an empty success."""
    try:
        body = json.loads(text)
        creds = body["credentialSet"][0]["credentials"]
        access_key, secret, token = (
            creds["accessKeyId"], creds["secretAccessKey"], creds["sessionToken"]
        )
        SECRETS.add(secret, token)
        expiration = parse_time(creds["expiration"])
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        raise UpstreamError(
            "MalformedResponse", f"CreateSession answered without a usable credential set ({exc!r})"
        ) from None
    if not (access_key and secret and token):
        raise UpstreamError("MalformedResponse", "CreateSession answered with empty credentials")
    return Credentials(
        access_key_id=access_key,
        secret_access_key=secret,
        session_token=token,
        expiration=expiration,
        issued_at=utc(issued_at),
        account_id=account_id,
    )


class RolesAnywhereSource:
    def __init__(
        self,
        connection: RolesAnywhereConnection,
        clock: Clock,
        *,
        identity: IdentitySource | None = None,
        http: aiohttp.ClientSession | None = None,
        timeout: float = 10.0,
        daemon_ca_bundle: Path | None = None,
    ) -> None:
        self.name = connection.name
        self.connection = connection
        self.clock = clock
        self.identity = identity or IdentitySource(
            certificate=connection.certificate,
            private_key=connection.private_key,
            passphrase_file=connection.private_key_passphrase_file,
            intermediates=connection.intermediates,
            hardware=HardwareSettings(
                pkcs11_module=connection.pkcs11_module,
                tpm_tcti=connection.tpm_tcti,
                tpm_key_auth_file=connection.tpm_key_auth_file,
                tpm_parent_auth_file=connection.tpm_parent_auth_file,
            ),
        )
        self.daemon_ca_bundle = daemon_ca_bundle
        self._endpoint_error: str | None = None  # said by fetch(), not at construction
        try:
            base = connection.endpoint or default_endpoint(
                connection.region,
                use_fips=connection.use_fips_endpoint,
                use_dualstack=connection.use_dualstack_endpoint,
            )
        except EndpointError as exc:
            self._endpoint_error = str(exc)
            base = f"https://rolesanywhere.{connection.region}.amazonaws.com"
        self.url = base.rstrip("/") + "/sessions"
        self._http = http
        self._own_http = http is None
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    def route(self) -> Route:
        """Proxy, proxy credentials and CA store for this call; decided anew for each fetch, so
        a changed proxy credentials file or CA bundle is picked up without a restart."""
        c = self.connection
        try:
            return route(
                self.url, proxy=c.proxy, no_proxy=c.no_proxy,
                proxy_credentials_file=c.proxy_credentials_file, ca_bundle=c.ca_bundle,
                daemon_ca_bundle=self.daemon_ca_bundle,
            )
        except (ProxyConfigError, CABundleError) as exc:
            raise UpstreamError("NetworkConfigError", str(exc)) from None

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession()
            self._own_http = True
        return self._http

    def request_body(self) -> bytes:
        c = self.connection
        return json.dumps(
            {
                "durationSeconds": c.duration_seconds,
                "profileArn": c.profile_arn,
                "roleArn": c.role_arn,
                "trustAnchorArn": c.trust_anchor_arn,
                "roleSessionName": c.session_name,
            }
        ).encode()

    async def _identity(self) -> Identity:
        try:
            return await self.identity.get()
        except FileError as exc:
            raise UpstreamError("FileError", str(exc)) from None

    async def binding(self) -> str:
        identity = await self._identity()
        c = self.connection
        return digest(
            c.type, c.trust_anchor_arn, c.profile_arn, c.role_arn, c.region, c.session_name,
            c.duration_seconds, self.url, identity.fingerprint(),
        )

    async def fetch(self) -> Credentials:
        if self._endpoint_error is not None:
            raise UpstreamError("NetworkConfigError", self._endpoint_error)
        identity = await self._identity()
        body = self.request_body()
        now = self.clock.time()
        # A hardware key signs on its device (milliseconds, blocking): off the event loop.
        sign = functools.partial(
            sign_request,
            method="POST",
            url=self.url,
            headers={"Content-Type": "application/json"},
            body=body,
            region=self.connection.region,
            service=SERVICE,
            when=utc(now),
            certificate=identity.certificate,
            private_key=identity.private_key,
            chain=identity.chain,
        )
        if isinstance(identity.private_key, HardwareKey):
            try:
                signed = await asyncio.to_thread(sign)
            except HardwareKeyError as exc:
                raise UpstreamError("HardwareKeyError", str(exc)) from None
        else:
            signed = sign()
        way = self.route()
        try:
            async with self._session().post(
                self.url, data=body, timeout=self._timeout, **way.request_kwargs(signed.headers)
            ) as response:
                check_proxy_response(response.status, response.reason, self.url, way.proxy)
                text = await response.text()
                status, headers = response.status, response.headers
        except TimeoutError as exc:
            raise UpstreamError("Timeout", classify(exc, self.url, way.proxy)) from None
        except (aiohttp.ClientError, ProxyRefused) as exc:
            # one operator-facing line: the proxy's refusal with its status line, or the TLS
            # failure with the host it was for (never repr(): it can hold Proxy-Authorization)
            message = classify(exc, self.url, way.proxy, ca_bundle=way.ca_bundle)
            raise UpstreamError("ConnectionError", message) from None
        if not 200 <= status < 300:
            raise error_from_response(status, headers, text)
        return credentials_from_body(text, now, account_of(self.connection.role_arn))

    async def close(self) -> None:
        if self._own_http and self._http is not None:
            await self._http.close()
        await self.identity.close()

    def describe(self) -> dict[str, object]:
        identity = self.identity.current()
        return {"certificate_not_after": iso_z(identity.not_after) if identity else None,
                "key_store": key_store(self.connection.private_key)}

    async def recheck(self) -> bool:
        """A new certificate (or key) on disk gets a new set at once; unreadable files keep
        the current one."""
        before = self.identity.current()
        try:
            now = await self.identity.get()
        except FileError as exc:
            log.warning("certificate files unreadable, keeping the current set",
                        connection=self.name, error=str(exc))
            return False
        if before is not None and before.fingerprint() == now.fingerprint():
            return False
        log.info("certificate changed on disk, renewing", connection=self.name, serial=now.serial)
        return True

    async def rekey(self, connection: Connection) -> bool:
        return False  # no long-term key to rotate: a new certificate is a file change


__all__ = ["RolesAnywhereSource", "default_endpoint"]
