"""Choosing intermediates: by issuer name and signature, in order, ignoring everything else."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from credential_sidecar.upstream.hardware.chain import ChainError, select_chain
from tests.helpers.hwkeys import make_intermediate, make_leaf, make_root


def test_two_levels_shuffled_with_noise() -> None:
    root = make_root("Root")
    mid = make_intermediate(root, "Mid")
    low = make_intermediate(mid, "Low")
    leaf = make_leaf(low, "leaf", ec.generate_private_key(ec.SECP256R1()).public_key())
    other = make_root("Other Root")
    lookalike = make_intermediate(other, "Low")  # same name as ours, different key
    noise = [other.cert, lookalike.cert, make_intermediate(other, "Mid").cert, root.cert]
    candidates = [mid.cert, *noise, leaf, low.cert]
    assert select_chain(leaf, candidates, root.cert) == [low.cert, mid.cert]
    assert select_chain(leaf, candidates) == [low.cert, mid.cert]


def test_issued_by_anchor_directly() -> None:
    root = make_root("Root")
    leaf = make_leaf(root, "leaf", ec.generate_private_key(ec.SECP256R1()).public_key())
    assert select_chain(leaf, [make_root("x").cert], root.cert) == []


def test_missing_intermediate_names_the_gap() -> None:
    root = make_root("Root")
    mid = make_intermediate(root, "Mid")
    low = make_intermediate(mid, "Low")
    leaf = make_leaf(low, "leaf", ec.generate_private_key(ec.SECP256R1()).public_key())
    with pytest.raises(ChainError, match=r"no chain from certificate CN=leaf \(issuer CN=Low\)"):
        select_chain(leaf, [mid.cert], root.cert)
    assert select_chain(leaf, [mid.cert]) == []  # no anchor: nothing provably belongs


def test_wrong_anchor() -> None:
    root = make_root("Root")
    mid = make_intermediate(root, "Mid")
    leaf = make_leaf(mid, "leaf", ec.generate_private_key(ec.SECP256R1()).public_key())
    with pytest.raises(ChainError, match="to trust anchor CN=Elsewhere"):
        select_chain(leaf, [mid.cert], make_root("Elsewhere").cert)
