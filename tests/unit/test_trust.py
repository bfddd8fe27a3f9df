"""The daemon trusts no path it did not make: state_dir, its cache key and entries, the control
socket and its directory, container token files and their directory (sshd's StrictModes).

Foreign owners are real: paths chowned to another uid (needs root, as CI runs it).
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from credential_sidecar.doors.container_tokens import TokenError, load_or_create_token
from credential_sidecar.doors.control import bind_socket
from credential_sidecar.files import FileError, check_owned, private_dir
from credential_sidecar.state.trust import check_state_dir
from tests.helpers import harness as h

OTHER = 65534


def _root() -> None:
    if os.geteuid() != 0:
        pytest.skip("making paths another user's needs root (CI runs as root)")


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_private_dir_makes_each_missing_component_with_its_mode_whatever_the_umask(
    tmp_path: Path,
) -> None:
    old = os.umask(0o077)
    try:
        made = private_dir(tmp_path / "a" / "b", "token directory", 0o711)
    finally:
        os.umask(old)
    assert _mode(tmp_path / "a") == 0o711 and _mode(made) == 0o711
    assert private_dir(made, "token directory", 0o700) == made  # existing: checked, not changed
    assert _mode(made) == 0o711


def test_a_link_is_refused_even_to_the_daemons_own_directory(tmp_path: Path) -> None:
    real = private_dir(tmp_path / "real", "state_dir")
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(FileError, match=r"state_dir .*link is a symbolic link"):
        private_dir(tmp_path / "link", "state_dir")
    # A dangling link where a directory would be made is not followed either.
    (tmp_path / "dangling").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(FileError, match="symbolic link"):
        private_dir(tmp_path / "dangling", "state_dir")
    assert not (tmp_path / "elsewhere").exists()


def test_group_or_other_writable_is_refused(tmp_path: Path) -> None:
    loose = private_dir(tmp_path / "loose", "state_dir")
    loose.chmod(0o770)
    with pytest.raises(FileError, match=r"mode 0770.*chmod go-w"):
        check_owned(loose, "state_dir")


def test_someone_elses_directory_is_refused(tmp_path: Path) -> None:
    _root()
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, OTHER, OTHER)
    with pytest.raises(FileError, match=f"state_dir {theirs} belongs to uid {OTHER}, not to"):
        private_dir(theirs, "state_dir")


def test_state_dir_key_and_cache_entries_are_checked(tmp_path: Path) -> None:
    _root()
    state = tmp_path / "state"
    check_state_dir(state, state / "cache-key")  # made, 0700
    assert _mode(state) == 0o700
    key = state / "cache-key"
    key.write_bytes(b"k" * 32)
    key.chmod(0o600)
    cache = state / "cache"
    cache.mkdir(mode=0o700)
    entry = cache / "app.cred"
    entry.write_bytes(b"sealed")
    check_state_dir(state, key)
    os.chown(entry, OTHER, OTHER)
    with pytest.raises(FileError, match=f"credential cache entry {entry} belongs to uid {OTHER}"):
        check_state_dir(state, key)
    entry.unlink()
    entry.symlink_to(key)
    with pytest.raises(FileError, match=r"credential cache entry .* symbolic link"):
        check_state_dir(state, key)
    entry.unlink()
    os.chown(key, OTHER, OTHER)
    with pytest.raises(FileError, match=f"cache key {key} belongs to uid {OTHER}"):
        check_state_dir(state, key)


def test_a_squatted_control_socket_or_its_directory_is_refused(tmp_path: Path) -> None:
    _root()
    run = private_dir(tmp_path / "run", "runtime directory", 0o750)
    path = run / "control.sock"
    squat = socket.socket(socket.AF_UNIX)
    squat.bind(str(path))  # bound, never listening: looks stale
    squat.close()
    os.lchown(path, OTHER, OTHER)
    with pytest.raises(OSError, match=f"control socket {path} belongs to uid {OTHER}"):
        bind_socket(path)
    assert path.exists(), "someone else's file is left alone"
    path.unlink()
    os.chown(run, OTHER, OTHER)
    with pytest.raises(OSError, match=f"control socket directory {run} belongs to uid {OTHER}"):
        bind_socket(path)
    os.chown(run, 0, 0)
    link = tmp_path / "run-link"
    link.symlink_to(run)
    with pytest.raises(OSError, match="symbolic link"):
        bind_socket(link / "control.sock")
    bind_socket(path).close()  # the daemon's own directory: fine


def test_a_token_directory_someone_else_made_is_refused(tmp_path: Path) -> None:
    _root()
    tokens = tmp_path / "tokens"
    tokens.mkdir(mode=0o711)
    os.chown(tokens, OTHER, OTHER)
    with pytest.raises(TokenError, match=f"container token directory {tokens} belongs to uid"):
        load_or_create_token(tokens / "app.token")
    assert not (tokens / "app.token").exists()


def test_the_daemon_refuses_to_start_in_someone_elses_state_dir(tmp_path: Path) -> None:
    _root()
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.chown(state, OTHER, OTHER)
    material = h.make_pki(tmp_path / "pki")
    config = h.daemon_config(tmp_path, [h.connection("app", material, "https://127.0.0.1:9")])
    path = tmp_path / "config.toml"
    path.write_text(h.to_toml(config))
    done = subprocess.run([sys.executable, "-m", "credential_sidecar", "run", "--config",
                           str(path)], capture_output=True, text=True, timeout=60,
                          env=h.clean_env())
    assert done.returncode == 1
    assert f"state_dir {state} belongs to uid {OTHER}" in done.stderr + done.stdout
    assert "cannot start" in done.stderr + done.stdout
