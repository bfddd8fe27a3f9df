"""canonical_query against the SigV4 rules and against botocore's own SigV4 canonicalisation."""

from __future__ import annotations

from typing import Any, cast
from urllib.parse import quote, urlencode

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from credential_sidecar.upstream.sigv4_x509 import canonical_query, encode_query

ARN = "arn:aws:rolesanywhere:us-east-1:111122223333:profile/a1b2c3"

# decoded parameters -> what SigV4 says the canonical string is
CASES: list[tuple[list[tuple[str, str]], str]] = [
    ([], ""),
    ([("a", "1")], "a=1"),
    ([("b", "2"), ("a", "1")], "a=1&b=2"),
    ([("profileArn", ARN)], "profileArn=" + ARN.replace(":", "%3A").replace("/", "%2F")),
    ([("k", "a b")], "k=a%20b"),
    ([("k", "a+b")], "k=a%2Bb"),
    ([("k", "x=y=z")], "k=x%3Dy%3Dz"),
    ([("k", "")], "k="),
    ([("k", "-_.~")], "k=-_.~"),
    ([("k", "é")], "k=%C3%A9"),
    ([("k", "%")], "k=%25"),
    ([("k", "a&b")], "k=a%26b"),
    ([("a b", "1")], "a%20b=1"),
    ([("k", "2"), ("k", "10"), ("k", "1")], "k=1&k=10&k=2"),
    ([("Z", "1"), ("a", "1"), ("_", "1")], "Z=1&_=1&a=1"),
]


@pytest.mark.parametrize(("params", "expected"), CASES)
def test_canonical_from_encoded_query(params: list[tuple[str, str]], expected: str) -> None:
    assert canonical_query(encode_query(params)) == expected


@pytest.mark.parametrize(("params", "expected"), CASES)
def test_matches_botocore_params_canonicalisation(
    params: list[tuple[str, str]], expected: str
) -> None:
    auth = SigV4Auth(Credentials("AKID", "SECRET"), "rolesanywhere", "us-east-1")
    assert cast(Any, auth)._canonical_query_string_params(params) == expected


@pytest.mark.parametrize(("params", "expected"), CASES)
def test_matches_botocore_canonical_request_from_url(
    params: list[tuple[str, str]], expected: str
) -> None:
    """botocore's canonical request for a URL whose query is already encoded (no params)."""
    auth = SigV4Auth(Credentials("AKID", "SECRET"), "rolesanywhere", "us-east-1")
    query = encode_query(params)
    request = AWSRequest(method="GET", url="https://h.example/x" + (f"?{query}" if query else ""))
    request.headers["X-Amz-Date"] = "20240101T000000Z"
    request.headers["Host"] = "h.example"
    canonical = auth.canonical_request(request)
    assert canonical.split("\n")[2] == expected
    assert canonical_query(query) == expected


def test_does_not_double_encode() -> None:
    query = "profileArn=" + quote(ARN, safe="")
    assert "%253A" not in canonical_query(query)
    assert canonical_query(query) == query


def test_other_encodings_of_the_same_parameters_canonicalise_alike() -> None:
    # lower-case hex, unencoded ':' and '/', unreserved chars needlessly encoded
    forms = [
        "profileArn=arn%3aaws%3arolesanywhere%3aus-east-1%3a1%3aprofile%2fp",
        "profileArn=arn:aws:rolesanywhere:us-east-1:1:profile/p",
        "profile%41rn=arn%3Aaws%3Arolesanywhere%3Aus%2Deast%2D1%3A1%3Aprofile%2Fp",
    ]
    canon = {canonical_query(f) for f in forms}
    assert canon == {"profileArn=arn%3Aaws%3Arolesanywhere%3Aus-east-1%3A1%3Aprofile%2Fp"}


def test_plus_is_literal_not_space() -> None:
    assert canonical_query("k=a+b") == "k=a%2Bb"
    assert canonical_query("k=a%20b") == "k=a%20b"
    # urlencode writes a space as '+': such a query means something else to SigV4
    assert canonical_query(urlencode({"k": "a b"})) == "k=a%2Bb"


def test_edge_items() -> None:
    assert canonical_query("a") == "a="
    assert canonical_query("a=") == "a="
    assert canonical_query("a=1&&b=2&") == "a=1&b=2"
    assert canonical_query("=v") == "=v"
    assert canonical_query("k==") == "k=%3D"


def test_sorted_by_encoded_name_then_value() -> None:
    # by the encoded name (a prefix first), then by the encoded value
    assert canonical_query("b=1&a%20=1&a=2&a=1") == "a=1&a=2&a%20=1&b=1"
