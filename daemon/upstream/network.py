"""aiohttp plumbing for upstream calls: which CA store, which proxy, and plain-words errors.

* TLS: ``ssl_context(ca_bundle)`` -- a connection's ``ca_bundle``, else the daemon-wide one, else
  ``AWS_CA_BUNDLE``, else the system store (``ssl.create_default_context()``: OpenSSL's default
  paths; certifi is not used). A bundle *replaces* the system store, as ``AWS_CA_BUNDLE`` does
  for the SDKs. Contexts are cached per (path, size, mtime) so pooled connections are reused.
* Proxy: ``route(url, ...)`` decides with ``upstream.proxy`` (curl's rules) and returns the keyword
  arguments for ``session.request(...)``: ``proxy``, ``proxy_headers`` (Basic credentials from the
  0600 file; aiohttp 3.14 deprecates ``proxy_auth=BasicAuth``) and ``ssl``. The session must be
  made with ``trust_env=False`` (the default) so aiohttp does not apply its own env rules.
* Errors: ``classify(exc, url, proxy)`` gives the operator one line: the proxy's refusal with its
  status line, the TLS verification failure with the host it was for, and so on. ``ProxyRefused``
  covers the plain-http case, where the proxy's 407 is an ordinary response.

What aiohttp 3.14 raises (tests/e2e/test_network_aiohttp_proxy.py shows each against tinyproxy):

* proxy answers CONNECT with non-200 (407 no credentials, 401 tinyproxy's answer to wrong
  credentials, 403 ``Access violation`` for ConnectPort, 403 ``Access denied`` for Allow/Deny):
  ``ClientHttpProxyError`` (a ``ClientResponseError``) with ``.status`` and ``.message`` (the
  reason phrase) and ``.headers`` (e.g. ``Proxy-Authenticate``); the HTTP version is not kept;
* proxy port closed / unreachable: ``ClientProxyConnectionError`` (a ``ClientConnectorError``,
  ``.os_error`` the OSError, ``.host``/``.port`` the *proxy*);
* proxy closes the connection without answering CONNECT: ``ServerDisconnectedError``;
* certificate verification failed (direct or tunnelled): ``ClientConnectorCertificateError``,
  ``.host``/``.port`` the *target*, ``.certificate_error`` the ``ssl.SSLCertVerificationError``
  whose ``.verify_message`` says why ("unable to get local issuer certificate", "IP address
  mismatch, certificate is not valid for '127.0.0.1'.", "certificate has expired", ...);
* any other TLS failure: ``ClientConnectorSSLError`` (an ``ssl.SSLError``);
* plain-http target through a proxy: no exception -- the proxy's 407/403 is the response.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from credential_sidecar.upstream.proxy import (
    ProxyConfigError,
    ProxyCredentials,
    decide,
    load_proxy_credentials,
    redact,
)

__all__ = [
    "CABundleError",
    "ProxyRefused",
    "Route",
    "check_proxy_response",
    "classify",
    "resolve_ca_bundle",
    "route",
    "ssl_context",
]

PROXY_HINTS = {
    407: "the proxy wants credentials: set proxy_credentials_file (a 0600 file, user:password)",
    401: "the proxy refused the credentials from proxy_credentials_file",
    403: "the proxy does not allow a tunnel to this host or port (CONNECT denied), or does not "
    "allow this client",
}


class CABundleError(ValueError):
    """A CA bundle that cannot be used."""


@dataclass
class ProxyRefused(Exception):
    """A plain-http request that the proxy answered itself (407, 403...)."""

    status: int
    reason: str
    url: str
    proxy: str

    def __str__(self) -> str:
        return _proxy_refusal(self.status, self.reason, self.url, self.proxy)


# --- TLS -----------------------------------------------------------------------------------------


def resolve_ca_bundle(
    connection_ca_bundle: str | os.PathLike[str] | None = None,
    daemon_ca_bundle: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> Path | None:
    """The CA bundle in force: connection > daemon-wide > AWS_CA_BUNDLE > None (system store)."""
    environ = os.environ if env is None else env
    for candidate in (connection_ca_bundle, daemon_ca_bundle, environ.get("AWS_CA_BUNDLE")):
        if candidate is not None and str(candidate).strip():
            return Path(str(candidate).strip()).expanduser()
    return None


_CONTEXTS: dict[tuple[str, int, int] | None, ssl.SSLContext] = {}


def ssl_context(ca_bundle: str | os.PathLike[str] | None) -> ssl.SSLContext:
    """A verifying client context trusting ``ca_bundle`` only, or the system store for None."""
    if ca_bundle is None:
        if None not in _CONTEXTS:
            _CONTEXTS[None] = ssl.create_default_context()
        return _CONTEXTS[None]
    path = Path(ca_bundle)
    try:
        st = path.stat()
    except OSError as exc:
        raise CABundleError(f"CA bundle {path}: {exc.strerror}") from None
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    context = _CONTEXTS.get(key)
    if context is None:
        try:
            context = ssl.create_default_context(cafile=str(path))
        except ssl.SSLError as exc:
            raise CABundleError(
                f"CA bundle {path} holds no usable PEM certificate ({exc.reason or exc})"
            ) from None
        except OSError as exc:
            raise CABundleError(f"CA bundle {path}: {exc.strerror or exc}") from None
        _CONTEXTS[key] = context
    return context


# --- one request's route -------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    """How to reach one URL: pass ``**route.request_kwargs()`` to ``session.request``."""

    url: str
    proxy: str | None
    proxy_source: str
    ssl: ssl.SSLContext | None  # None for http:// URLs
    ca_bundle: Path | None
    credentials: ProxyCredentials | None = field(default=None, repr=False)

    def request_kwargs(self, headers: Mapping[str, str] | None = None) -> dict[str, Any]:
        """``proxy``, ``proxy_headers``, ``ssl`` and ``headers`` (``headers`` merged in).

        aiohttp sends ``proxy_headers`` on the CONNECT only: for an http:// target through a
        proxy, the request itself goes to the proxy, so ``Proxy-Authorization`` must be among
        the request's own headers.
        """
        kwargs: dict[str, Any] = {"proxy": self.proxy}
        merged = dict(headers or {})
        if self.proxy is not None and self.credentials is not None:
            if self.ssl is not None:
                kwargs["proxy_headers"] = self.credentials.headers()
            else:
                merged.update(self.credentials.headers())
        if merged or headers is not None:
            kwargs["headers"] = merged
        if self.ssl is not None:
            kwargs["ssl"] = self.ssl
        return kwargs

    def describe(self) -> str:
        """For logs: no secret."""
        via = "direct" if self.proxy is None else f"via {redact(self.proxy)} ({self.proxy_source})"
        store = "" if self.ssl is None else f", CA {self.ca_bundle or 'system store'}"
        return f"{self.url} {via}{store}"


def route(
    url: str,
    *,
    proxy: str | None = None,
    no_proxy: str | None = None,
    proxy_credentials_file: str | os.PathLike[str] | None = None,
    ca_bundle: str | os.PathLike[str] | None = None,
    daemon_ca_bundle: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> Route:
    """Decide proxy, proxy credentials and TLS store for ``url``.

    Raises ProxyConfigError / CABundleError (messages without secrets).
    """
    decision = decide(url, proxy=proxy, no_proxy=no_proxy, env=env)
    credentials = decision.auth
    if decision.url is not None and proxy_credentials_file is not None:
        credentials = load_proxy_credentials(proxy_credentials_file)
    is_https = urlsplit(url).scheme.lower() == "https"
    bundle = resolve_ca_bundle(ca_bundle, daemon_ca_bundle, env) if is_https else None
    context = ssl_context(bundle) if is_https else None
    return Route(url, decision.url, decision.source, context, bundle, credentials)


def check_proxy_response(status: int, reason: str | None, url: str, proxy: str | None) -> None:
    """For plain-http targets: a proxy's own refusal arrives as a response; raise ProxyRefused.

    Only 407 is certainly the proxy's; 403/502/503/504 from a proxy are told apart by the caller
    (e.g. tinyproxy's HTML body) -- here only 407 is turned into ProxyRefused.
    """
    if proxy is not None and status == 407:
        raise ProxyRefused(status, reason or "", url, proxy)


# --- errors --------------------------------------------------------------------------------------


def _target(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or "?"
    shown = f"[{host}]" if ":" in host else host
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme.lower())
    return f"{shown}:{port}"


def _proxy_refusal(status: int, reason: str, url: str, proxy: str) -> str:
    line = f"{status} {reason}".strip()
    hint = PROXY_HINTS.get(status, "")
    verb = "CONNECT to" if urlsplit(url).scheme.lower() == "https" else "request for"
    text = f"proxy {redact(proxy)} refused the {verb} {_target(url)}: {line}"
    return f"{text} ({hint})" if hint else text


def _proxy_of(exc: BaseException) -> str | None:
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        return str(exc.request_info.real_url.with_user(None))  # the request went to the proxy
    if isinstance(exc, aiohttp.ClientProxyConnectionError):
        return f"http://{exc.host}:{exc.port}"
    key = getattr(exc, "_conn_key", None)
    proxy = getattr(key, "proxy", None)
    return None if proxy is None else str(proxy.with_user(None))


def _oserror_text(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def classify(
    exc: BaseException,
    url: str,
    proxy: str | None,
    *,
    ca_bundle: str | os.PathLike[str] | None = None,
) -> str:
    """One line for the operator: what failed, where, and what to look at. No secrets.

    ``proxy`` None: taken from the exception where aiohttp recorded it (botocore's callers
    do not know which proxy aiohttp used).
    """
    if proxy is None:
        proxy = _proxy_of(exc)
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        url = str(exc.request_info.url)  # the CONNECT's target
    via = f" via proxy {redact(proxy)}" if proxy else ""
    target = _target(url)
    if isinstance(exc, ProxyRefused):
        return str(exc)
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        return _proxy_refusal(exc.status, exc.message, url, proxy or "?")
    if isinstance(exc, aiohttp.ClientProxyConnectionError):
        return f"cannot connect to proxy {redact(proxy)}: {_oserror_text(exc.os_error)}"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        cert_error = exc.certificate_error
        reason = getattr(cert_error, "verify_message", None) or str(cert_error)
        store = f"CA bundle {ca_bundle}" if ca_bundle else "the system CA store"
        return (
            f"TLS certificate verification failed for {exc.host}:{exc.port}{via}: {reason} "
            f"(trusting {store}; set ca_bundle or AWS_CA_BUNDLE if a proxy or private CA "
            "signs this host's certificate)"
        )
    if isinstance(exc, aiohttp.ClientConnectorSSLError):
        reason = getattr(exc.os_error, "reason", None) or _oserror_text(exc.os_error)
        return f"TLS handshake with {target}{via} failed: {reason}"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return f"cannot resolve {urlsplit(url).hostname}: {_oserror_text(exc.os_error)}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect to {target}: {_oserror_text(exc.os_error)}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        who = f"proxy {redact(proxy)} or {target}" if proxy else target
        return f"{who} closed the connection without an answer"
    if isinstance(exc, TimeoutError):
        return f"no answer from {target}{via} in time"
    if isinstance(exc, ProxyConfigError | CABundleError):
        return str(exc)
    if isinstance(exc, aiohttp.ClientError):
        return f"request to {target}{via} failed: {type(exc).__name__}: {exc}"
    return f"request to {target}{via} failed: {exc!r}"
