"""The configuration file: TOML in, validated frozen models out, every problem reported at once.

Validation never opens the files the configuration names (certificates, keys, secrets): that is the
loader's job at start-up, where permissions are checked too. Here we only check shape, so that
``check-config`` runs anywhere and a typo is found before the daemon starts.

Messages never contain the values that were written (pydantic's ``input_value`` included): a secret
pasted into the wrong key must not end up in a terminal or a journal. The exceptions are connection
names, which are not secret and which the messages need in order to be useful.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    PrivateAttr,
    StrictBool,
    StrictInt,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from daemon.arn import Arn
from daemon.keys import check_key_id

__all__ = [
    "AccessKeysConnection",
    "Address",
    "Config",
    "ConfigError",
    "Connection",
    "ContainerListener",
    "ControlSettings",
    "DaemonSettings",
    "HealthListener",
    "ImdsListener",
    "RolesAnywhereConnection",
    "load_config",
    "parse_config",
]

CONNECTION_TYPES = ("roles-anywhere", "access-keys")
PARTITIONS = ("aws", "aws-cn", "aws-us-gov")
MIN_DURATION = 900
MAX_ROLE_DURATION = 43200  # CreateSession and AssumeRole
MAX_SESSION_TOKEN_DURATION = 129600  # GetSessionToken with an IAM user's key

_REGION_RE = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SESSION_NAME_RE = re.compile(r"^[A-Za-z0-9_+=,.@-]{2,64}$")
_EXTERNAL_ID_RE = re.compile(r"^[A-Za-z0-9_+=,.@:/-]{2,1224}$")
_ACCOUNT_RE = re.compile(r"^\d{12}$")
_RA_ID_RE = re.compile(r"^[A-Za-z0-9-]{1,64}$")
_ROLE_RESOURCE_RE = re.compile(r"^role/(?:[!-~]+/)?[A-Za-z0-9_+=,.@-]{1,64}$")
_HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
_BARE_KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")

# Keys that would hold a secret inline, and where the secret belongs instead.
_INLINE_SECRETS = {
    "secret_access_key": "secret_access_key_file",
    "aws_secret_access_key": "secret_access_key_file",
    "private_key_passphrase": "private_key_passphrase_file",
}
_SECTION_ORDER = ("daemon", "imds", "container", "health", "control", "connections")
_TYPES_TEXT = " or ".join(f'"{t}"' for t in CONNECTION_TYPES)

Loc = tuple[str | int, ...]


class ConfigError(Exception):
    """Everything wrong with one configuration, so the operator fixes it in one pass."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = list(problems)
        super().__init__(str(self))

    def __reduce__(self) -> tuple[type[ConfigError], tuple[str, list[str]]]:
        return type(self), (self.source, self.problems)

    def __str__(self) -> str:
        count = len(self.problems)
        head = f"{self.source}: {count} problem{'' if count == 1 else 's'}"
        return "\n".join([head, *(f"  - {p}" for p in self.problems)])


