"""The configuration file: TOML in, validated frozen models out, every problem reported at once.

Validation never opens the files the configuration names (certificates, keys, secrets): that is the
loader's job at start-up, where permissions are checked too. Here we only check shape, so that
``check-config`` runs anywhere and a typo is found before the daemon starts.

Messages never contain the values that were written (pydantic's ``input_value`` included): a secret
pasted into the wrong key must not end up in a terminal or a journal. The exceptions are connection
names, which are not secret and which the messages need in order to be useful.
"""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    PrivateAttr,
    StrictBool,
    StrictInt,
    ValidationInfo,
    field_validator,
)

from credential_sidecar.arn import Arn
from credential_sidecar.config.fields import (
    CertificateRef,
    ConfigPath,
    ConnectionName,
    Endpoint,
    KeyRef,
    ListenAddress,
    ProxyUrl,
    Region,
    SessionName,
    SystemId,
    not_empty,
)
from credential_sidecar.config.values import (
    EXTERNAL_ID_RE,
    MAX_ROLE_DURATION,
    MAX_SESSION_TOKEN_DURATION,
    MIN_DURATION,
    Address,
    check_arn,
    check_key_id,
    check_region,
)

# --- small value types ---------------------------------------------------------------------------




































# --- models --------------------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DaemonSettings(_Model):
    state_dir: ConfigPath = Path("/var/lib/credential-sidecar")
    log_format: Literal["json", "console"] = "json"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    key_age_warning_days: Annotated[StrictInt, Field(ge=1)] = 90
    # The AES-GCM key of the persistent credential cache (created 0600 if absent). Default:
    # $CREDENTIALS_DIRECTORY/cache-key when systemd provides it, else <state_dir>/cache-key.
    cache_key_file: ConfigPath | None = None
    # Under systemd (Type=notify): READY=1 once every required connection is ready, or after this
    # many seconds, whichever is first. Keep it below the unit's TimeoutStartSec= (90 s).
    ready_timeout_seconds: Annotated[StrictInt, Field(ge=0, le=3600)] = 60
    # CA bundle (PEM) for every upstream call unless a connection names its own; default:
    # AWS_CA_BUNDLE, else the system store (docs/network.md).
    ca_bundle: ConfigPath | None = None


class _Listener(_Model):
    # Declared before `listen` because the check on `listen` reads it.
    allow_non_loopback: StrictBool = False
    listen: ListenAddress

    @field_validator("listen")
    @classmethod
    def _loopback_unless_allowed(cls, value: Address, info: ValidationInfo) -> Address:
        """Credentials on a network interface are a deliberate choice, never a default."""
        if not value.is_loopback and info.data.get("allow_non_loopback") is False:
            raise ValueError(
                "not a loopback address (127.0.0.0/8, ::1, localhost); set"
                " allow_non_loopback = true on this listener to serve credentials beyond this host"
            )
        return value


class ImdsListener(_Listener):
    connection: str
    allow_imdsv1: StrictBool = False
    # IP TTL / IPv6 hop limit of answers, as EC2's HttpPutResponseHopLimit:
    # 1 (the default) keeps them from crossing a router (a container's bridge, a forwarded port).
    hop_limit: Annotated[StrictInt, Field(ge=1, le=255)] = 1


_PROFILE_RE = re.compile(r"^[A-Za-z0-9_.+@-]{1,64}$")


def _profile_name(value: str) -> str:
    if not _PROFILE_RE.match(value):
        raise ValueError("must be 1 to 64 letters, digits or _.+@- (a profile name)")
    return value


def _file_mode(value: Any) -> int:
    """0o600 (a TOML octal integer) or "0600"; only owner and group read/write bits."""
    if isinstance(value, str) and re.fullmatch(r"0?[0-7]{3}", value):
        value = int(value, 8)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError('must be a mode such as 0o600 or "0600"')
    if value & ~0o660 or not value & 0o400:
        raise ValueError(
            "must give the owner read access and nothing beyond owner and group read/write"
            ' (0o600, the default, or 0o640); write it as 0o600 or "0600"'
        )
    return value


