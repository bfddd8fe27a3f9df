"""The credentials-file door's config rules and file rules, without a daemon."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from credential_sidecar.config.errors import ConfigError
from credential_sidecar.config.load import parse_config
from credential_sidecar.credentials import Credentials
from credential_sidecar.doors import credentials_file as cf
from credential_sidecar.files import FileError
from credential_sidecar.testing import FakeClock

CONN = {"name": "backups", "type": "access-keys", "access_key_id": "AKIAIOSFODNN7EXAMPLE"}
OTHER = {**CONN, "name": "reports"}


def config(*files: dict[str, Any]) -> Any:
    return parse_config({"credentials_file": list(files), "connections": [CONN, OTHER]})


def problems(*files: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config(*files)
    return info.value.problems


def test_defaults() -> None:
    entry = config({"path": "/run/x/creds", "connection": "backups"}).credentials_file[0]
    assert (entry.profile, entry.owner, entry.group, entry.mode, entry.on_stop, entry.region) == (
        "default", None, None, 0o600, "keep", None)


@pytest.mark.parametrize("mode", [0o640, "0640", "640"])
def test_mode_written_either_way(mode: Any) -> None:
    assert config({"path": "/x/c", "connection": "backups", "mode": mode}
                  ).credentials_file[0].mode == 0o640


@pytest.mark.parametrize("mode", [600, 0o644, 0o700, "0604", 0o200, True])
def test_modes_that_expose_or_are_decimal_are_refused(mode: Any) -> None:
    (problem,) = problems({"path": "/x/c", "connection": "backups", "mode": mode})
    assert problem.startswith("credentials_file[0].mode: ")


def test_cross_checks() -> None:
    found = problems(
        {"path": "/x/c", "connection": "nope"},
        {"path": "/x/c", "connection": "backups"},
        {"path": "/x/c", "connection": "reports", "profile": "r", "mode": "0640"},
    )
    assert found == [
        'credentials_file[0].connection: no connection named "nope"; known: backups, reports',
        'credentials_file[1].profile: profile "default" is already written to this path by'
        " credentials_file[0]",
        "credentials_file[2].mode: mode differs from credentials_file[0], which names the same"
        " path: the entries of one file must agree on owner, group, mode and on_stop",
    ]


def test_profile_names_and_owners_are_checked() -> None:
    found = problems({"path": "/x/c", "connection": "backups", "profile": "a b",
                      "owner": "bad name!", "on_stop": "shred"})
    assert [p.split(":")[0] for p in found] == [
        "credentials_file[0].profile", "credentials_file[0].owner", "credentials_file[0].on_stop"]


def creds(key: str) -> Credentials:
    now = datetime.now(UTC)
    return Credentials(key, "secret/" + key, "token" + key, now + timedelta(hours=1), now)


def test_render_has_the_marker_first_and_no_expiration() -> None:
    text = cf.render([("default", creds("ASIAAAAAAAAAAAAAAAAA"), None),
                      ("other", creds("ASIABBBBBBBBBBBBBBBB"), "eu-west-1")]).decode()
    assert text.startswith(cf.MARKER + "\n")
    assert "[other]\naws_access_key_id = ASIABBBBBBBBBBBBBBBB\n" in text
    assert "region = eu-west-1" in text and "expiration" not in text


def test_write_waits_for_every_connection(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    plan = cf.FilePlan(tmp_path / "c", -1, -1, 0o600, "keep",
                       (("default", "a", None), ("b", "b", None)))
    held = {"a": creds("ASIAAAAAAAAAAAAAAAAA")}
    assert cf.write(plan, held.get) is None and not plan.path.exists()
    held["b"] = creds("ASIABBBBBBBBBBBBBBBB")
    assert cf.write(plan, held.get) == "ASIAAAAAAAAAAAAAAAAA,ASIABBBBBBBBBBBBBBBB"
    assert os.stat(plan.path).st_mode & 0o777 == 0o600


def test_foreign_files_links_and_open_directories_are_refused(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    mine = tmp_path / "mine"
    mine.write_text("[default]\naws_access_key_id = AKIA\n")
    with pytest.raises(FileError, match="did not write"):
        cf.check_ours(mine)
    (tmp_path / "empty").write_text("")
    cf.check_ours(tmp_path / "empty")  # nothing to lose
    cf.check_ours(tmp_path / "absent")
    (tmp_path / "link").symlink_to(mine)
    with pytest.raises(FileError, match="symbolic link"):
        cf.check_ours(tmp_path / "link")
    (tmp_path / "dirlink").symlink_to(tmp_path)
    with pytest.raises(FileError, match="symbolic link"):
        cf.check_directory(tmp_path / "dirlink" / "c")
    tmp_path.chmod(0o775)
    with pytest.raises(FileError, match="group or others may write"):
        cf.check_directory(tmp_path / "c")
    with pytest.raises(FileError, match="does not exist"):
        cf.check_directory(tmp_path / "nowhere" / "c")


def test_unknown_users_are_named() -> None:
    entries = config({"path": "/x/c", "connection": "backups", "owner": "no-such-user-here"})
    with pytest.raises(FileError, match="no-such-user-here"):
        cf.plan(entries.credentials_file)
    root = config({"path": "/x/c", "connection": "backups", "owner": 0}).credentials_file
    assert (cf.plan(root)[0].uid, cf.plan(root)[0].gid) == (0, 0)


async def _until(check: Any, what: str) -> None:
    """The writer runs in a task and a thread: wait for what it should do, bounded."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while not check():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def _holds(path: Path, text: str) -> bool:
    return path.exists() and text in path.read_text()


