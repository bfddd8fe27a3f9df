"""IMDS tokens: sealed, constant-time checked, expiring on the (fake) clock."""

from __future__ import annotations

from credential_sidecar.doors.imds import TokenSealer
from credential_sidecar.testing import FakeClock


def test_token_expires_after_its_ttl() -> None:
    clock = FakeClock()
    sealer = TokenSealer(clock)
    token = sealer.issue(ttl=60)
    assert sealer.valid(token)
    clock.jump_wall(59)
    assert sealer.valid(token)
    clock.jump_wall(1)
    assert not sealer.valid(token)


def test_tokens_are_bound_to_their_sealer_and_unforgeable() -> None:
    clock = FakeClock()
    one, other = TokenSealer(clock), TokenSealer(clock)
    token = one.issue(ttl=21600)
    assert not other.valid(token)
    for bad in ("", "!!!", token[:-4], token + "AAAA", "é" * 10):
        assert not one.valid(bad)


def test_every_token_is_distinct() -> None:
    sealer = TokenSealer(FakeClock())
    assert len({sealer.issue(ttl=10) for _ in range(1000)}) == 1000
