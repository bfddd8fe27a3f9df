"""Which proxy an upstream request goes through, decided the way curl decides it.

Rules (curl 7.86+ ``lib/url.c`` ``detect_proxy`` and ``lib/noproxy.c``; checked against the
real curl binary by ``tests/e2e/test_network_proxy_curl.py``):

* A configured ``proxy`` (curl's ``-x``) wins over every ``*_proxy`` environment variable.
* Otherwise, by the target's scheme: ``https``: ``https_proxy``, else ``HTTPS_PROXY``;
  ``http``: ``http_proxy`` only -- uppercase ``HTTP_PROXY`` is never read (curl refuses it
  because a CGI program gets it from a client's ``Proxy:`` header, "httpoxy"); then, for either
  scheme, ``all_proxy``, else ``ALL_PROXY``. A variable set to the empty string counts as unset
  (curl_getenv), so ``https_proxy=`` does not hide ``HTTPS_PROXY``.
* ``no_proxy`` (else ``NO_PROXY``; a configured ``no_proxy`` replaces both, like curl's
  ``--noproxy``) applies to the configured proxy and the environment's alike. It is a list of
  patterns separated by commas (and, as curl accepts, blanks):

  - ``*`` alone: no proxy for any host;
  - a host name: matches itself and every name below it (``example.com`` and
    ``.example.com`` both match ``example.com`` and ``a.example.com``, never
    ``badexample.com``); case-insensitive; one trailing dot on either side is ignored;
  - an IPv4 or IPv6 address, optionally ``/bits`` (CIDR): matches a target given as an address
    literal only -- names are never resolved, so ``127.0.0.1`` does not match ``localhost``.

  Deliberate differences from curl (documented in docs/network.md):

  - ``host:port`` / ``[v6]:port`` / ``1.2.3.4:port`` patterns match only that port (curl has no
    port syntax and such a pattern never matches there; Python's urllib and Go accept it);
  - an IPv6 pattern may be written in brackets (``[::1]``, ``[fd00::]/8``); curl needs it bare;
  - IPv6 targets are matched as addresses (CIDR, any spelling). curl 7.88 (Debian 12) compares
    them as plain strings -- only the identical spelling (``::1`` for ``::1``) matches, so
    ``::/64`` or ``::1/128`` never bypass there (and its IPv6 CIDR code, were it reached, had the
    test for the bits past a whole byte inverted).

* A proxy URL without a scheme is ``http://``; without a port, 1080 for ``http://`` (curl's
  default) and 443 for ``https://``. Only ``http://`` and ``https://`` proxies are supported
  (aiohttp speaks no SOCKS).

Credentials: never in a configured URL (``ProxyConfigError``). They live in a separate file,
mode 0600, one line ``user:password`` (the password may contain ``:``). A proxy URL taken from
the environment may still carry ``user:password@`` (as curl allows); it is percent-decoded into
``ProxyCredentials`` and removed from the URL handed to aiohttp. ``redact`` renders any proxy
URL for logs with the userinfo removed.
"""

from __future__ import annotations

import base64
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import unquote, urlsplit

from credential_sidecar.config.values import split_proxy_url
from credential_sidecar.files import FileError, read_file
from credential_sidecar.logs import SECRETS

__all__ = [
    "ProxyConfigError",
    "ProxyCredentials",
    "ProxyDecision",
    "bypass_proxy",
    "decide",
    "load_proxy_credentials",
    "normalize_proxy_url",
    "redact",
    "select_proxy",
]

CURL_DEFAULT_PROXY_PORT = 1080


class ProxyConfigError(ValueError):
    """A proxy setting that cannot be used; the message is safe to log (no secret)."""


@dataclass(frozen=True)
class ProxyCredentials:
    """Basic credentials for the proxy. ``repr`` never shows the password.

    Hand them to aiohttp as ``proxy_headers=creds.headers()``: aiohttp 3.14 deprecates
    ``BasicAuth`` and ``proxy_auth=`` (DeprecationWarning, removed in 4.0), and the header
    works on every aiohttp 3.x -- it is sent on the CONNECT for https targets and with each
    request for http targets.
    """

    login: str
    password: str = field(repr=False)

    def __post_init__(self) -> None:
        if ":" in self.login:
            raise ProxyConfigError("a proxy user name cannot contain ':' (RFC 7617)")

    def header_value(self) -> str:
        raw = f"{self.login}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")

    def headers(self) -> dict[str, str]:
        return {"Proxy-Authorization": self.header_value()}