def _user_ref(value: Any) -> str | int:
    """A user or group name, or a numeric id (resolved when the daemon starts)."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError("must be a name or a numeric id")
    if isinstance(value, int):
        if not 0 <= value <= 4294967294:
            raise ValueError("must be a numeric id between 0 and 4294967294")
        return value
    if not re.fullmatch(r"[A-Za-z0-9_.][A-Za-z0-9_.-]{0,31}\$?", value):
        raise ValueError("must be a user or group name, or a numeric id")
    return value


class CredentialsFile(_Model):
    """One profile of a shared credentials file (``AWS_SHARED_CREDENTIALS_FILE``) the daemon
    rewrites after every renewal. Entries naming the same path make one file."""

    path: ConfigPath
    connection: str
    profile: Annotated[str, AfterValidator(_profile_name)] = "default"
    # Default: the daemon's own user and group (no chown); owning it by another user needs root.
    owner: Annotated[str | int, PlainValidator(_user_ref)] | None = None
    group: Annotated[str | int, PlainValidator(_user_ref)] | None = None
    mode: Annotated[int, PlainValidator(_file_mode)] = 0o600
    region: Region | None = None
    on_stop: Literal["keep", "remove"] = "keep"


class ContainerListener(_Listener):
    pass


class HealthListener(_Listener):
    pass


class ControlSettings(_Model):
    socket: ConfigPath


class _ConnectionBase(_Model):
    name: ConnectionName
    container_token_file: ConfigPath | None = None
    allowed_uids: list[SystemId] = []
    allowed_gids: list[SystemId] = []
    notes: str = ""
    optional: StrictBool = False
    # Network (docs/network.md). proxy: as curl's -x (wins over HTTPS_PROXY/ALL_PROXY; "" = none);
    # no_proxy: replaces NO_PROXY (host suffixes, IPs, CIDR, host:port, *); the proxy's
    # user:password only in proxy_credentials_file (0600); ca_bundle: this connection's CAs.
    proxy: ProxyUrl | None = None
    no_proxy: str | None = None
    proxy_credentials_file: ConfigPath | None = None
    ca_bundle: ConfigPath | None = None
    # None: AWS_USE_FIPS_ENDPOINT / AWS_USE_DUALSTACK_ENDPOINT decide (as the SDKs do).
    use_fips_endpoint: StrictBool | None = None
    use_dualstack_endpoint: StrictBool | None = None


class RolesAnywhereConnection(_ConnectionBase):
    # Field order matters: validators below read fields declared before them via info.data.
    type: Literal["roles-anywhere"]
    certificate: CertificateRef
    private_key: KeyRef | None = Field(default=None, validate_default=True)
    private_key_passphrase_file: ConfigPath | None = None
    intermediates: ConfigPath | None = None
    # Hardware keys (README "Hardware keys"): the PKCS#11 module (default: p11-kit's proxy), the
    # TPM's TCTI (default device:/dev/tpmrm0) and TPM auth values, each in a file of its own.
    pkcs11_module: ConfigPath | None = None
    tpm_tcti: Annotated[str, BeforeValidator(not_empty)] | None = None
    tpm_key_auth_file: ConfigPath | None = None
    tpm_parent_auth_file: ConfigPath | None = None
    trust_anchor_arn: str
    profile_arn: str
    role_arn: str
    region: str = Field(default=None, validate_default=True)
    session_name: SessionName
    duration_seconds: StrictInt = 3600
    endpoint: Endpoint | None = None

    @field_validator("private_key")
    @classmethod
    def _key_unless_pkcs12(
        cls, value: Path | str | None, info: ValidationInfo
    ) -> Path | str | None:
        cert = info.data.get("certificate")
        if isinstance(cert, str) and not (isinstance(value, str) and value.startswith("pkcs11:")):
            raise ValueError("must be the key's pkcs11: URI when certificate is on a token")
        if value is None and isinstance(cert, Path) and cert.suffix.lower() not in (".p12", ".pfx"):
            raise ValueError("required unless certificate is a PKCS#12 bundle (.p12 or .pfx)")
        return value

    @field_validator("trust_anchor_arn")
    @classmethod
    def _trust_anchor(cls, value: str) -> str:
        check_arn(value, ("rolesanywhere", "trust-anchor"))
        return value

    @field_validator("profile_arn")
    @classmethod
    def _profile(cls, value: str, info: ValidationInfo) -> str:
        arn = check_arn(value, ("rolesanywhere", "profile"))
        anchor = Arn.split(info.data.get("trust_anchor_arn") or "")
        if anchor is not None and anchor.region != arn.region:
            raise ValueError(
                f"in region {arn.region} but trust_anchor_arn is in {anchor.region};"
                " they must be in the same region"
            )
        if anchor is not None and anchor.partition != arn.partition:
            raise ValueError("in a different partition from trust_anchor_arn")
        return value

    @field_validator("role_arn")
    @classmethod
    def _role(cls, value: str) -> str:
        check_arn(value, ("iam", "role"))
        return value

    @field_validator("region", mode="plain")
    @classmethod
    def _region(cls, value: Any, info: ValidationInfo) -> str | None:
        """Defaults to the trust anchor's region; CreateSession must go where the anchor lives."""
        anchor = Arn.split(info.data.get("trust_anchor_arn") or "")
        if value is None:
            # None only when trust_anchor_arn is itself invalid: its own problem is reported.
            return anchor.region if anchor is not None else None
        if not isinstance(value, str):
            raise ValueError("must be a string")
        check_region(value)
        if anchor is not None and value != anchor.region:
            raise ValueError(
                f"{value} differs from the trust anchor's region {anchor.region};"
                " leave region out or make them equal"
            )
        return value

    @field_validator("duration_seconds")
    @classmethod
    def _duration(cls, value: int) -> int:
        if not MIN_DURATION <= value <= MAX_ROLE_DURATION:
            raise ValueError(f"must be between {MIN_DURATION} and {MAX_ROLE_DURATION}")
        return value


