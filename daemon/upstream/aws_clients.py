"""STS and IAM over aiobotocore: where calls go, how they are configured, what their errors mean.

Service errors keep the service's own code and message; network trouble becomes a retryable
code, so the renewal schedule treats STS exactly as it treats Roles Anywhere.
"""

from __future__ import annotations

import contextlib
from typing import Any
from urllib.parse import urlsplit

from botocore.config import Config as BotoConfig
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    ProxyConnectionError,
    ReadTimeoutError,
    SSLError,
)
from botocore.parsers import ResponseParserError

from credential_sidecar import __version__
from credential_sidecar.config.values import is_loopback
from credential_sidecar.upstream.aws_network import classify_botocore
from credential_sidecar.upstream.base import UpstreamError


def error_from_client_error(exc: ClientError) -> UpstreamError:
    """The service's own code and message, verbatim, with the HTTP status and any Retry-After."""
    response: dict[str, Any] = getattr(exc, "response", None) or {}
    error = response.get("Error") or {}
    meta = response.get("ResponseMetadata") or {}
    status = meta.get("HTTPStatusCode")
    headers = {str(k).lower(): v for k, v in (meta.get("HTTPHeaders") or {}).items()}
    code = str(error.get("Code") or "") or (f"HTTP{status}" if status else "UnknownError")
    message = str(error.get("Message") or "") or "no message in the response"
    retry_after: float | None = None
    with contextlib.suppress(TypeError, ValueError):
        retry_after = max(0.0, float(headers.get("retry-after", "")))
    return UpstreamError(code, message, status, retry_after)


def error_from_botocore(exc: BotoCoreError, where: str) -> UpstreamError:
    """Network trouble is worth retrying soon: codes the manager treats as transient."""
    if isinstance(exc, ProxyConnectionError | SSLError):
        # botocore says "Failed to connect to proxy URL" for a 407 too: name the status line,
        # or the TLS failure and its host (docs/network.md)
        return UpstreamError("ConnectionError", classify_botocore(exc, where, None))
    if isinstance(exc, ConnectTimeoutError | ReadTimeoutError):
        return UpstreamError("Timeout", f"no answer from {where} in time")
    if isinstance(exc, EndpointConnectionError | HTTPClientError):
        return UpstreamError("ConnectionError", str(exc))
    return UpstreamError(type(exc).__name__, str(exc))


def call_error(exc: BaseException, where: str) -> UpstreamError:
    """Any failure of one botocore call, as an UpstreamError."""
    if isinstance(exc, ClientError):
        return error_from_client_error(exc)
    if isinstance(exc, BotoCoreError):
        return error_from_botocore(exc, where)
    if isinstance(exc, TimeoutError):
        return UpstreamError("Timeout", f"no answer from {where} in time")
    if isinstance(exc, PARSE_ERRORS):
        # HTML from a captive portal or proxy, an empty or truncated body: not AWS talking.
        return UpstreamError("MalformedResponse", f"{where} answered with something that is not"
                             " an AWS response (HTML, empty or truncated)")
    return UpstreamError("ConnectionError", f"{where}: {exc!r}")


# What botocore raises when a body is not the XML it expects: ResponseParserError for text that
# is not XML, a KeyError (and kin) for well-formed XML of another shape, such as an HTML page.
# Around one botocore call, any of these means the answer was not AWS's.
PARSE_ERRORS = (ResponseParserError, KeyError, ValueError, TypeError, AttributeError)
CALL_ERRORS = (ClientError, BotoCoreError, TimeoutError, OSError, *PARSE_ERRORS)


def is_loopback_url(url: str | None) -> bool:
    if not url:
        return False
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return False
    return bool(host) and is_loopback(host)  # type: ignore[arg-type]


def side_endpoint(connection_endpoint: str | None, override: str | None = None) -> str | None:
    """Where IAM and S3 calls go: an explicit override; else the connection's ``endpoint`` when
    it is a loopback URL (a local emulator such as moto serves every service on one port); else
    botocore's own choice (which honours ``AWS_ENDPOINT_URL_<SERVICE>`` and ``AWS_ENDPOINT_URL``).
    """
    if override:
        return override
    return connection_endpoint if is_loopback_url(connection_endpoint) else None


def boto_config(timeout: float) -> BotoConfig:
    # One attempt per call: the manager owns retries, with its own backoff and jitter.
    return BotoConfig(
        connect_timeout=min(5.0, timeout), read_timeout=timeout,
        retries={"total_max_attempts": 1}, user_agent_extra=f"credential-sidecar/{__version__}",
    )