@dataclass(frozen=True)
class ProxyDecision:
    """The proxy for one target: ``url`` (no userinfo) or None for a direct connection.

    ``source`` says where the decision came from, for logs: ``"config"``, the environment
    variable's name, ``"no_proxy"`` / ``"NO_PROXY"`` / ``"config no_proxy"`` when a pattern
    bypassed a proxy, or ``"none"``. ``auth`` is set only from userinfo in an environment URL
    (a configured proxy's credentials come from ``load_proxy_credentials``).
    """

    url: str | None
    source: str
    auth: ProxyCredentials | None = None

    def for_log(self) -> str:
        return "direct" if self.url is None else f"{redact(self.url)} (from {self.source})"


# --- environment ---------------------------------------------------------------------------------


def _getenv(env: Mapping[str, str], name: str) -> str | None:
    """curl_getenv: a variable set to the empty string counts as not set."""
    value = env.get(name)
    return value if value else None


def _proxy_from_env(scheme: str, env: Mapping[str, str]) -> tuple[str, str] | None:
    """(variable name, value) as curl's detect_proxy finds it, or None."""
    names = [f"{scheme}_proxy"]
    if scheme != "http":  # httpoxy: curl never reads HTTP_PROXY
        names.append(f"{scheme.upper()}_PROXY")
    names += ["all_proxy", "ALL_PROXY"]
    for name in names:
        value = _getenv(env, name)
        if value is not None:
            return name, value
    return None


def _no_proxy_from_env(env: Mapping[str, str]) -> tuple[str, str] | None:
    for name in ("no_proxy", "NO_PROXY"):
        value = _getenv(env, name)
        if value is not None:
            return name, value
    return None


# --- NO_PROXY matching ---------------------------------------------------------------------------


