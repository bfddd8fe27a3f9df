"""The kernel names the local user behind a TCP connection: sock_diag, and /proc as fallback.

Real sockets: the test's own (root) and ones another user opens with setpriv.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from credential_sidecar.doors.peers import Peer, PeerFinder, admits, proc_uid, restricted
from tests.helpers import users

# Connects to argv[1]:argv[2] as the user, prints its own port, holds the socket until stdin ends.
HOLD = """
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(family)
s.connect((host, port))
print(s.getsockname()[1], flush=True)
sys.stdin.read()
"""

FAMILIES = [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")]


@pytest.fixture(params=FAMILIES, ids=["ipv4", "ipv6"])
def server(request: pytest.FixtureRequest) -> Iterator[socket.socket]:
    family, host = request.param
    with socket.socket(family) as sock:
        sock.bind((host, 0))
        sock.listen(16)
        yield sock


def _pair(conn: socket.socket) -> tuple[tuple[str, int], tuple[str, int]]:
    local, remote = conn.getsockname(), conn.getpeername()
    return (local[0], local[1]), (remote[0], remote[1])


def test_own_connection_is_root_by_netlink_and_by_proc(server: socket.socket) -> None:
    with socket.socket(server.family) as client:
        client.connect(server.getsockname()[:2])
        conn, _ = server.accept()
        with conn:
            local, remote = _pair(conn)
            finder = PeerFinder()
            try:
                assert finder.netlink_uid(local, remote) == 0
                assert finder.uid(local, remote) == 0
            finally:
                finder.close()
            assert proc_uid(remote[0], remote[1], local[0], local[1]) == 0
            assert PeerFinder(netlink=False).uid(local, remote) == 0


def test_another_users_connection_is_theirs(server: socket.socket) -> None:
    with users.throwaway_user() as user:
        host, port = server.getsockname()[:2]
        child = users.popen_as(user, HOLD, host, str(port))
        try:
            assert child.stdout is not None
            their_port = int(child.stdout.readline())
            conn, remote = server.accept()
            with conn:
                assert remote[1] == their_port
                local, remote_pair = _pair(conn)
                finder = PeerFinder()
                try:
                    assert finder.netlink_uid(local, remote_pair) == user.uid
                    peer = finder.peer(local, remote_pair)
                finally:
                    finder.close()
                assert peer == Peer(0, user.uid, user.gid, user.groups)
                assert peer.label == f"uid:{user.uid}"
                assert PeerFinder(netlink=False).uid(local, remote_pair) == user.uid
        finally:
            child.communicate(timeout=10)
        assert child.returncode == 0, child.stderr


def test_a_socket_that_does_not_exist_has_no_owner(server: socket.socket) -> None:
    host, port = server.getsockname()[:2]
    finder = PeerFinder()
    try:
        assert finder.uid((host, port), (host, 9)) is None
        assert finder.netlink_uid((host, port), (host, 9)) is None
    finally:
        finder.close()
    assert PeerFinder(netlink=False).uid((host, port), (host, 9)) is None


def test_a_dual_stack_listener_names_an_ipv4_peer() -> None:
    with socket.socket(socket.AF_INET6) as server:
        server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        server.bind(("::", 0))
        server.listen(1)
        with socket.socket() as client:
            client.connect(("127.0.0.1", server.getsockname()[1]))
            conn, _ = server.accept()
            with conn:
                local, remote = _pair(conn)
                assert remote[0] == "::ffff:127.0.0.1"
                finder = PeerFinder()
                try:
                    assert finder.netlink_uid(local, remote) == 0
                finally:
                    finder.close()
                assert PeerFinder(netlink=False).uid(local, remote) == 0


def test_netlink_is_cheap_enough_for_the_event_loop(server: socket.socket) -> None:
    """The reason the lookup runs inline at accept: well under a millisecond. (/proc reads every
    socket of the host, so that fallback runs in a thread.)"""
    with socket.socket(server.family) as client:
        client.connect(server.getsockname()[:2])
        conn, _ = server.accept()
        with conn:
            local, remote = _pair(conn)
            finder = PeerFinder()
            try:
                start = time.perf_counter()
                for _ in range(200):
                    assert finder.netlink_uid(local, remote) == 0
                per_call = (time.perf_counter() - start) / 200
            finally:
                finder.close()
    assert per_call < 0.001, f"{per_call * 1e6:.0f} us per lookup"


class _Conn:
    def __init__(self, uids: list[int], gids: list[int]) -> None:
        self.allowed_uids, self.allowed_gids = uids, gids


def test_one_rule_for_every_door() -> None:
    daemon = 4242
    assert admits(_Conn([], []), Peer(0, 0, 0), daemon)  # root
    assert admits(_Conn([], []), Peer(0, daemon, 7), daemon)  # the daemon's own uid
    assert admits(_Conn([1001], []), Peer(0, 1001, 1001), daemon)
    assert not admits(_Conn([1001], []), Peer(0, 1002, 1002), daemon)
    assert admits(_Conn([], [50]), Peer(0, 1002, 1002, (1002, 50)), daemon)  # a member
    assert admits(_Conn([], [1002]), Peer(0, 1002, 1002), daemon)  # primary group
    assert not restricted(_Conn([], []))
    assert restricted(_Conn([], [5])) and restricted(_Conn([5], []))


def test_groups_are_the_users_groups_in_the_user_database() -> None:
    with users.throwaway_group() as (group, gid), users.throwaway_user(groups=(group,)) as user:
        peer = PeerFinder(netlink=False).with_groups(user.uid)
        assert peer.gid == user.gid and gid in peer.groups
        assert admits(_Conn([], [gid]), peer, daemon_uid=0)
        assert not admits(_Conn([], [gid + 100000]), peer, daemon_uid=0)
    assert PeerFinder(netlink=False).with_groups(3999999) == Peer(0, 3999999, -1, ())
