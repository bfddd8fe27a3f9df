"""The container-credentials door: token files, and what each kind of caller may learn."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from credential_sidecar.clock import utc
from credential_sidecar.credentials import Credentials
from credential_sidecar.doors.container import ALIASES, ContainerApp
from credential_sidecar.doors.container_tokens import (
    TokenBook,
    TokenError,
    default_token_path,
    load_or_create_token,
    read_token,
)
from credential_sidecar.doors.guards import HostGuard
from credential_sidecar.files import acl_grants
from credential_sidecar.logs import SECRETS
from credential_sidecar.state.tokens import TokenKeeper
from credential_sidecar.testing import FakeClock


@dataclass(frozen=True)
class Conn:
    name: str
    container_token_file: Path | None = None
    allowed_uids: list[int] = field(default_factory=list)
    allowed_gids: list[int] = field(default_factory=list)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_missing_token_file_is_created_0600_without_a_newline(tmp_path: Path) -> None:
    path = tmp_path / "run" / "app.token"
    token, created = load_or_create_token(path)
    assert created
    assert _mode(path) == 0o600 and acl_grants(path, os.geteuid()) is None
    raw = path.read_bytes()
    assert raw == token.encode() and not raw.endswith(b"\n")
    assert len(token) >= 43  # secrets.token_urlsafe(32)
    assert _mode(path.parent) == 0o711
    assert [p.name for p in path.parent.iterdir()] == ["app.token"], "no temporary file left"
    # A second start reads the same token back rather than replacing it.
    assert load_or_create_token(path) == (token, False)


def test_the_token_file_grants_read_to_each_allowed_uid_and_gid_by_acl(tmp_path: Path) -> None:
    path = tmp_path / "app.token"
    token, _ = load_or_create_token(path, [1001, 1002], [2001])
    assert acl_grants(path, os.geteuid()) == ["user 1001", "user 1002", "group 2001"]
    assert _mode(path) == 0o640  # the group bits show the ACL's mask (read), not the group's
    assert path.stat().st_uid == os.geteuid()
    # A reload with other lists re-applies them; none at all leaves plain 0600.
    assert load_or_create_token(path, [1003], []) == (token, False)
    assert acl_grants(path, os.geteuid()) == ["user 1003"]
    load_or_create_token(path)
    assert _mode(path) == 0o600 and acl_grants(path, os.geteuid()) is None


def test_naming_the_daemons_own_uid_is_fine(tmp_path: Path) -> None:
    path = tmp_path / "app.token"
    token, _ = load_or_create_token(path, [os.geteuid()], [])
    assert load_or_create_token(path, [os.geteuid()], []) == (token, False)
    assert acl_grants(path, os.geteuid()) == []  # an entry, but for nobody else


def test_an_older_0640_token_file_is_narrowed(tmp_path: Path) -> None:
    path = tmp_path / "app.token"
    path.write_text("operator-chosen-token-0123456789")
    path.chmod(0o640)
    assert read_token(path, [1001]) == "operator-chosen-token-0123456789"
    assert acl_grants(path, os.geteuid()) == ["user 1001"]


def test_a_token_file_that_is_a_link_or_someone_elses_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real.token"
    real.write_text("operator-chosen-token-0123456789")
    real.chmod(0o600)
    link = tmp_path / "link.token"
    link.symlink_to(real)
    with pytest.raises(TokenError, match="symbolic link"):
        read_token(link)
    if os.geteuid() == 0:
        os.chown(real, 65534, 65534)
        with pytest.raises(TokenError, match="belongs to uid 65534, not to the daemon"):
            read_token(real)
        with pytest.raises(TokenError, match="belongs to uid 65534"):
            load_or_create_token(real)


def test_an_existing_token_loses_trailing_whitespace(tmp_path: Path) -> None:
    path = tmp_path / "app.token"
    path.write_text("operator-chosen-token-0123456789\n\n")
    path.chmod(0o640)
    assert read_token(path) == "operator-chosen-token-0123456789"


@pytest.mark.parametrize("mode", [0o644, 0o606, 0o642])
def test_a_token_file_other_users_can_touch_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "app.token"
    path.write_text("operator-chosen-token-0123456789")
    path.chmod(mode)
    with pytest.raises(TokenError, match=f"mode {mode:04o}.*chmod 600"):
        read_token(path)


@pytest.mark.parametrize("content", [b"", b"short", b"has a space in the middle!", b"\xff" * 20])
def test_a_token_file_without_a_usable_token_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "app.token"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(TokenError):
        read_token(path)


def test_the_book_creates_default_files_and_reports_bad_ones(tmp_path: Path) -> None:
    state = tmp_path / "state"
    bad = tmp_path / "bad.token"
    bad.write_text("operator-chosen-token-0123456789")
    bad.chmod(0o644)
    book = TokenBook()
    book.sync([Conn("a"), Conn("b", container_token_file=bad)], state)
    assert book.paths["a"] == default_token_path(state, "a") == state / "tokens" / "a.token"
    token = read_token(book.paths["a"])
    assert book.owner(token) == "a"
    assert token in SECRETS._values, "the redactor knows the token"
    assert "b" in book.problems and "0644" in book.problems["b"]
    assert book.owner("operator-chosen-token-0123456789") is None


def test_a_reload_picks_up_a_rewritten_token_and_forgets_removed_connections(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    book = TokenBook()
    book.sync([Conn("a"), Conn("b")], state)
    old_a = read_token(book.paths["a"])
    old_b = read_token(book.paths["b"])
    book.paths["a"].write_text("rotated-token-for-a-0123456789")
    book.sync([Conn("a")], state)
    assert book.owner("rotated-token-for-a-0123456789") == "a"
    assert book.owner(old_a) is None
    assert book.owner(old_b) is None


def test_a_vanished_token_file_comes_back_with_the_same_token_and_rotations_are_kept(
    tmp_path: Path,
) -> None:
    """A token under /run is gone after a stop and start or a reboot; apps that copied it must
    still be admitted, and a token the operator rotated in must not come back as the old one."""
    run, state = tmp_path / "run", tmp_path / "state"
    keeper = TokenKeeper(state / "kept-tokens", bytes(range(32)))
    conn = Conn("a", container_token_file=run / "a.token")
    TokenBook().sync([conn], state, keeper)
    first = read_token(run / "a.token")
    sealed = (state / "kept-tokens" / "a.sealed").read_bytes()
    assert first.encode() not in sealed, "kept sealed, never in the clear"
    assert stat.S_IMODE((state / "kept-tokens" / "a.sealed").stat().st_mode) == 0o600

    (run / "a.token").unlink()  # a reboot
    book = TokenBook()
    book.sync([conn], state, keeper)
    assert read_token(run / "a.token") == first and book.owner(first) == "a"

    (run / "a.token").write_text("rotated-by-the-operator-0123456789")
    book.sync([conn], state, keeper)
    (run / "a.token").unlink()
    book.sync([conn], state, keeper)
    assert read_token(run / "a.token") == "rotated-by-the-operator-0123456789"

    other_key = TokenKeeper(state / "kept-tokens", bytes(32))  # a new cache key: a new token
    (run / "a.token").unlink()
    book.sync([conn], state, other_key)
    assert read_token(run / "a.token") not in (first, "rotated-by-the-operator-0123456789")


# --- the door --------------------------------------------------------------------------------


@dataclass
class Door:
    client: TestClient
    tokens: dict[str, str]
    served: list[str]
    held: dict[str, Credentials | None]


def _creds(clock: FakeClock) -> Credentials:
    now = clock.time()
    return Credentials("ASIAEXAMPLEEXAMPLE01", "s" * 40, "t" * 80, utc(now + 3600), utc(now),
                       account_id="111122223333")


@pytest.fixture
async def door(tmp_path: Path) -> AsyncIterator[Door]:
    clock = FakeClock()
    book = TokenBook()
    book.sync([Conn("app"), Conn("other"), Conn("empty")], tmp_path / "state")
    tokens = {name: read_token(path) for name, path in book.paths.items()}
    held: dict[str, Credentials | None] = {"app": _creds(clock), "other": _creds(clock),
                                           "empty": None}
    served: list[str] = []
    guard = HostGuard("127.0.0.1", aliases=ALIASES)
    app = ContainerApp(book, held.get, guard, on_served=served.append)
    async with TestClient(TestServer(app.app)) as client:
        guard.port = client.port
        yield Door(client, tokens, served, held)


async def _get(door: Door, path: str, token: str | None = None,
               **headers: str) -> tuple[int, dict[str, str]]:
    if token is not None:
        headers["Authorization"] = token
    response = await door.client.get(path, headers=headers)
    assert response.content_type == "application/json"
    return response.status, json.loads(await response.text())


async def test_its_own_token_gets_the_set(door: Door) -> None:
    status, body = await _get(door, "/v1/credentials/app", door.tokens["app"])
    assert status == 200
    assert body == door.held["app"].container_document()  # type: ignore[union-attr]
    assert set(body) == {"AccessKeyId", "SecretAccessKey", "Token", "Expiration", "AccountId"}
    assert door.served == ["app"]


@pytest.mark.parametrize("name", ["app", "other", "no-such-name"])
async def test_no_token_is_401_whatever_the_name(door: Door, name: str) -> None:
    for token in (None, "", "   "):
        status, body = await _get(door, f"/v1/credentials/{name}", token)
        assert (status, body["Code"]) == (401, "Unauthorized")
    assert door.served == []


async def test_a_bad_token_gets_the_same_answer_for_known_and_unknown_names(door: Door) -> None:
    answers = set()
    for name in ("app", "other", "empty", "no-such-name"):
        for token in ("x" * 43, door.tokens["app"] + "x", door.tokens["app"][:-1],
                      "Bearer " + door.tokens["app"]):
            status, body = await _get(door, f"/v1/credentials/{name}", token)
            answers.add((status, json.dumps(body)))
    assert len(answers) == 1
    assert next(iter(answers))[0] == 403
    assert door.served == []


async def test_a_valid_token_on_another_path_is_404_whether_or_not_it_exists(door: Door) -> None:
    existing = await _get(door, "/v1/credentials/other", door.tokens["app"])
    missing = await _get(door, "/v1/credentials/no-such-name", door.tokens["app"])
    assert existing == missing
    assert existing[0] == 404
    assert door.served == []


async def test_each_token_reads_only_its_own_connection(door: Door) -> None:
    app = await _get(door, "/v1/credentials/app", door.tokens["app"])
    other = await _get(door, "/v1/credentials/other", door.tokens["other"])
    assert app[0] == other[0] == 200
    assert app[1]["AccessKeyId"] == door.held["app"].access_key_id  # type: ignore[union-attr]
    assert door.served == ["app", "other"]


async def test_a_renewed_set_is_served_at_once(door: Door) -> None:
    """The rendered answer is kept per set, never past it."""
    first = await _get(door, "/v1/credentials/app", door.tokens["app"])
    renewed = Credentials("ASIARENEWEDRENEWED01", "r" * 40, "n" * 80,
                          door.held["app"].expiration, door.held["app"].issued_at)  # type: ignore[union-attr]
    door.held["app"] = renewed
    second = await _get(door, "/v1/credentials/app", door.tokens["app"])
    assert first[1]["AccessKeyId"] == "ASIAEXAMPLEEXAMPLE01"
    assert second[1] == renewed.container_document()


async def test_nothing_fresh_is_503_never_an_empty_success(door: Door) -> None:
    status, body = await _get(door, "/v1/credentials/empty", door.tokens["empty"])
    assert (status, body["Code"]) == (503, "CredentialsUnavailable")
    assert "AccessKeyId" not in body


@pytest.mark.parametrize("host", ["169.254.170.2", "169.254.170.23", "localhost", "127.0.0.1"])
async def test_the_container_hosts_are_accepted(door: Door, host: str) -> None:
    status, _ = await _get(door, "/v1/credentials/app", door.tokens["app"],
                           Host=f"{host}:{door.client.port}")
    assert status == 200


@pytest.mark.parametrize("host", ["evil.example", "169.254.169.254", "127.0.0.1:1"])
async def test_foreign_hosts_are_refused(door: Door, host: str) -> None:
    status, body = await _get(door, "/v1/credentials/app", door.tokens["app"], Host=host)
    assert (status, body["Code"]) == (400, "BadHost")


async def test_proxied_requests_and_other_methods_are_refused(door: Door) -> None:
    status, _ = await _get(door, "/v1/credentials/app", door.tokens["app"],
                           **{"X-Forwarded-For": "203.0.113.9"})
    assert status == 403
    response = await door.client.post("/v1/credentials/app",
                                      headers={"Authorization": door.tokens["app"]})
    assert response.status == 405 and response.headers["Allow"] == "GET, HEAD"
    assert door.served == []


@pytest.mark.parametrize("path", ["/", "/v1/credentials", "/v1/credentials/", "/v2/credentials/app",
                                  "/v1/credentials/app/extra"])
async def test_other_paths_are_404(door: Door, path: str) -> None:
    status, body = await _get(door, path, door.tokens["app"])
    assert (status, body["Code"]) == (404, "NotFound")