def _split_host_port(token: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]``, ``[v6]:port``, ``v6``, ``v6/bits``, ``[v6]/bits``."""
    if token.startswith("["):
        end = token.find("]")
        if end < 0:
            return token, None
        host, rest = token[1:end], token[end + 1 :]
        if rest.startswith("/"):
            return host + rest, None
        if rest.startswith(":") and rest[1:].isdigit():
            return host, int(rest[1:])
        return (host, None) if not rest else (token, None)
    if token.count(":") == 1:
        host, _, port = token.partition(":")
        if port.isdigit():
            return host, int(port)
    return token, None


def _ip_match(address: ipaddress.IPv4Address | ipaddress.IPv6Address, pattern: str) -> bool:
    text, slash, bits_text = pattern.partition("/")
    try:
        network_address = ipaddress.ip_address(text)
    except ValueError:
        return False
    if network_address.version != address.version:
        return False
    if slash:
        if not bits_text.isdigit():
            return False
        bits = int(bits_text)
        if bits > network_address.max_prefixlen:
            return False
        if bits == 0:  # curl: /0 means "this address only", not "everything"
            bits = network_address.max_prefixlen
    else:
        bits = network_address.max_prefixlen
    network = ipaddress.ip_network(f"{network_address}/{bits}", strict=False)
    return address in network


def bypass_proxy(host: str, port: int | None, no_proxy: str | None) -> bool:
    """True when ``no_proxy`` says the target ``host`` (``port``) is reached directly.

    ``host`` is the URL's host as ``urlsplit().hostname`` gives it (IPv6 without brackets).
    """
    if not host or not no_proxy:
        return False
    if no_proxy.strip() == "*":
        return True
    name = host.lower()
    address: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    try:
        address = ipaddress.ip_address(name.split("%", 1)[0])
    except ValueError:
        address = None
        if name.endswith("."):
            name = name[:-1]
    for raw in no_proxy.replace("\t", " ").replace(" ", ",").split(","):
        token = raw.strip()
        if not token:
            continue
        if token == "*":
            # curl honours '*' only as the whole value; inside a list it is a literal name
            continue
        pattern, want_port = _split_host_port(token)
        if want_port is not None and want_port != port:
            continue
        if address is not None:
            if _ip_match(address, pattern):
                return True
            continue
        pattern = pattern.lower()
        if pattern.endswith("."):
            pattern = pattern[:-1]
        if pattern.startswith("."):
            pattern = pattern[1:]
        if not pattern:
            continue
        if name == pattern or name.endswith("." + pattern):
            return True
    return False


# --- proxy URLs ----------------------------------------------------------------------------------


def normalize_proxy_url(url: str) -> tuple[str, ProxyCredentials | None]:
    """``scheme://host:port`` without userinfo, and the userinfo as ProxyCredentials (or None).

    Raises ProxyConfigError (message without the URL's userinfo) for what aiohttp cannot use.
    """
    try:
        parts = split_proxy_url(url)
    except ValueError as exc:
        raise ProxyConfigError(f"proxy URL {redact(url)!r}: {exc}") from None
    if parts.port is None:
        parts = replace(parts, port=CURL_DEFAULT_PROXY_PORT if parts.scheme == "http" else 443)
    auth = None
    if parts.username is not None or parts.password is not None:
        auth = ProxyCredentials(unquote(parts.username or ""), unquote(parts.password or ""))
    return parts.origin, auth


def redact(url: str | None) -> str:
    """A proxy URL for logs: scheme, host and port only (userinfo, path, query dropped)."""
    if url is None:
        return "none"
    try:
        return split_proxy_url(url, any_scheme=True).origin
    except ValueError:
        return "<unparseable proxy URL>"


def load_proxy_credentials(path: str | os.PathLike[str]) -> ProxyCredentials:
    """``user:password`` from a file only its owner may read or write (mode 0600/0400).

    Read with ``files.read_file(private=True)`` like every other secret file of the daemon.
    """
    p = Path(path)
    try:
        data, _ = read_file(p, "proxy credentials file", private=True)
    except FileError as exc:
        raise ProxyConfigError(str(exc)) from None
    except OSError as exc:  # read_file's fdopen of a directory raises IsADirectoryError
        raise ProxyConfigError(f"proxy credentials file {p}: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ProxyConfigError(f"proxy credentials file {p} is not UTF-8") from None
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) != 1:
        raise ProxyConfigError(f"proxy credentials file {p} must hold one line user:password")
    user, sep, password = lines[0].rstrip("\r").partition(":")
    if not sep or not user:
        raise ProxyConfigError(f"proxy credentials file {p}: expected user:password")
    SECRETS.add(password)  # never in a log line, whatever logs it
    return ProxyCredentials(user, password)


# --- the decision --------------------------------------------------------------------------------


def decide(
    url: str,
    *,
    proxy: str | None = None,
    no_proxy: str | None = None,
    env: Mapping[str, str] | None = None,
) -> ProxyDecision:
    """The proxy for ``url``: configured ``proxy`` > environment; then ``no_proxy`` applies.

    ``no_proxy`` (configured) replaces the environment's no_proxy/NO_PROXY when not None.
    A configured ``proxy`` must not carry userinfo (ProxyConfigError). ``proxy=""`` is "no
    proxy, and ignore the environment" (curl ``-x ""``).
    """
    environ = os.environ if env is None else env
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = parts.hostname or ""
    port = parts.port or {"http": 80, "https": 443}.get(scheme)

    if proxy is not None:
        if proxy.strip() == "":
            return ProxyDecision(None, "config")
        chosen, source = proxy, "config"
    else:
        found = _proxy_from_env(scheme, environ)
        if found is None:
            return ProxyDecision(None, "none")
        source, chosen = found

    if no_proxy is not None:
        rule, rule_source = no_proxy, "config no_proxy"
    else:
        found_np = _no_proxy_from_env(environ)
        rule_source, rule = found_np if found_np else ("none", "")
    if bypass_proxy(host, port, rule):
        return ProxyDecision(None, rule_source)

    normalized, auth = normalize_proxy_url(chosen)
    if source == "config" and auth is not None:
        raise ProxyConfigError(
            f"proxy {redact(chosen)!r}: put the user name and password in the proxy "
            "credentials file, not in the URL"
        )
    return ProxyDecision(normalized, source, auth)


def select_proxy(
    url: str,
    *,
    proxy: str | None = None,
    no_proxy: str | None = None,
    env: Mapping[str, str] | None = None,
) -> str | None:
    """The proxy URL (no userinfo) for ``url``, or None for a direct connection."""
    return decide(url, proxy=proxy, no_proxy=no_proxy, env=env).url
