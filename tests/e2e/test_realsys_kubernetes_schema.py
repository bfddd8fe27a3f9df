"""config/kubernetes-sidecar.yaml against Kubernetes' own OpenAPI schemas, offline.

kubernetes-validate (PyPI) ships the schemas of every Kubernetes release it knows (1.25 on), so
no cluster or network is needed to validate; it is installed once into a cached venv of its own.
--strict rejects unknown fields: a misspelt key (``readinesProbe``) would otherwise pass silently
and simply be ignored by the cluster.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import nspawn

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "config" / "kubernetes-sidecar.yaml"
FIRST_WITH_NATIVE_SIDECARS = "1.29"  # README: "Kubernetes 1.29+"

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def validator() -> Path:
    venv = nspawn.CACHE / "kubernetes-validate"
    tool = venv / "bin" / "kubernetes-validate"
    with nspawn.locked(nspawn.CACHE / "kubernetes-validate.lock"):
        if not tool.exists():
            shutil.rmtree(venv, ignore_errors=True)
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            result = subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "-q",
                                     "kubernetes-validate>=1.30"], capture_output=True, text=True,
                                    timeout=540, check=False)
            assert result.returncode == 0, result.stderr[-3000:]
    return tool


def schemas(validator: Path) -> list[str]:
    found = validator.parent.parent.glob("lib/python3*/site-packages/kubernetes_validate/"
                                         "kubernetes-json-schema/v*-local-strict")
    versions = {m.group(1) for p in found if (m := re.match(r"v(\d+\.\d+)\.0-", p.name))}
    return sorted(versions, key=lambda v: tuple(int(x) for x in v.split(".")))


def validate(validator: Path, version: str, path: Path) -> subprocess.CompletedProcess[str]:
    # unshare -n: the validation itself has no network at all
    cmd = [str(validator), "--strict", "--kubernetes-version", version, str(path)]
    if os.geteuid() == 0 and shutil.which("unshare"):
        cmd = ["unshare", "--net", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def test_the_manifest_validates_from_native_sidecars_to_the_newest_schema(
        validator: Path) -> None:
    versions = schemas(validator)
    assert FIRST_WITH_NATIVE_SIDECARS in versions, versions
    for version in (FIRST_WITH_NATIVE_SIDECARS, versions[-1]):
        result = validate(validator, version, MANIFEST)
        assert result.returncode == 0, result.stdout + result.stderr
        # two resources: the ConfigMap and the Deployment
        assert result.stdout.count("passed for resource") == 2, result.stdout


def test_older_clusters_reject_the_native_sidecar(validator: Path) -> None:
    result = validate(validator, "1.27", MANIFEST)
    assert result.returncode != 0
    assert "'restartPolicy' was unexpected" in result.stdout + result.stderr


def test_strict_validation_catches_a_misspelt_field(validator: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(MANIFEST.read_text().replace("readinessProbe:", "readinesProbe:", 1))
    result = validate(validator, FIRST_WITH_NATIVE_SIDECARS, broken)
    assert result.returncode != 0 and "readinesProbe" in result.stdout + result.stderr
