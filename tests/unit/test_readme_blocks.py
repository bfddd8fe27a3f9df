"""The README blocks the real-systemd and container suites run verbatim are all there (those
suites need root and take minutes; a renamed or lost marker should fail in seconds)."""

from __future__ import annotations

from tests.helpers.readme import blocks


def test_every_verbatim_block_is_there_and_names_what_it_installs() -> None:
    found = blocks()
    assert set(found) == {"systemd-install", "systemd-start", "systemd-socket-upgrade",
                          "container-build"}
    install = found["systemd-install"]
    for path in ("/etc/sysusers.d/", "/etc/tmpfiles.d/", "/usr/share/doc/credential-sidecar/"):
        assert "install -D -m 0644 " in install and path in install, path
    start = found["systemd-start"]
    socket = start.index("enable --now credential-sidecar.socket")
    service = start.index("enable --now credential-sidecar.service")
    assert socket < service, "the socket first: it holds the ports the service then inherits"
    assert "--network=none" in found["container-build"]
