"""The short soak (bench/soak.py --short): never a client-visible failure while a good set exists.

The soak runs the daemon and the emulator as processes with every kind of client polling while
faults, restarts, reloads, a full disk and clock jumps follow one another (see its docstring).
Only invariants are asserted, never timings, so a loaded 2-core machine passes as a fast one.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
KINDS = {"imds", "imds-token", "container-get", "container-fetcher", "boto3",
         "credential-process"}


@pytest.fixture(scope="module")
def soak(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("soak") / "soak.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "soak.py"), "--short", "--seed", "1",
         "--out", str(out)],
        capture_output=True, text=True, timeout=480, cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(out.read_text())  # type: ignore[no-any-return]


@pytest.mark.timeout(600)
def test_no_failure_while_a_good_set_existed(soak: dict[str, Any]) -> None:
    failures = soak["failures_while_good"]
    assert failures["count"] == 0, json.dumps(failures["classes"], indent=1)


@pytest.mark.timeout(600)
def test_never_served_a_set_under_60_s_or_expired_or_foreign(soak: dict[str, Any]) -> None:
    served = soak["served"]
    assert served["under_60_s"] == 0, served["under_60_s_first"]
    assert served["expired"] == 0
    assert served["key_not_logged_for_that_connection"] == 0, served["foreign_first"]


@pytest.mark.timeout(600)
def test_every_client_and_fault_ran(soak: dict[str, Any]) -> None:
    kinds = soak["requests_by_kind"]
    assert set(kinds) == KINDS
    assert all(kinds[k].get("ok", 0) > 0 for k in KINDS), kinds
    assert not soak["client_crashes"]
    done = soak["done"]
    assert done["events"] == 13 and done["kill -9 + restart"] >= 3 and done["sighup"] >= 6
    assert done["daemon_reload_log"].get("reloaded", 0) >= 2  # a storm may be coalesced
    # The lapse: every set expired during an outage; errors then are not failures.
    assert soak["errors_without_a_good_set"]["count"] > 0
    assert any(e["kind"] == "lapse jump" for e in soak["schedule"])


@pytest.mark.timeout(600)
def test_resources_and_upstream_stay_bounded(soak: dict[str, Any]) -> None:
    up = soak["upstream"]
    assert up["succeeded"] >= up["issued"] > 0
    # Renewals only as the lifetimes ask; faults cost retries at the policy's pace, not a storm.
    assert up["succeeded"] <= 2 * up["ideal"], up
    assert up["failed"] <= up["failed_budget"], up
    res = soak["resources"]
    assert res["fds"]["max"] < 400, res["fds"]
    assert res["rss_mib"]["max"] < 400, res["rss_mib"]
