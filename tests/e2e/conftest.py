"""Fixtures several end-to-end modules share: software hardware-key stores and tinyproxy
variants (one per module that asks), proxy credential files, and a garbage collection after each
async test for the modules that opt in."""

from __future__ import annotations

import gc
import inspect
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.softhsm import SoftHsm
from tests.helpers.softhsm import shared as shared_softhsm
from tests.helpers.swtpm import Swtpm
from tests.helpers.swtpm import build as build_swtpm
from tests.helpers.swtpm import missing_tools as swtpm_tools_missing
from tests.helpers.tinyproxy import BASIC_AUTH, credentials_file, proxy_fixture

open_proxy = proxy_fixture()
auth_proxy = proxy_fixture(basic_auth=BASIC_AUTH)
deny_proxy = proxy_fixture(connect_ports=[443])  # CONNECT only to 443: our ports are refused


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


@pytest.fixture
def creds_file(tmp_path: Path) -> Path:
    """The proxy credentials auth_proxy accepts."""
    return credentials_file(tmp_path / "proxy-credentials", *BASIC_AUTH)


@pytest.fixture
def bad_creds_file(tmp_path: Path) -> Path:
    """auth_proxy's user with a wrong password."""
    return credentials_file(tmp_path / "proxy-credentials-bad", BASIC_AUTH[0], "wrong")


@pytest.fixture
def collect_garbage(request: pytest.FixtureRequest) -> Iterator[None]:
    """After an async test, collect, so an unclosed socket or transport fails its own test.

    A module opts in with ``pytestmark = pytest.mark.usefixtures("collect_garbage")``; set up
    before the test's own fixtures, it collects after they are torn down.
    """
    yield
    if inspect.iscoroutinefunction(request.function):
        gc.collect()