# --- small value types ---------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class Address:
    """A listen address; port 0 asks the kernel for a free port (tests, the demo)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        return is_loopback(self.host)

    @classmethod
    def parse(cls, text: str) -> Address:
        """``127.0.0.1:9911``, ``[::1]:9911`` or ``localhost:9911``; ValueError says why not."""
        if text.startswith("["):
            end = text.find("]")
            if end < 0 or text[end + 1 : end + 2] != ":":
                raise ValueError('must be "host:port", with IPv6 in brackets as in [::1]:9911')
            host, port_text = text[1:end], text[end + 2 :]
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise ValueError("brackets must hold an IPv6 address, as in [::1]:9911") from None
        else:
            host, sep, port_text = text.rpartition(":")
            if not sep:
                raise ValueError('must be "host:port", as in 127.0.0.1:9911')
            if ":" in host:
                raise ValueError("an IPv6 address must be in brackets, as in [::1]:9911")
            if not host:
                raise ValueError("the host is missing, as in 127.0.0.1:9911")
            if re.fullmatch(r"[\d.]+", host):
                try:
                    ipaddress.IPv4Address(host)
                except ValueError:
                    raise ValueError("the host is not a valid IPv4 address") from None
            elif not _HOSTNAME_RE.match(host):
                raise ValueError("the host is not a valid IP address or host name")
        if not port_text.isascii() or not port_text.isdigit() or int(port_text) > 65535:
            raise ValueError("the port must be a number from 0 to 65535")
        return cls(host, int(port_text))

    def key(self) -> tuple[str, int]:
        """What two addresses must not share: the host, normalised, and the port."""
        try:
            return ipaddress.ip_address(self.host).compressed, self.port
        except ValueError:
            return self.host.lower(), self.port


def _address(value: Any) -> Address:
    if isinstance(value, Address):
        return value
    if not isinstance(value, str):
        raise ValueError('must be a "host:port" string')
    return Address.parse(value)


_ARN_KINDS: dict[tuple[str, str], tuple[str, str]] = {
    ("rolesanywhere", "trust-anchor"): (
        "a Roles Anywhere trust anchor ARN",
        "arn:aws:rolesanywhere:<region>:<account>:trust-anchor/<id>",
    ),
    ("rolesanywhere", "profile"): (
        "a Roles Anywhere profile ARN",
        "arn:aws:rolesanywhere:<region>:<account>:profile/<id>",
    ),
    ("iam", "role"): ("an IAM role ARN", "arn:aws:iam::<account>:role/<name>"),
}


def _check_arn(text: str, kind: tuple[str, str]) -> Arn:
    """Shape, partition and service of an ARN; a wrong kind of ARN is named, not echoed."""
    label, template = _ARN_KINDS[kind]
    arn = Arn.split(text)
    if arn is None:
        raise ValueError(f"must be an ARN like {template}")
    if arn.kind != kind:
        if arn.kind in _ARN_KINDS:
            got = _ARN_KINDS[arn.kind][0]
        elif re.fullmatch(r"[a-z0-9-]{1,40}", arn.service):
            got = f'an ARN of service "{arn.service}"'
        else:
            got = "an ARN of another kind"
        raise ValueError(f"got {got}; expected {label} ({template})")
    if arn.partition not in PARTITIONS:
        raise ValueError("unknown partition; must be aws, aws-cn or aws-us-gov")
    if kind[0] == "iam":
        if arn.region:
            raise ValueError(f"an IAM role ARN has no region: {template}")
        if not _ROLE_RESOURCE_RE.match(arn.resource):
            raise ValueError(
                "the role name must be 1 to 64 letters, digits or +=,.@_- (after an optional path)"
            )
    else:
        if not _REGION_RE.match(arn.region):
            raise ValueError(f"the region part is not a region name like us-east-1: {template}")
        if not _RA_ID_RE.match(arn.resource.split("/", 1)[-1]) or "/" not in arn.resource:
            raise ValueError(f"the resource id is missing or malformed: {template}")
    if not _ACCOUNT_RE.match(arn.account):
        raise ValueError(f"the account must be 12 digits: {template}")
    return arn


def _check_region(value: str) -> str:
    if not _REGION_RE.match(value):
        raise ValueError("must be a region name like us-east-1")
    return value


def check_endpoint(value: str) -> str:
    """https, or http to a loopback host only (the emulator, tests): never plain text on a wire."""
    try:
        parts = urlsplit(value)
        host = parts.hostname
        _ = parts.port
    except ValueError:
        raise ValueError("must be a URL like https://host[:port]") from None
    if parts.scheme not in ("http", "https") or not host:
        raise ValueError("must be an https URL like https://host[:port]")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ValueError("must not carry a user name, password, query or fragment")
    if parts.scheme == "http" and not is_loopback(host):
        raise ValueError(
            "plain http is accepted only for a loopback host (127.0.0.1, ::1, localhost); use https"
        )
    return value


def _check_name(value: str) -> str:
    if not _NAME_RE.match(value):
        raise ValueError(
            "must be 1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit"
            " (names appear in URL paths)"
        )
    return value


def _check_session_name(value: str) -> str:
    if not _SESSION_NAME_RE.match(value):
        raise ValueError("must be 2 to 64 letters, digits or +=,.@_-")
    return value


def _not_empty(value: Any) -> Any:
    if value == "":
        raise ValueError("must not be empty")
    return value


CREDENTIALS_PREFIXES = ("$CREDENTIALS_DIRECTORY/", "${CREDENTIALS_DIRECTORY}/")


def _resolve(value: Path, info: ValidationInfo) -> Path:
    """Relative paths are relative to the configuration file, not to the daemon's cwd.

    A path starting with ``$CREDENTIALS_DIRECTORY/`` names a systemd credential (LoadCredential=):
    systemd does not expand the config file, so the daemon does. Without that variable (say,
    check-config in a shell) the path stays as written, and opening it says what is missing.
    """
    text = str(value)
    if text in (p.rstrip("/") for p in CREDENTIALS_PREFIXES):
        raise ValueError("names the credentials directory itself; name a file in it")
    for prefix in CREDENTIALS_PREFIXES:
        if text.startswith(prefix):
            directory = os.environ.get("CREDENTIALS_DIRECTORY")
            return Path(directory) / text[len(prefix) :] if directory else value
    base = (info.context or {}).get("base_dir")
    if base is not None and not value.is_absolute():
        return Path(base) / value
    return value


ConfigPath = Annotated[Path, BeforeValidator(_not_empty), AfterValidator(_resolve)]
ListenAddress = Annotated[
    Address, PlainValidator(_address), PlainSerializer(str, return_type=str, when_used="always")
]
Region = Annotated[str, AfterValidator(_check_region)]
Endpoint = Annotated[str, AfterValidator(check_endpoint)]
ConnectionName = Annotated[str, AfterValidator(_check_name)]
SessionName = Annotated[str, AfterValidator(_check_session_name)]
SystemId = Annotated[StrictInt, Field(ge=0, le=4294967294)]


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


class RolesAnywhereConnection(_ConnectionBase):
    # Field order matters: validators below read fields declared before them via info.data.
    type: Literal["roles-anywhere"]
    certificate: ConfigPath
    private_key: ConfigPath | None = Field(default=None, validate_default=True)
    private_key_passphrase_file: ConfigPath | None = None
    intermediates: ConfigPath | None = None
    trust_anchor_arn: str
    profile_arn: str
    role_arn: str
    region: str = Field(default=None, validate_default=True)  # type: ignore[assignment]
    session_name: SessionName
    duration_seconds: StrictInt = 3600
    endpoint: Endpoint | None = None

    @field_validator("private_key")
    @classmethod
    def _key_unless_pkcs12(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        cert = info.data.get("certificate")
        if value is None and cert is not None and cert.suffix.lower() not in (".p12", ".pfx"):
            raise ValueError("required unless certificate is a PKCS#12 bundle (.p12 or .pfx)")
        return value

    @field_validator("trust_anchor_arn")
    @classmethod
    def _trust_anchor(cls, value: str) -> str:
        _check_arn(value, ("rolesanywhere", "trust-anchor"))
        return value

    @field_validator("profile_arn")
    @classmethod
    def _profile(cls, value: str, info: ValidationInfo) -> str:
        arn = _check_arn(value, ("rolesanywhere", "profile"))
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
        _check_arn(value, ("iam", "role"))
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
        _check_region(value)
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
            _check_arn(value, ("iam", "role"))
        return value

    @field_validator("session_name", "external_id")
    @classmethod
    def _only_with_role(cls, value: str | None, info: ValidationInfo) -> str | None:
        """Both go to AssumeRole; GetSessionToken would silently ignore them."""
        if value is not None and "role_arn" in info.data and info.data["role_arn"] is None:
            raise ValueError("only used with role_arn (AssumeRole)")
        if info.field_name == "external_id" and value is not None:
            if not _EXTERNAL_ID_RE.match(value):
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


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a TOML file; relative paths in it are relative to its directory."""
    path = Path(path)
    source = str(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(source, [f"cannot read the file: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError:
        raise ConfigError(source, ["not valid UTF-8 text"]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, [f"TOML syntax error: {exc}"]) from None
    absolute = Path(os.path.abspath(path))
    config = parse_config(data, source=source, base_dir=absolute.parent)
    config._source = absolute
    return config


def parse_config(
    data: dict[str, Any], *, source: str = "<config>", base_dir: Path | None = None
) -> Config:
    """Validate an already-parsed document; with no base_dir, relative paths stay relative."""
    problems: list[tuple[Loc, str]] = []
    config: Config | None = None
    try:
        config = Config.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        for error in exc.errors(include_url=False, include_input=False):
            problem = _from_pydantic(error)
            if problem is not None:
                problems.append(problem)
    if isinstance(data, dict):
        problems.extend(_cross_checks(data))
    if problems or config is None:
        raise ConfigError(source, _format(problems, data))
    return config


def _from_pydantic(error: Any) -> tuple[Loc, str] | None:
    """Short human messages from pydantic's error types, built without the input value."""
    loc: Loc = tuple(error["loc"])
    kind: str = error["type"]
    ctx: dict[str, Any] = error.get("ctx") or {}
    # A discriminated union inserts the tag: ("connections", 1, "roles-anywhere", "name").
    if len(loc) >= 3 and loc[0] == "connections" and isinstance(loc[1], int):
        if loc[2] in CONNECTION_TYPES:
            loc = loc[:2] + loc[3:]
    if kind == "extra_forbidden" and loc and loc[-1] in _INLINE_SECRETS:
        return None  # reported by _inline_secrets, with a better message
    messages = {
        "missing": "required",
        "extra_forbidden": "unknown key",
        "string_type": "must be a string",
        "int_type": "must be an integer",
        "int_parsing": "must be an integer",
        "int_from_float": "must be an integer",
        "bool_type": "must be true or false",
        "bool_parsing": "must be true or false",
        "list_type": "must be a list",
        "dict_type": "must be a table",
        "model_type": "must be a table",
        "model_attributes_type": "must be a table",
        "path_type": "must be a path string",
        "date_type": "must be a date (YYYY-MM-DD)",
        "date_parsing": "must be a date (YYYY-MM-DD)",
        "date_from_datetime_parsing": "must be a date (YYYY-MM-DD)",
        "date_from_datetime_inexact": "must be a date (YYYY-MM-DD), without a time",
    }
    if kind == "list_type" and loc in (("imds",), ("connections",)):
        return loc, f"must be an array of tables: write [[{loc[0]}]]"
    if kind in messages:
        return loc, messages[kind]
    if kind in ("value_error", "assertion_error"):
        return loc, str(ctx.get("error", "invalid value"))
    if kind == "union_tag_not_found":
        return (*loc, "type"), f"required; must be {_TYPES_TEXT}"
    if kind == "union_tag_invalid":
        return (*loc, "type"), f"unknown connection type; must be {_TYPES_TEXT}"
    if kind == "literal_error":
        return loc, f"must be {str(ctx.get('expected', '')).replace(chr(39), chr(34))}"
    if kind == "greater_than_equal":
        return loc, f"must be at least {ctx.get('ge')}"
    if kind == "less_than_equal":
        return loc, f"must be at most {ctx.get('le')}"
    if kind == "too_short":
        if loc == ("connections",):
            return loc, "at least one connection is required"
        return loc, f"must have at least {ctx.get('min_length')} item(s)"
    return loc, str(error["msg"])  # pydantic's msg never carries the input; only str(exc) does


def _cross_checks(data: dict[str, Any]) -> Iterator[tuple[Loc, str]]:
    """Checks across entries, on the raw document, so they run even when some entries are bad."""
    yield from _inline_secrets(data, ())

    names: dict[str, int] = {}
    connections = data.get("connections")
    for i, conn in enumerate(connections if isinstance(connections, list) else []):
        name = conn.get("name") if isinstance(conn, dict) else None
        if not isinstance(name, str):
            continue
        if name in names:
            yield (
                ("connections", i, "name"),
                f'duplicate name "{name}" (also connections[{names[name]}])',
            )
        else:
            names[name] = i

    listeners: list[tuple[Loc, Any]] = []
    imds = data.get("imds")
    for i, entry in enumerate(imds if isinstance(imds, list) else []):
        if not isinstance(entry, dict):
            continue
        listeners.append((("imds", i, "listen"), entry.get("listen")))
        wanted = entry.get("connection")
        if isinstance(wanted, str) and wanted not in names:
            known = ", ".join(names) or "(none)"
            yield ("imds", i, "connection"), f'no connection named "{wanted}"; known: {known}'
    for section in ("container", "health"):
        entry = data.get(section)
        if isinstance(entry, dict):
            listeners.append(((section, "listen"), entry.get("listen")))

    taken: dict[tuple[str, int], Loc] = {}
    for loc, text in listeners:
        try:
            address = _address(text)
        except ValueError:
            continue  # reported by the model
        if address.port == 0:
            continue
        if address.key() in taken:
            yield loc, f"same address as {_path(taken[address.key()])}"
        else:
            taken[address.key()] = loc


def _inline_secrets(node: Any, loc: Loc) -> Iterator[tuple[Loc, str]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _INLINE_SECRETS:
                where = _INLINE_SECRETS[key]
                yield (*loc, key), f"never write a secret inline; put it in {where} (mode 0600)"
            else:
                yield from _inline_secrets(value, (*loc, key))
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _inline_secrets(item, (*loc, i))


def _format(problems: list[tuple[Loc, str]], data: Any) -> list[str]:
    """In reading order (section, entry, key as written), so each entry's problems read together."""

    def rank(item: tuple[Loc, str]) -> tuple[int, int, int]:
        loc = item[0]
        head = loc[0] if loc else ""
        section = _SECTION_ORDER.index(head) if head in _SECTION_ORDER else len(_SECTION_ORDER)
        entry: Any = data.get(head) if isinstance(data, dict) and isinstance(head, str) else None
        index, rest = -1, loc[1:]
        if rest and isinstance(rest[0], int):
            index, rest = rest[0], rest[1:]
            entry = entry[index] if isinstance(entry, list) and index < len(entry) else None
        keys = list(entry) if isinstance(entry, dict) else []
        position = keys.index(rest[0]) if rest and rest[0] in keys else len(keys)
        return section, index, position

    out: list[str] = []
    for loc, message in sorted(problems, key=rank):
        line = f"{_path(loc)}: {message}"
        if line not in out:
            out.append(line)
    return out


def _path(loc: Loc) -> str:
    """("connections", 1, "duration_seconds") -> connections[1].duration_seconds"""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            key = part if _BARE_KEY_RE.match(part) else json.dumps(part)
            out += f".{key}" if out else key
    return out or "(top level)"


def load_connection(path: str | os.PathLike[str], name: str) -> tuple[Config, Connection]:
    """For commands about one connection: the config and that connection, or ConfigError."""
    config = load_config(path)
    try:
        return config, config.connection(name)
    except KeyError:
        known = ", ".join(c.name for c in config.connections)
        raise ConfigError(str(path), [f"no connection named {name!r}; known: {known}"]) from None