async def test_lifecycle_writes_retries_reloads_and_removes(tmp_path: Path) -> None:
    clock = FakeClock()
    home = tmp_path / "d"
    home.mkdir(mode=0o755)
    path = home / "creds"
    held: dict[str, Credentials] = {}
    files = cf.CredentialsFiles(clock, held.get)
    one = config({"path": str(path), "connection": "backups", "on_stop": "remove"})
    await files.start(one.credentials_file)
    try:
        assert not path.exists() and files.door_problems() == {}  # nothing to serve yet
        held["backups"] = creds("ASIAAAAAAAAAAAAAAAAA")
        files.renewed("reports")  # not this file's connection: nothing to do
        assert not files._wake.is_set() and not path.exists()
        files.renewed("backups")
        await _until(lambda: _holds(path, "ASIAAAAAAAAAAAAAAAAA"), "the first write")

        # the directory goes away: named, retried every 30 s, written once it is back
        path.unlink()
        home.rmdir()
        held["backups"] = creds("ASIABBBBBBBBBBBBBBBB")
        files.renewed("backups")
        await _until(lambda: files.door_problems(), "the problem named")
        assert list(files.door_problems()) == [f"credentials_file:{path}"]
        home.mkdir(mode=0o755)
        await clock.advance(cf.RETRY_SECONDS)
        await _until(lambda: _holds(path, "ASIABBBBBBBBBBBBBBBB"), "the retry")
        await _until(lambda: not files.door_problems(), "the problem cleared")

        # a reload adds a profile for another connection
        held["reports"] = creds("ASIACCCCCCCCCCCCCCCC")
        two = config({"path": str(path), "connection": "backups", "on_stop": "remove"},
                     {"path": str(path), "connection": "reports", "profile": "r",
                      "on_stop": "remove"})
        await files.reload(two.credentials_file)
        await _until(lambda: _holds(path, "[r]\naws_access_key_id = ASIACCCCCCCCCCCCCCCC"),
                     "the reloaded file")
    finally:
        await files.stop()
    assert not path.exists()  # on_stop = "remove"


def _foreign_file(directory: Path) -> Path:
    directory.chmod(0o755)
    foreign = directory / "foreign"
    foreign.write_text("[default]\n")
    return foreign


async def test_a_reload_never_stops_the_daemon_over_a_file(tmp_path: Path) -> None:
    foreign = _foreign_file(tmp_path)
    clock = FakeClock()
    held = {"backups": creds("ASIAAAAAAAAAAAAAAAAA")}
    files = cf.CredentialsFiles(clock, held.get)
    await files.start([])
    try:
        await files.reload(config({"path": str(foreign), "connection": "backups"}
                                  ).credentials_file)
        assert "did not write" in files.door_problems()[f"credentials_file:{foreign}"]
        await files.reload(config({"path": str(tmp_path / "x"), "connection": "backups",
                                   "owner": "no-such-user-here"}).credentials_file)
        assert "no-such-user-here" in files.door_problems()[f"credentials_file:{tmp_path / 'x'}"]
        await clock.advance(cf.RETRY_SECONDS)
        assert foreign.read_text() == "[default]\n"
    finally:
        await files.stop()
