"""Run a program with the kernel's memory-deny-write-execute on, as the unit's
MemoryDenyWriteExecute=yes does: no mapping may be writable and executable, or become
executable later (prctl PR_SET_MDWE, Linux 6.3+; kept across exec).

    python mdwe.py PROGRAM [ARGS...]

Exits 3 when the kernel lacks PR_SET_MDWE. Standalone: runs with any working directory.
"""

from __future__ import annotations

import ctypes
import os
import sys

PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1


def main(argv: list[str]) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        print(f"PR_SET_MDWE failed: errno {ctypes.get_errno()}", file=sys.stderr)
        sys.exit(3)
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main(sys.argv[1:])
