"""Proxy and CA settings for aiobotocore (STS), decided by ``upstream.proxy`` rather than botocore.

How botocore/aiobotocore behave on their own (aiobotocore 3.10 / botocore 1.43, measured in
tests/e2e/test_network_sts_proxy.py):

* ``Config(proxies=None)`` (the default): ``EndpointCreator`` calls ``get_environ_proxies(url)``
  -- urllib's ``getproxies()`` and ``proxy_bypass()``: ``NO_PROXY`` entries are host/domain
  suffixes and exact names only, **no CIDR** (``127.0.0.0/8`` does not bypass 127.0.0.1),
  ``HTTP_PROXY`` is read (except under CGI), and an empty lowercase variable removes the
  uppercase one -- all different from curl.
* ``Config(proxies={})`` (an empty dict, not None): no proxy, environment ignored. Any dict is
  used as given: ``{"https": url}`` sends https requests through ``url``.
* Proxy credentials: only as userinfo in the proxies URL (aiobotocore computes proxy headers from
  the *target* URL, so ``Proxy-Authorization`` comes from aiohttp reading the proxy URL's
  userinfo; no DeprecationWarning on that path). botocore masks them in its own messages
  (``http://***:***@host:port``); the wrapped aiohttp exception's repr does not (its
  ``request_info.headers`` holds ``Proxy-Authorization``): never log ``repr`` of these errors.
* ``verify``: ``create_client(verify=path)`` trusts that bundle only; ``verify=None`` falls back
  to ``AWS_CA_BUNDLE`` / the profile's ``ca_bundle``, else **certifi's bundle (or botocore's
  own cacert.pem), not the system store**. To trust what the aiohttp side trusts, pass the
  system CA file explicitly (``ssl.get_default_verify_paths().cafile``).
* Errors: a proxy's non-200 answer to CONNECT (407, 401, 403) and an unreachable proxy both
  become ``botocore.exceptions.ProxyConnectionError`` ("Failed to connect to proxy URL: ...",
  no status) with the aiohttp exception in ``exc.kwargs["error"]``; certificate failures
  become ``botocore.exceptions.SSLError`` ("SSL validation failed for URL ...") wrapping
  ``ClientConnectorCertificateError``. ``classify_botocore`` unwraps them for ``classify``.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

from credential_sidecar.upstream.network import CABundleError, classify, resolve_ca_bundle
from credential_sidecar.upstream.proxy import (
    ProxyCredentials,
    decide,
    load_proxy_credentials,
    redact,
)

__all__ = ["BotoNetwork", "boto_network", "classify_botocore", "system_ca_file"]


def system_ca_file() -> str | None:
    """The CA file OpenSSL (and so ``ssl.create_default_context()``) uses, if it exists."""
    paths = ssl.get_default_verify_paths()
    return paths.cafile  # None when the file does not exist


@dataclass(frozen=True)
class BotoNetwork:
    """``create_client(..., **net.client_kwargs(), config=Config(**net.config_kwargs()))``."""

    endpoint_url: str
    proxy: str | None  # without userinfo, for logs
    proxy_source: str
    verify: str | bool | None
    _proxy_url_with_auth: str | None = field(default=None, repr=False)

    def client_kwargs(self) -> dict[str, Any]:
        return {"verify": self.verify}

    def config_kwargs(self) -> dict[str, Any]:
        # {} (not None) when direct: botocore must not consult the environment itself
        proxies = {} if self._proxy_url_with_auth is None else {"https": self._proxy_url_with_auth}
        if urlsplit(self.endpoint_url).scheme.lower() == "http" and proxies:
            proxies["http"] = proxies.pop("https")
        return {"proxies": proxies}

    def describe(self) -> str:
        via = "direct" if self.proxy is None else f"via {redact(self.proxy)} ({self.proxy_source})"
        return f"{self.endpoint_url} {via}, CA {self.verify or 'botocore default'}"


def _with_userinfo(proxy_url: str, creds: ProxyCredentials | None) -> str:
    if creds is None:
        return proxy_url
    scheme, rest = proxy_url.split("://", 1)
    userinfo = f"{quote(creds.login, safe='')}:{quote(creds.password, safe='')}"
    return f"{scheme}://{userinfo}@{rest}"


def boto_network(
    endpoint_url: str,
    *,
    proxy: str | None = None,
    no_proxy: str | None = None,
    proxy_credentials_file: str | os.PathLike[str] | None = None,
    ca_bundle: str | os.PathLike[str] | None = None,
    daemon_ca_bundle: str | os.PathLike[str] | None = None,
    use_system_store: bool = True,
    env: Mapping[str, str] | None = None,
) -> BotoNetwork:
    """Proxy and verify settings for one STS endpoint, decided as for the aiohttp side.

    ``use_system_store``: with no bundle configured, pass the system CA file so STS trusts what
    Roles Anywhere (aiohttp, ``ssl.create_default_context()``) trusts; False leaves botocore's
    default (certifi / botocore's cacert.pem).
    """
    decision = decide(endpoint_url, proxy=proxy, no_proxy=no_proxy, env=env)
    creds = decision.auth
    if decision.url is not None and proxy_credentials_file is not None:
        creds = load_proxy_credentials(proxy_credentials_file)
    bundle = resolve_ca_bundle(ca_bundle, daemon_ca_bundle, env)
    verify: str | bool | None
    if bundle is not None:
        if not bundle.is_file():
            raise CABundleError(f"CA bundle {bundle}: not a readable file")
        verify = str(bundle)
    else:
        verify = system_ca_file() if use_system_store else None
    proxied = None if decision.url is None else _with_userinfo(decision.url, creds)
    return BotoNetwork(endpoint_url, decision.url, decision.source, verify, proxied)


def classify_botocore(
    exc: BaseException, url: str, proxy: str | None, *, ca_bundle: str | None = None
) -> str:
    """``classify`` for botocore's wrappers (ProxyConnectionError, SSLError, ...)."""
    inner = getattr(exc, "kwargs", {}).get("error") if hasattr(exc, "kwargs") else None
    if isinstance(inner, BaseException):
        return classify(inner, url, proxy, ca_bundle=ca_bundle)
    return classify(exc, url, proxy, ca_bundle=ca_bundle)
