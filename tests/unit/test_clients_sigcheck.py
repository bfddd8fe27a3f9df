"""The verifying proxy's SigV4 check, against requests signed by botocore (independently)."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime
from urllib.parse import urlsplit

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.helpers import sigcheck_proxy as sc

SERVED = sc.Served("ASIAEXAMPLEEXAMPLE01", "secret/EXAMPLE+KEY/0123456789abcdefghijklm", "tok-1")


def signed(method: str, url: str, body: bytes = b"", *, key: str = SERVED.access_key_id,
           secret: str = SERVED.secret_access_key, token: str | None = SERVED.token,
           ) -> tuple[str, list[tuple[str, str]], bytes]:
    request = AWSRequest(method=method, url=url, data=body)
    request.headers["Host"] = urlsplit(url).netloc
    S3SigV4Auth(Credentials(key, secret, token), "s3", "us-east-1").add_auth(request)
    parts = urlsplit(str(request.url))
    raw_path = parts.path + (f"?{parts.query}" if parts.query else "")
    return raw_path, [(k, str(v)) for k, v in request.headers.items()], body


URL = "http://127.0.0.1:9000/bucket-one/some%20key/x.txt?uploads=&partNumber=2&a=b%2Fc"


def test_botocore_signature_verifies() -> None:
    path, headers, body = signed("PUT", URL, b"hello")
    verdict = sc.verify("PUT", path, headers, body, SERVED)
    assert verdict.ok, verdict
    assert "payload hash verified" in verdict.reason


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ("body", "XAmzContentSHA256Mismatch"),
        ("path", "SignatureDoesNotMatch"),
        ("query", "SignatureDoesNotMatch"),
        ("host", "SignatureDoesNotMatch"),
        ("method", "SignatureDoesNotMatch"),
    ],
)
def test_any_tampering_is_caught(change: str, code: str) -> None:
    method, (path, headers, body) = "PUT", signed("PUT", URL, b"hello")
    if change == "body":
        body = b"hellO"
    elif change == "path":
        path = path.replace("x.txt", "y.txt")
    elif change == "query":
        path = path.replace("partNumber=2", "partNumber=3")
    elif change == "host":
        headers = [(k, "127.0.0.1:9001" if k.lower() == "host" else v) for k, v in headers]
    else:
        method = "POST"
    verdict = sc.verify(method, path, headers, body, SERVED)
    assert (verdict.ok, verdict.code) == (False, code)


def test_wrong_secret_key_and_token_are_refused() -> None:
    assert sc.verify("GET", *signed("GET", URL, secret="x" * 40), SERVED).code == \
        "SignatureDoesNotMatch"
    assert sc.verify("GET", *signed("GET", URL, key="ASIAOTHEROTHEROTHER1"), SERVED).code == \
        "InvalidAccessKeyId"
    assert sc.verify("GET", *signed("GET", URL, token="tok-2"), SERVED).code == "InvalidToken"
    assert sc.verify("GET", *signed("GET", URL, token=None), SERVED).code == "InvalidToken"


def test_unsigned_and_sigv2_are_refused() -> None:
    assert sc.verify("GET", "/", [("Host", "x")], b"", SERVED).reason.startswith("unsigned")
    v2 = [("Host", "x"), ("Authorization", f"AWS {SERVED.access_key_id}:c2lnbmF0dXJl")]
    assert "SigV2" in sc.verify("GET", "/", v2, b"", SERVED).reason


def test_stale_date_is_refused() -> None:
    verdict = sc.verify("GET", *signed("GET", URL), SERVED,
                        now=datetime(2001, 1, 1, tzinfo=UTC))
    assert verdict.code == "RequestTimeTooSkewed"


def _chunked(chunks: list[bytes], seed: str, amz_date: str, scope: str) -> bytes:
    """aws-chunked encoding written from the S3 documentation, independently of the proxy."""
    date, region, service = scope.split("/")[:3]
    key = hmac.new(("AWS4" + SERVED.secret_access_key).encode(), date.encode(),
                   hashlib.sha256).digest()
    for part in (region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    out, previous = b"", seed
    for data in [*chunks, b""]:
        to_sign = "\n".join(["AWS4-HMAC-SHA256-PAYLOAD", amz_date, scope, previous,
                             hashlib.sha256(b"").hexdigest(), hashlib.sha256(data).hexdigest()])
        previous = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        out += f"{len(data):x};chunk-signature={previous}\r\n".encode() + data + b"\r\n"
    return out


class StreamingAuth(S3SigV4Auth):
    def payload(self, request: AWSRequest) -> str:
        return sc.STREAMING


@pytest.mark.parametrize("tamper", [False, True])
def test_streaming_chunk_signatures(tamper: bool) -> None:
    # Sign the headers as minio-go does for a streaming upload, then encode the body.
    request = AWSRequest(method="PUT", url="http://127.0.0.1:9000/b/k", data=b"")
    request.headers["Host"] = "127.0.0.1:9000"
    request.headers["X-Amz-Decoded-Content-Length"] = "10"
    creds = Credentials(SERVED.access_key_id, SERVED.secret_access_key, SERVED.token)
    StreamingAuth(creds, "s3", "us-east-1").add_auth(request)
    headers = [(k, str(v)) for k, v in request.headers.items()]
    seed = str(request.headers["Authorization"]).rsplit("Signature=", 1)[1]
    amz_date = str(request.headers["X-Amz-Date"])
    scope = f"{amz_date[:8]}/us-east-1/s3/aws4_request"
    body = _chunked([b"01234", b"56789"], seed, amz_date, scope)
    if tamper:
        body = body.replace(b"56789", b"56780")
    verdict = sc.verify("PUT", "/b/k", headers, body, SERVED)
    if tamper:
        assert (verdict.ok, verdict.code) == (False, "SignatureDoesNotMatch")
    else:
        assert verdict.ok, verdict
        assert verdict.chunks == 3


def test_several_served_sets() -> None:
    other = sc.Served("ASIAOTHEROTHEROTHER1", "another/secret/0123456789abcdefghijklmn", "tok-2")
    path, headers, body = signed("GET", URL, key=other.access_key_id,
                                 secret=other.secret_access_key, token=other.token)
    assert sc.verify("GET", path, headers, body, [SERVED, other]).ok
    assert sc.verify("GET", path, headers, body, [SERVED]).code == "InvalidAccessKeyId"
