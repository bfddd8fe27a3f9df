"""The emulator's HTTP server: CreateSession verified as AWS does, fault and stats endpoints."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from aiohttp import web
from cryptography import x509

from credential_sidecar.arn import Arn
from credential_sidecar.clock import Clock, SystemClock
from credential_sidecar.config.values import MAX_ROLE_DURATION as MAX_DURATION
from credential_sidecar.config.values import MIN_DURATION
from credential_sidecar.devtools.emulator.chain import verify_chain
from credential_sidecar.devtools.emulator.errors import (
    ApiError,
    denied,
    error_type_for,
    invalid,
    not_found,
)
from credential_sidecar.devtools.emulator.faults import Faults
from credential_sidecar.devtools.emulator.issue import build_session, new_credentials
from credential_sidecar.devtools.emulator.verify import (
    check_date_and_scope,
    check_key_binding,
    parse_authorization,
    parse_body,
    parse_certificates,
    resource_arn,
    signed_header_values,
    verify_signature,
)

log = structlog.get_logger("credential_sidecar.devtools.emulator")





@dataclass
class Profile:
    """What a Roles Anywhere profile decides: which roles, and how long a session may last."""

    role_arns: tuple[str, ...]
    max_duration_seconds: int = MAX_DURATION
















@dataclass(frozen=True)
class _TrustAnchor:
    arn: Arn
    certificates: tuple[x509.Certificate, ...]


class Emulator:
    """CreateSession as AWS checks it, with fault switches, on an aiohttp server.

    Checks, in order: faults (delay, throttle, fail_status, deny); the Authorization
    header; the certificates; serial and algorithm against the leaf; X-Amz-Date and the
    credential scope; the signed-header set and the signature; the body (400s); the
    trust anchor (404); the chain to that trust anchor's CAs (403); the profile (404), the
    role (403) and the profile's duration cap (400); then malformed/empty faults.
    The chain is checked before the profile and role so that an unauthenticated caller
    learns nothing about which profiles and roles exist.
    """

    def __init__(
        self,
        *,
        trust_anchors: dict[str, list[x509.Certificate]],
        profiles: dict[str, Profile],
        clock: Clock | None = None,
        max_skew_seconds: int = 300,
        access_key_prefix: str = "ASIA",
    ) -> None:
        if not trust_anchors:
            raise ValueError("the emulator needs at least one trust anchor")
        self._anchors: dict[str, _TrustAnchor] = {}
        for arn_text, certs in trust_anchors.items():
            if not certs:
                raise ValueError(f"trust anchor {arn_text} has no CA certificate")
            arn = resource_arn(arn_text, "rolesanywhere", "trust-anchor")
            self._anchors[arn_text] = _TrustAnchor(arn=arn, certificates=tuple(certs))
        for arn_text, profile in profiles.items():
            resource_arn(arn_text, "rolesanywhere", "profile")
            for role in profile.role_arns:
                try:
                    resource_arn(role, "iam", "role")
                except ValueError as exc:
                    raise ValueError(f"profile {arn_text}: bad role ARN: {exc}") from exc
            if not MIN_DURATION <= profile.max_duration_seconds <= MAX_DURATION:
                raise ValueError(
                    f"profile {arn_text}: max_duration_seconds must be "
                    f"{MIN_DURATION}..{MAX_DURATION}"
                )
        self._profiles = dict(profiles)
        self._regions = frozenset(a.arn.region for a in self._anchors.values())
        self.clock: Clock = clock or SystemClock()
        self.max_skew_seconds = max_skew_seconds
        self.access_key_prefix = access_key_prefix
        self.faults = Faults()
        self.calls = 0
        self.succeeded = 0
        self.failed = 0
        self.issued: list[dict[str, str]] = []
        self.url = ""
        self._runner: web.AppRunner | None = None
        self.app = web.Application()
        self.app.router.add_post("/sessions", self._handle_sessions)
        self.app.router.add_get("/_emulator/faults", self._handle_get_faults)
        self.app.router.add_post("/_emulator/faults", self._handle_set_faults)
        self.app.router.add_delete("/_emulator/faults", self._handle_reset_faults)
        self.app.router.add_get("/_emulator/stats", self._handle_stats)

    # -- lifecycle

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen; returns the base URL (the real port when ``port`` is 0)."""
        if self._runner is not None:
            raise RuntimeError("emulator already started")
        runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound_host, bound_port = runner.addresses[0][:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        self.url = f"http://{shown}:{bound_port}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    # -- CreateSession

    async def _handle_sessions(self, request: web.Request) -> web.StreamResponse:
        self.calls += 1
        try:
            body = await request.read()
            await self._faults_before()
            document = self._create_session(request, body)
            response = self._answer(document)
        except ApiError as err:
            self.failed += 1
            log.info("emulator.session", status=err.status, error=err.error_type,
                     message=err.message)
            return err.response()
        return response

    async def _faults_before(self) -> None:
        faults = self.faults
        if faults.delay_seconds > 0:
            await self.clock.sleep(faults.delay_seconds)
        if faults.take("throttle_count"):
            headers = {}
            if faults.retry_after is not None:
                headers["Retry-After"] = f"{faults.retry_after:g}"
            raise ApiError(429, "ThrottlingException", "Rate exceeded", headers)
        if faults.take("fail_count"):
            status = faults.fail_status or 500
            kind = error_type_for(status)
            message = (
                "An internal error occurred (emulated fault)"
                if status >= 500
                else f"{kind} (emulated fault)"
            )
            raise ApiError(status, kind, message)
        if faults.take("deny_count"):
            raise denied("Access denied (emulated fault)")

    def _create_session(self, request: web.Request, body: bytes) -> dict[str, Any]:
        """Verify the request as AWS does; returns the success document."""
        now = datetime.fromtimestamp(self.clock.time(), tz=UTC)
        headers = request.headers
        auth = parse_authorization(headers.get("Authorization"))
        leaf, chain = parse_certificates(headers)
        check_key_binding(auth, leaf)
        when = check_date_and_scope(headers, auth, now, self.max_skew_seconds, self._regions)
        verify_signature(
            auth=auth,
            leaf=leaf,
            method=request.method,
            raw_path=request.raw_path,
            header_values=signed_header_values(auth, headers),
            body=body,
            when=when,
        )
        wanted = parse_body(body)
        anchor = self._anchors.get(wanted.trust_anchor_arn)
        if anchor is None or anchor.arn.region != auth.region:
            raise not_found(f"Trust anchor {wanted.trust_anchor_arn} not found")
        verify_chain(leaf, chain, anchor.certificates, now)
        profile = self._profiles.get(wanted.profile_arn)
        if profile is None or Arn.parse(wanted.profile_arn).region != auth.region:
            raise not_found(f"Profile {wanted.profile_arn} not found")
        if wanted.role_arn not in profile.role_arns:
            raise denied(f"Role {wanted.role_arn} is not allowed by profile {wanted.profile_arn}")
        if wanted.duration_seconds > profile.max_duration_seconds:
            raise invalid(
                f"durationSeconds {wanted.duration_seconds} exceeds the profile's maximum "
                f"of {profile.max_duration_seconds}"
            )
        expiration = now + timedelta(seconds=wanted.duration_seconds)
        credentials = new_credentials(self.access_key_prefix, expiration)
        return build_session(
            request=wanted, leaf=leaf, anchor=anchor.arn, credentials=credentials
        )

    def _answer(self, document: dict[str, Any]) -> web.Response:
        """Apply the after-verification faults, or record and send the credentials."""
        if self.faults.take("malformed_count"):
            self.failed += 1
            text = json.dumps(document)
            log.info("emulator.session", status=201, fault="malformed")
            return web.Response(
                status=201, text=text[: len(text) // 2], content_type="application/json"
            )
        if self.faults.take("empty_count"):
            self.failed += 1
            document["credentialSet"] = []
            log.info("emulator.session", status=201, fault="empty")
            return web.json_response(document, status=201)
        entry = document["credentialSet"][0]
        self.issued.append(dict(entry["credentials"]))
        self.succeeded += 1
        log.info(
            "emulator.session",
            status=201,
            role=entry["roleArn"],
            access_key_id=entry["credentials"]["accessKeyId"],
            expiration=entry["credentials"]["expiration"],
        )
        return web.json_response(document, status=201)

    # -- control endpoints

    async def _handle_get_faults(self, request: web.Request) -> web.Response:
        return web.json_response(asdict(self.faults))

    async def _handle_set_faults(self, request: web.Request) -> web.Response:
        try:
            changes = json.loads(await request.read())
        except (UnicodeDecodeError, ValueError):
            return ApiError(400, "ValidationException", "body must be a JSON object").response()
        if not isinstance(changes, dict):
            return ApiError(400, "ValidationException", "body must be a JSON object").response()
        try:
            self.faults.update(changes)
        except ValueError as exc:
            return ApiError(400, "ValidationException", str(exc)).response()
        log.info("emulator.faults", **asdict(self.faults))
        return web.json_response(asdict(self.faults))

    async def _handle_reset_faults(self, request: web.Request) -> web.Response:
        self.faults.update(asdict(Faults()))  # in place: holders of .faults see the reset
        return web.json_response(asdict(self.faults))

    async def _handle_stats(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "calls": self.calls,
                "succeeded": self.succeeded,
                "failed": self.failed,
                "issued": self.issued,
                "faults": asdict(self.faults),
            }
        )

