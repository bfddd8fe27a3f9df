"""Fixtures several end-to-end modules share: software hardware-key stores, one per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers.softhsm import SoftHsm
from tests.helpers.softhsm import shared as shared_softhsm
from tests.helpers.swtpm import Swtpm
from tests.helpers.swtpm import build as build_swtpm
from tests.helpers.swtpm import missing_tools as swtpm_tools_missing


@pytest.fixture(scope="module")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> SoftHsm:
    return shared_softhsm(tmp_path_factory.mktemp("softhsm"))


@pytest.fixture(scope="module")
def swtpm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swtpm]:
    reason = swtpm_tools_missing()
    if reason:
        pytest.fail(f"{reason}; tests/setup/hwkeys.sh installs it")
    tpm = build_swtpm(tmp_path_factory.mktemp("swtpm"))
    try:
        yield tpm
    finally:
        tpm.stop()