class AccessKeysConnection(_ConnectionBase):
    # Field order matters: validators below read fields declared before them via info.data.
    type: Literal["access-keys"]
    access_key_id: str
    secret_access_key_file: ConfigPath | None = None
    role_arn: str | None = None
    session_name: SessionName | None = None
    external_id: str | None = None
    region: Region = "us-east-1"
    duration_seconds: StrictInt = 3600
    endpoint: Endpoint | None = None
    created: date | None = None

    @field_validator("access_key_id")
    @classmethod
    def _key_id(cls, value: str) -> str:
        """Never echoes the value: people paste the secret here by mistake."""
        return check_key_id(value)

    @field_validator("role_arn")
    @classmethod
    def _role(cls, value: str | None) -> str | None:
        if value is not None:
            check_arn(value, ("iam", "role"))
        return value

    @field_validator("session_name", "external_id")
    @classmethod
    def _only_with_role(cls, value: str | None, info: ValidationInfo) -> str | None:
        """Both go to AssumeRole; GetSessionToken would silently ignore them."""
        if value is not None and "role_arn" in info.data and info.data["role_arn"] is None:
            raise ValueError("only used with role_arn (AssumeRole)")
        if info.field_name == "external_id" and value is not None:
            if not EXTERNAL_ID_RE.match(value):
                raise ValueError("must be 2 to 1224 letters, digits or +=,.@:/_-")
        return value

    @field_validator("duration_seconds")
    @classmethod
    def _duration(cls, value: int, info: ValidationInfo) -> int:
        if info.data.get("role_arn"):
            if not MIN_DURATION <= value <= MAX_ROLE_DURATION:
                raise ValueError(
                    f"must be between {MIN_DURATION} and {MAX_ROLE_DURATION}"
                    " with role_arn (AssumeRole)"
                )
        elif not MIN_DURATION <= value <= MAX_SESSION_TOKEN_DURATION:
            raise ValueError(
                f"must be between {MIN_DURATION} and {MAX_SESSION_TOKEN_DURATION} (GetSessionToken)"
            )
        return value


Connection = Annotated[RolesAnywhereConnection | AccessKeysConnection, Field(discriminator="type")]


class Config(_Model):
    daemon: DaemonSettings = Field(default_factory=DaemonSettings)
    imds: list[ImdsListener] = []
    container: ContainerListener | None = None
    health: HealthListener | None = None
    control: ControlSettings | None = None
    credentials_file: list[CredentialsFile] = []
    connections: list[Connection] = Field(min_length=1)

    _source: Path | None = PrivateAttr(default=None)

    @property
    def source(self) -> Path | None:
        """The file this came from (None for parse_config)."""
        return self._source

    def connection(self, name: str) -> RolesAnywhereConnection | AccessKeysConnection:
        for conn in self.connections:
            if conn.name == name:
                return conn
        raise KeyError(f"no connection named {name!r}")


# --- loading and error reporting -----------------------------------------------------------------
















