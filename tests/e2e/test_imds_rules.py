"""Every IMDS rule of docs/protocols.md, against the daemon running as a process."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import harness as h

TTL = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN = "X-aws-ec2-metadata-token"
CREDS = "latest/meta-data/iam/security-credentials/"
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[h.Daemon, h.Emulator]]:
    tmp = tmp_path_factory.mktemp("imds")
    material = h.make_pki(tmp / "pki")
    with h.emulator(tmp, [material.ca_file]) as emu:
        conns = [h.connection("app", material, emu.url), h.connection("legacy", material, emu.url)]
        imds = [
            {"listen": "127.0.0.1:0", "connection": "app"},
            {"listen": "127.0.0.1:0", "connection": "legacy", "allow_imdsv1": True},
        ]
        with h.daemon(tmp, conns, imds=imds) as daemon:
            yield daemon, emu


@pytest.fixture(scope="module")
def base(stack: tuple[h.Daemon, h.Emulator]) -> str:
    return stack[0].url("imds:app")


def token(base: str, ttl: str = "60") -> str:
    status, _headers, body = h.http("PUT", base + "latest/api/token", {TTL: ttl})
    assert status == 200
    return body.decode()


def get(base: str, path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    return h.http("GET", base + path, headers)


@pytest.mark.parametrize("ttl", [None, "0", "21601", "-5", "abc", ""])
def test_token_ttl_missing_or_out_of_range_is_400(base: str, ttl: str | None) -> None:
    headers = {} if ttl is None else {TTL: ttl}
    status, _, body = h.http("PUT", base + "latest/api/token", headers)
    assert status == 400
    assert b"between 1 and 21600" in body


@pytest.mark.parametrize("ttl", ["1", "21600"])
def test_token_ttl_is_echoed(base: str, ttl: str) -> None:
    status, headers, body = h.http("PUT", base + "latest/api/token", {TTL: ttl})
    assert status == 200
    assert headers[TTL] == ttl
    assert len(body) >= 40


def test_token_put_through_a_proxy_is_refused(base: str) -> None:
    status, _, _ = h.http("PUT", base + "latest/api/token",
                          {TTL: "60", "X-Forwarded-For": "203.0.113.9"})
    assert status == 403


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE", "PATCH"])
def test_other_methods_on_the_token_path_are_405(base: str, method: str) -> None:
    status, headers, _ = h.http(method, base + "latest/api/token", {TTL: "60"})
    assert status == 405
    assert headers.get("Allow") == "PUT"


@pytest.mark.parametrize("bad", [None, "nonsense", "A" * 64])
def test_reads_without_a_valid_token_are_401(base: str, bad: str | None) -> None:
    headers = {} if bad is None else {TOKEN: bad}
    status, _, body = get(base, CREDS + "app", **headers)
    assert status == 401
    assert b"AccessKeyId" not in body


def test_a_tampered_token_is_401(base: str) -> None:
    good = token(base)
    flipped = good[:10] + ("A" if good[10] != "A" else "B") + good[11:]
    assert get(base, CREDS, **{TOKEN: good})[0] == 200
    assert get(base, CREDS, **{TOKEN: flipped})[0] == 401


def test_a_token_from_another_listener_is_refused(stack: tuple[h.Daemon, h.Emulator]) -> None:
    daemon, _ = stack
    other = token(daemon.url("imds:legacy"))
    assert get(daemon.url("imds:app"), CREDS, **{TOKEN: other})[0] == 401


@pytest.mark.parametrize("path", [CREDS, CREDS.rstrip("/")])
def test_role_listing_is_the_name_alone(base: str, path: str) -> None:
    status, headers, body = get(base, path, **{TOKEN: token(base)})
    assert status == 200
    assert body == b"app"
    assert headers["Content-Type"].startswith("text/plain")


@pytest.mark.parametrize("suffix", ["", "/"])
def test_credentials_document(stack: tuple[h.Daemon, h.Emulator], suffix: str) -> None:
    daemon, emu = stack
    base = daemon.url("imds:app")
    status, headers, body = get(base, CREDS + "app" + suffix, **{TOKEN: token(base)})
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    doc = json.loads(body)
    assert set(doc) == {"Code", "LastUpdated", "Type", "AccessKeyId", "SecretAccessKey",
                        "Token", "Expiration"}
    assert doc["Code"] == "Success" and doc["Type"] == "AWS-HMAC"
    assert STAMP.match(doc["LastUpdated"]) and STAMP.match(doc["Expiration"])
    issued = {c["accessKeyId"]: c for c in emu.stats()["issued"]}
    assert doc["AccessKeyId"] in issued
    assert doc["SecretAccessKey"] == issued[doc["AccessKeyId"]]["secretAccessKey"]
    assert doc["Token"] == issued[doc["AccessKeyId"]]["sessionToken"]


def test_head_is_answered_like_get(base: str) -> None:
    status, _, body = h.http("HEAD", base + CREDS + "app", {TOKEN: token(base)})
    assert status == 200 and body == b""


def test_writes_to_read_paths_are_405(base: str) -> None:
    status, _, _ = h.http("POST", base + CREDS + "app", {TOKEN: token(base)}, b"{}")
    assert status == 405


@pytest.mark.parametrize("path", [
    CREDS + "someone-else",
    "latest/meta-data/iam/security-credentials-extended/someone-else",
    "latest/meta-data/nothing-here",
    "../../etc/passwd",
])
def test_unknown_paths_are_404(base: str, path: str) -> None:
    status, _, body = get(base, path, **{TOKEN: token(base)})
    assert status == 404
    assert b"AccessKeyId" not in body


def test_extended_credentials_carry_the_account(base: str) -> None:
    tok = token(base)
    extended = "latest/meta-data/iam/security-credentials-extended/"
    status, _, body = get(base, extended, **{TOKEN: tok})
    assert (status, body) == (200, b"app")
    status, _, body = get(base, extended + "app", **{TOKEN: tok})
    assert status == 200
    doc = json.loads(body)
    status, _, plain = get(base, CREDS + "app", **{TOKEN: tok})
    assert doc == {**json.loads(plain), "AccountId": h.ACCOUNT}


def test_region_and_identity_document(base: str) -> None:
    tok = token(base)
    status, _, body = get(base, "latest/meta-data/placement/region", **{TOKEN: tok})
    assert (status, body) == (200, b"us-east-1")
    status, _, body = get(base, "latest/dynamic/instance-identity/document", **{TOKEN: tok})
    assert status == 200
    assert json.loads(body) == {"region": "us-east-1", "accountId": h.ACCOUNT}


@pytest.mark.parametrize("host", ["evil.example:80", "attacker.test", "127.0.0.1:1"])
def test_foreign_host_headers_are_refused(base: str, host: str) -> None:
    status, _, body = get(base, CREDS + "app", **{TOKEN: token(base), "Host": host})
    assert status == 400
    assert b"AccessKeyId" not in body


def test_localhost_host_header_is_accepted(base: str) -> None:
    port = base.rstrip("/").rsplit(":", 1)[1]
    status, _, _ = get(base, CREDS + "app", **{TOKEN: token(base), "Host": f"localhost:{port}"})
    assert status == 200


def test_reads_through_a_proxy_are_refused(base: str) -> None:
    status, _, _ = get(base, CREDS + "app", **{TOKEN: token(base), "X-Forwarded-For": "10.9.9.9"})
    assert status == 403


def test_imdsv1_is_off_by_default_and_on_where_allowed(stack: tuple[h.Daemon, h.Emulator]) -> None:
    daemon, _ = stack
    assert get(daemon.url("imds:app"), CREDS + "app")[0] == 401
    status, _, body = get(daemon.url("imds:legacy"), CREDS + "legacy")
    assert status == 200 and json.loads(body)["Code"] == "Success"
    # A token that is present but wrong is still refused where v1 is allowed.
    assert get(daemon.url("imds:legacy"), CREDS + "legacy", **{TOKEN: "bogus"})[0] == 401


def test_no_credentials_yet_is_an_error_never_an_empty_success(tmp_path: Path) -> None:
    material = h.make_pki(tmp_path / "pki")
    with h.emulator(tmp_path, [material.ca_file]) as emu:
        emu.faults(fail_status=500, fail_count=-1)
        conn = h.connection("app", material, emu.url)
        with h.daemon(tmp_path, [conn], wait_ready=False) as daemon:
            h.wait_for(lambda: emu.stats()["calls"] >= 1, what="a first CreateSession attempt")
            base = daemon.url("imds:app")
            status, _, body = get(base, CREDS + "app", **{TOKEN: token(base)})
            assert status == 503
            doc = json.loads(body)
            assert doc["Code"] != "Success" and "AccessKeyId" not in doc
            status, _, body = h.http("GET", daemon.url("health") + "readyz")
            assert status == 503
            assert "app" in json.loads(body)["not_ready"]
            emu.faults(fail_count=0)
