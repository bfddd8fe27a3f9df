"""config/kubernetes-sidecar.yaml is documentation, so it is checked like code: well-formed
YAML, a config the daemon accepts, and every path, port and name in the pod agreeing with it."""

from __future__ import annotations

import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from credential_sidecar.config.load import parse_config

yaml = pytest.importorskip("yaml")  # PyYAML arrives with the test extras (awscli, moto)

MANIFEST = Path(__file__).resolve().parents[2] / "config" / "kubernetes-sidecar.yaml"


@pytest.fixture(scope="module")
def documents() -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    return {d["kind"]: d for d in docs}


def _mounts(container: dict[str, Any]) -> dict[str, str]:
    return {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}


def _volume_of(container: dict[str, Any], path: PurePosixPath) -> str:
    """The volume a container sees `path` through (longest mount prefix)."""
    best = ""
    for mount in _mounts(container):
        if path.is_relative_to(mount) and len(mount) > len(best):
            best = mount
    assert best, f"{path} is not on any volume of {container['name']}"
    return _mounts(container)[best]


def test_the_config_map_holds_a_valid_config(documents: dict[str, Any]) -> None:
    text = documents["ConfigMap"]["data"]["config.toml"]
    config = parse_config(tomllib.loads(text))
    assert config.container is not None and config.container.listen.is_loopback
    assert config.health is not None and config.health.allow_non_loopback


def test_the_pod_agrees_with_the_config(documents: dict[str, Any]) -> None:
    config = parse_config(tomllib.loads(documents["ConfigMap"]["data"]["config.toml"]))
    pod = documents["Deployment"]["spec"]["template"]["spec"]
    inits = {c["name"]: c for c in pod["initContainers"]}
    sidecar, copier = inits["credential-sidecar"], inits["private-key"]
    (app,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}

    assert sidecar["restartPolicy"] == "Always", "a native sidecar: up before the app"
    assert list(inits) == ["private-key", "credential-sidecar"], "the key is copied first"
    config_dir = PurePosixPath(sidecar["args"][sidecar["args"].index("--config") + 1]).parent
    assert volumes[_volume_of(sidecar, config_dir)]["configMap"]["name"] == (
        documents["ConfigMap"]["metadata"]["name"])

    conn = config.connection("reports")
    key = PurePosixPath(str(conn.private_key))
    assert volumes[_volume_of(sidecar, key)]["emptyDir"]["medium"] == "Memory"
    assert str(key) in copier["command"][-1], "the init container writes the key the config reads"
    assert "umask 077" in copier["command"][-1], "...as a file only its owner can read"
    for path in (conn.certificate, conn.container_token_file):
        volume = volumes[_volume_of(sidecar, PurePosixPath(str(path)))]
        assert volume["secret"]["defaultMode"] == 0o400

    # Probes hit the health listener's port; the app's URI the container door and connection.
    assert config.health is not None and config.container is not None
    (port,) = sidecar["ports"]
    assert port["containerPort"] == config.health.listen.port
    for probe, path in (("startupProbe", "/readyz"), ("readinessProbe", "/readyz"),
                        ("livenessProbe", "/healthz")):
        assert sidecar[probe]["httpGet"] == {"path": path, "port": port["name"]}
    env = {e["name"]: e.get("value") for e in app["env"]}
    assert env["AWS_CONTAINER_CREDENTIALS_FULL_URI"] == (
        f"http://127.0.0.1:{config.container.listen.port}/v1/credentials/{conn.name}")

    # The app reads the same token the sidecar checks, and never mounts the private key.
    token_file = PurePosixPath(env["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"])
    token_volume = volumes[_volume_of(app, token_file)]["secret"]
    sidecar_secret = volumes[_volume_of(sidecar, PurePosixPath(str(conn.container_token_file)))]
    assert token_volume["secretName"] == sidecar_secret["secret"]["secretName"]
    (item,) = token_volume["items"]
    assert item["path"] == token_file.name
    assert item["key"] == PurePosixPath(str(conn.container_token_file)).name
    app_volumes = set(_mounts(app).values())
    assert app_volumes == {"token"}, app_volumes
    assert "identity" not in app_volumes and "keys" not in app_volumes


def test_nothing_runs_as_root(documents: dict[str, Any]) -> None:
    pod = documents["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    for container in pod["initContainers"]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
        assert context["readOnlyRootFilesystem"] is True
