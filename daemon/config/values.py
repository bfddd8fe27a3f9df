"""Values the configuration holds and the emulator shares: addresses, names, ARNs, durations.

One rule lives in one place: the daemon's config, the emulator and the commands all check a
listen address, a session name or a duration here, so they can never disagree. Standard library
only, so the emulator and short-lived commands can use it without loading pydantic.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from credential_sidecar.arn import Arn

CONNECTION_TYPES = ("roles-anywhere", "access-keys")
PARTITIONS = ("aws", "aws-cn", "aws-us-gov")
MIN_DURATION = 900
MAX_ROLE_DURATION = 43200  # CreateSession and AssumeRole
MAX_SESSION_TOKEN_DURATION = 129600  # GetSessionToken with an IAM user's key
_REGION_RE = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
SESSION_NAME_RE = re.compile(r"^[A-Za-z0-9_+=,.@-]{2,64}$")
EXTERNAL_ID_RE = re.compile(r"^[A-Za-z0-9_+=,.@:/-]{2,1224}$")
_ACCOUNT_RE = re.compile(r"^\d{12}$")
_RA_ID_RE = re.compile(r"^[A-Za-z0-9-]{1,64}$")
_ROLE_RESOURCE_RE = re.compile(r"^role/(?:[!-~]+/)?[A-Za-z0-9_+=,.@-]{1,64}$")
HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)


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
            elif not HOSTNAME_RE.match(host):
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


def parse_address(value: Any) -> Address:
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


def check_arn(text: str, kind: tuple[str, str]) -> Arn:
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


def check_region(value: str) -> str:
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


@dataclass(frozen=True)
class ProxyUrl:
    """A proxy URL taken apart as curl reads one: ``http://`` when no scheme is given; ``port``
    None when none is given (curl then uses 1080 for http, 443 for https); the user name and
    password still percent-encoded, as written."""

    scheme: str
    host: str
    port: int | None
    username: str | None
    password: str | None

    @property
    def origin(self) -> str:
        """``scheme://host[:port]``: what a log line may show (no user name or password)."""
        shown = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{shown}" + (f":{self.port}" if self.port is not None else "")


def split_proxy_url(value: str, *, any_scheme: bool = False) -> ProxyUrl:
    """Every proxy URL (config keys and the environment's) is read by this one rule; only
    http and https proxies are supported (``any_scheme`` lets a log line show another).

    Raises ValueError whose message never holds the URL (it may hold a password)."""
    text = value.strip()
    head, sep, _ = text.partition("://")
    if not (sep and head.isascii() and head.replace("+", "").replace("-", "").isalnum()):
        text = "http://" + text
    try:
        parts = urlsplit(text)
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        raise ValueError(f"not a valid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") and not any_scheme:
        raise ValueError(f"scheme {scheme!r} is not supported (http or https)")
    if not host:
        raise ValueError("no host")
    return ProxyUrl(scheme, host, port, parts.username, parts.password)


def check_proxy_url(value: str) -> str:
    """An http(s) proxy as curl reads it (scheme optional), never with credentials inside.

    The user name and password live in ``proxy_credentials_file`` (0600), so that neither the
    config nor a log line ever holds them.
    """
    if not value.strip():
        return value  # "" = no proxy at all, the environment ignored (curl -x "")
    try:
        url = split_proxy_url(value)
    except ValueError as exc:
        raise ValueError(
            f"must be an http or https proxy URL like http://proxy.example:3128 ({exc})"
        ) from None
    if url.username is not None or url.password is not None:
        raise ValueError(
            "must not carry a user name or password: put user:password in a 0600 file and name"
            " it in proxy_credentials_file"
        )
    return value


def check_name(value: str) -> str:
    if not _NAME_RE.match(value):
        raise ValueError(
            "must be 1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit"
            " (names appear in URL paths)"
        )
    return value


def check_session_name(value: str) -> str:
    if not SESSION_NAME_RE.match(value):
        raise ValueError("must be 2 to 64 letters, digits or +=,.@_-")
    return value


CREDENTIALS_PREFIXES = ("$CREDENTIALS_DIRECTORY/", "${CREDENTIALS_DIRECTORY}/")
KEY_ID_LENGTH = 20
SECRET_LENGTH = 40
LONG_TERM_PREFIX = "AKIA"
TEMPORARY_PREFIX = "ASIA"
_KEY_ID_RE = re.compile(r"[A-Z0-9]{20}")
_SECRET_RE = re.compile(r"[A-Za-z0-9/+]{40}")


class AccessKeyError(ValueError):
    """A key id or secret that cannot be right; the message never quotes the secret."""


def check_key_id(value: str) -> str:
    """A long-term key id: 20 characters, uppercase letters and digits, starting with AKIA."""
    if value.startswith(TEMPORARY_PREFIX):
        raise AccessKeyError(
            "an ASIA... key id is temporary (issued by STS); configure the long-term"
            " AKIA... key of an IAM user"
        )
    if len(value) != KEY_ID_LENGTH:
        # Not echoed: people paste the secret here by mistake.
        raise AccessKeyError(f"must be {KEY_ID_LENGTH} characters (got {len(value)})")
    if not _KEY_ID_RE.fullmatch(value):
        raise AccessKeyError("must contain only uppercase letters and digits")
    if not value.startswith(LONG_TERM_PREFIX):
        raise AccessKeyError(f"must start with {LONG_TERM_PREFIX} (a long-term IAM user key)")
    return value


def check_secret(value: str) -> str:
    """40 characters of base64's alphabet; the message gives the length, never the value."""
    if len(value) != SECRET_LENGTH:
        hint = ""
        if len(value) == KEY_ID_LENGTH and _KEY_ID_RE.fullmatch(value):
            hint = " (that looks like a key id, not the secret)"
        raise AccessKeyError(
            f"a secret access key is {SECRET_LENGTH} characters (got {len(value)}){hint}"
        )
    if not _SECRET_RE.fullmatch(value):
        raise AccessKeyError(
            "a secret access key holds only letters, digits, '+' and '/'"
            " (check for quotes, spaces or a copied line break)"
        )
    return value

