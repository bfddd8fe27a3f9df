"""Start a program as systemd starts a socket-activated service (sd_listen_fds(3)).

    python activate.py FD[=NAME] ... -- PROGRAM [ARGS...]

The caller passes listening sockets in (subprocess pass_fds); here they become fds 3, 4, ... in
the order given, LISTEN_FDS and LISTEN_FDNAMES are set, and LISTEN_PID is this process's pid,
which exec keeps: the one thing a parent cannot know before it forks. Standalone on purpose (no
imports from the project): it runs with any working directory.
"""

from __future__ import annotations

import fcntl
import os
import sys

FIRST = 3


def main(argv: list[str]) -> None:
    split = argv.index("--")
    specs, command = argv[:split], argv[split + 1 :]
    fds, names = [], []
    for spec in specs:
        fd, _, name = spec.partition("=")
        fds.append(int(fd))
        names.append(name)
    # Out of the way first, so that moving one fd into place never overwrites another.
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100) for fd in fds]
    for fd in fds:
        os.close(fd)
    for i, fd in enumerate(high):
        os.dup2(fd, FIRST + i, inheritable=True)
        os.close(fd)
    os.environ["LISTEN_FDS"] = str(len(fds))
    os.environ["LISTEN_PID"] = str(os.getpid())
    if any(names):
        os.environ["LISTEN_FDNAMES"] = ":".join(name or "unknown" for name in names)
    else:
        os.environ.pop("LISTEN_FDNAMES", None)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
