"""state_dir and what the daemon keeps in it, checked before anything there is read or written.

Everything in state_dir (the cache key, sealed sets, connection records, the pid file) is only as
safe as the directory: someone who owns it, or may write it, can swap the key for one they know
or plant links. So state_dir, its cache directory, the cache key and every cache entry must be
the daemon's (the key may also be root's: systemd's $CREDENTIALS_DIRECTORY), and none may be a
link or writable by group or others (files.check_owned). A missing state_dir is created 0700.
"""

from __future__ import annotations

import os
from pathlib import Path

from credential_sidecar.files import FileError, check_owned, private_dir

CACHE_DIR = "cache"


def check_state_dir(state_dir: Path, key_file: Path | None) -> None:
    """Raise FileError naming the first path the daemon cannot trust."""
    private_dir(state_dir, "state_dir")
    if key_file is not None and os.path.lexists(key_file):
        check_owned(key_file, "cache key", allow_root=True, kind="file")
    cache = state_dir / CACHE_DIR
    if not os.path.lexists(cache):
        return
    check_owned(cache, "credential cache directory", kind="dir")
    for entry in sorted(cache.iterdir()):
        check_owned(entry, "credential cache entry", kind="file")


__all__ = ["CACHE_DIR", "FileError", "check_state_dir"]
