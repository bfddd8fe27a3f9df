"""The README's command blocks that tests run verbatim.

A block is marked by ``<!-- verbatim: NAME -->`` on the line before its fence, so the README
stays the single source: a test that runs ``block("systemd-install")`` runs what operators copy.
"""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"
_BLOCK = re.compile(r"<!-- verbatim: ([a-z0-9-]+) -->\n```sh\n(.*?)\n```", re.DOTALL)


def blocks() -> dict[str, str]:
    """Every marked block, by name."""
    found: dict[str, str] = {}
    for name, body in _BLOCK.findall(README.read_text()):
        if name in found:
            raise AssertionError(f"README: two blocks marked verbatim: {name}")
        found[name] = body + "\n"
    return found


def block(name: str) -> str:
    try:
        return blocks()[name]
    except KeyError:
        raise AssertionError(f"README has no block marked <!-- verbatim: {name} -->") from None
