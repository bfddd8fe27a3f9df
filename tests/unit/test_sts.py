"""The STS source's pieces that need no network: error mapping, answers, key facts and age."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

from credential_sidecar.config.load import parse_config
from credential_sidecar.config.model import AccessKeysConnection
from credential_sidecar.logs import SECRETS
from credential_sidecar.testing import FakeClock
from credential_sidecar.upstream.access_keys import AccessKeySource, credentials_from_response
from credential_sidecar.upstream.aws_clients import (
    error_from_botocore,
    error_from_client_error,
    side_endpoint,
)
from credential_sidecar.upstream.base import UpstreamError
from credential_sidecar.upstream.key_facts import KeyFacts

KEY_ID = "AKIAIOSFODNN7EXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
DAY = 86400


def _connection(tmp: Path, **extra: Any) -> AccessKeysConnection:
    secret = tmp / "k.secret"
    if not secret.exists():
        secret.write_text(SECRET + "\n")
        secret.chmod(0o600)
    # Nothing here may reach the network: a closed loopback port answers at once.
    data = {"name": "k", "type": "access-keys", "access_key_id": KEY_ID,
            "secret_access_key_file": str(secret), "endpoint": "http://127.0.0.1:9", **extra}
    conn = parse_config({"connections": [data]}).connections[0]
    assert isinstance(conn, AccessKeysConnection)
    return conn


def _client_error(code: str, message: str, status: int, **headers: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message},
                        "ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": headers}},
                       "GetSessionToken")


def test_service_errors_are_kept_verbatim() -> None:
    error = error_from_client_error(_client_error(
        "InvalidClientTokenId", "The security token included in the request is invalid.", 403))
    assert (error.code, error.message, error.status) == (
        "InvalidClientTokenId", "The security token included in the request is invalid.", 403)
    assert error.persistent and not error.throttled


def test_throttling_keeps_retry_after() -> None:
    error = error_from_client_error(_client_error("Throttling", "Rate exceeded", 400,
                                                  **{"Retry-After": "7"}))
    assert error.throttled and error.retry_after == 7.0 and not error.persistent


def test_an_error_without_words_still_says_something() -> None:
    error = error_from_client_error(ClientError({"ResponseMetadata": {"HTTPStatusCode": 503}},
                                                "GetSessionToken"))
    assert error.code == "HTTP503" and error.message == "no message in the response"


def test_network_trouble_is_retryable() -> None:
    down = error_from_botocore(EndpointConnectionError(endpoint_url="http://127.0.0.1:1/"), "x")
    slow = error_from_botocore(ReadTimeoutError(endpoint_url="http://127.0.0.1:1/"), "sts")
    assert down.code == "ConnectionError" and "127.0.0.1:1" in down.message
    assert slow.code == "Timeout" and slow.message == "no answer from sts in time"
    assert not down.persistent and not slow.persistent


def _answer(**creds: Any) -> dict[str, Any]:
    base = {"AccessKeyId": "ASIAEXAMPLEEXAMPLE12", "SecretAccessKey": "s" * 40,
            "SessionToken": "token-" + "t" * 100,
            "Expiration": datetime(2030, 1, 1, tzinfo=UTC)}
    base.update(creds)
    return {"Credentials": base}


def test_a_good_answer_becomes_a_set_and_its_secrets_are_registered() -> None:
    answer = _answer(SecretAccessKey="registered-secret-" + "r" * 22)
    answer["AssumedRoleUser"] = {"Arn": "arn:aws:sts::444455556666:assumed-role/r/s"}
    creds = credentials_from_response(answer, 1_800_000_000.0, "111122223333", SECRET)
    assert creds.account_id == "444455556666", "the assumed role's account wins"
    assert creds.expiration == datetime(2030, 1, 1, tzinfo=UTC)
    assert SECRETS.scrub(creds.secret_access_key) == "[REDACTED]"
    assert SECRETS.scrub(creds.session_token) == "[REDACTED]"


@pytest.mark.parametrize("answer", [
    {},
    {"Credentials": None},
    _answer(AccessKeyId=""),
    _answer(SessionToken=None),
    _answer(Expiration="not a date"),
])
def test_unusable_answers_are_errors_never_empty_sets(answer: dict[str, Any]) -> None:
    with pytest.raises(UpstreamError) as caught:
        credentials_from_response(answer, 0.0, None, SECRET)
    assert caught.value.code == "MalformedResponse"


def test_the_long_term_secret_is_never_passed_on() -> None:
    with pytest.raises(UpstreamError, match="long-term key itself"):
        credentials_from_response(_answer(SecretAccessKey=SECRET), 0.0, None, SECRET)


def test_key_facts() -> None:
    created = datetime(2027, 1, 1, tzinfo=UTC)
    facts = KeyFacts(KEY_ID, created, "iam", arn="arn:aws:iam::111122223333:root")
    assert facts.is_root
    assert facts.age_days(created.timestamp() + 10.5 * DAY) == 10.5
    assert not KeyFacts(KEY_ID, arn="arn:aws:iam::111122223333:user/root").is_root
    assert KeyFacts(KEY_ID).age_days(0) is None


def test_side_endpoint_follows_a_loopback_emulator_only() -> None:
    assert side_endpoint("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert side_endpoint("https://localhost:8443") == "https://localhost:8443"
    assert side_endpoint("https://sts.us-east-1.amazonaws.com") is None
    assert side_endpoint(None) is None
    assert side_endpoint("https://sts.example", override="http://127.0.0.1:1") == (
        "http://127.0.0.1:1")


async def test_age_from_config_warns_past_the_limit_at_most_daily(tmp_path: Path) -> None:
    created = datetime(2027, 1, 1, tzinfo=UTC)
    clock = FakeClock(start=(created + timedelta(days=89, hours=23)).timestamp())
    source = AccessKeySource(_connection(tmp_path, created="2027-01-01"), clock,
                             warn_after_days=90)
    with structlog.testing.capture_logs() as logs:
        source.check_age()  # 89.96 days: fine
        clock.jump_wall(DAY)  # 90.96 days
        source.check_age()
        clock.jump_wall(3600)
        source.check_age()  # within a day of the last warning: quiet
        clock.jump_wall(DAY)
        source.check_age()
    warnings = [e for e in logs if e["event"].startswith("access key is older")]
    assert [w["key_age_days"] for w in warnings] == [90, 92]
    assert warnings[0]["hint"] == "credential-sidecar rotate-keys k --config PATH"
    row = source.describe()
    assert row["key_age_days"] == 92 and row["key_created_from"] == "config"
    assert row["key_created"] == "2027-01-01T00:00:00Z" and row["key_age_warning"] is True
    assert row["long_term_key_id"] == KEY_ID and row["mode"] == "GetSessionToken"
    assert SECRET not in repr(row)


async def test_without_any_date_the_age_is_unknown(tmp_path: Path) -> None:
    source = AccessKeySource(_connection(tmp_path), FakeClock())
    assert source.describe()["key_age_days"] is None
    source.check_age()  # nothing to warn about, and no error


async def test_the_secret_is_re_read_when_its_file_changes(tmp_path: Path) -> None:
    source = AccessKeySource(_connection(tmp_path), FakeClock())
    assert await source._long_term_secret() == SECRET
    assert not await source.secret_changed()
    path = tmp_path / "k.secret"
    replacement = tmp_path / "new"
    replacement.write_text("B" * 40 + "\n")
    replacement.chmod(0o600)
    replacement.replace(path)  # atomically, as rotate-keys writes it
    assert await source.secret_changed()
    assert await source._long_term_secret() == "B" * 40
    assert not await source.secret_changed()
    path.chmod(0o644)
    path.touch()
    with pytest.raises(UpstreamError) as caught:
        await source._long_term_secret()
    assert caught.value.code == "FileError" and "has mode 0644" in caught.value.message
    await source.close()


async def test_binding_changes_with_the_key_and_the_role(tmp_path: Path) -> None:
    clock = FakeClock()
    one = AccessKeySource(_connection(tmp_path), clock)
    two = AccessKeySource(_connection(tmp_path, access_key_id="AKIAI44QH8DHBEXAMPLE"), clock)
    three = AccessKeySource(_connection(
        tmp_path, role_arn="arn:aws:iam::111122223333:role/r"), clock)
    bindings = {await s.binding() for s in (one, two, three)}
    assert len(bindings) == 3
    for source in (one, two, three):
        await source.close()
