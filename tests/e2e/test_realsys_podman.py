"""The image as config/kubernetes-sidecar.yaml runs it, in a podman pod: the manifest's own
config.toml (ConfigMap), its init container copying the private key to a memory-backed volume as
a 0600 file, the daemon locked down as in its securityContext, and an "app" container that gets
credentials through botocore's container provider over the pod's loopback, exactly with the
manifest's environment. The upstream is the Roles Anywhere emulator as a third container (the
manifest's ARNs; only `endpoint` is added). The pod has no network but its loopback.

The image is built offline by README's container-build block (the top-level Containerfile) FROM a
`podman import` of the cached debootstrap root shared with test_realsys_systemd.py, tagged as the
Containerfile's default base. First run ~1-2 min more; then ~30 s.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import harness as h
from tests.helpers import nspawn
from tests.helpers import podman as pm

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "config" / "kubernetes-sidecar.yaml"
EMULATOR = "127.0.0.1:9990"
UID = 10001

pytestmark = [
    pytest.mark.timeout(900),
    pytest.mark.skipif(os.geteuid() != 0, reason="rootful podman (this host has no subuid setup)"),
]


def manifest() -> tuple[dict[str, Any], dict[str, Any]]:
    docs = list(yaml.safe_load_all(MANIFEST.read_text()))
    config_map = next(d for d in docs if d["kind"] == "ConfigMap")
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    return config_map, deployment


@pytest.fixture(scope="module")
def image() -> str:
    assert nspawn.missing_tools() == [] and shutil.which("podman"), (
        "tests/setup/realsys.sh installs debootstrap, zstd and podman")
    tarball = nspawn.root_tarball()
    return pm.build_image(tarball, nspawn.wheelhouse(ROOT))


@pytest.fixture
def pod(image: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    config_map, deployment = manifest()
    spec = deployment["spec"]["template"]["spec"]
    daemon_spec = next(c for c in spec["initContainers"] if c.get("restartPolicy") == "Always")
    key_copy = next(c for c in spec["initContainers"] if c is not daemon_spec)
    app_spec = spec["containers"][0]
    conn_config = config_map["data"]["config.toml"]
    arns = {k: json.loads(v) for k, _, v in (
        line.partition(" = ") for line in conn_config.splitlines()
        if line.startswith(("trust_anchor_arn", "profile_arn", "role_arn")))}

    # The Secret's files: cert, key, token, with the manifest's defaultMode 0400 and fsGroup
    material = h.make_pki(tmp_path / "identity", "p256", name="reports")
    identity = tmp_path / "identity"
    (identity / "reports.token").write_text("token-" + pm.digest(str(tmp_path)) * 2)
    for path in (material.cert, material.key, identity / "reports.token"):
        os.chown(path, 0, UID)
        path.chmod(0o440)  # what fsGroup does to a 0400 Secret: the key copy below exists for it
    token_dir = tmp_path / "token"
    token_dir.mkdir()
    (token_dir / "token").write_bytes((identity / "reports.token").read_bytes())
    os.chown(token_dir / "token", UID, UID)
    (token_dir / "token").chmod(0o400)
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    config = conn_config.replace('duration_seconds = 3600',
                                 f'duration_seconds = 3600\nendpoint = "http://{EMULATOR}"')
    assert 'endpoint = "http://' in config
    (config_dir / "config.toml").write_text(config)
    (config_dir / "ca.pem").write_bytes(material.ca_file.read_bytes())
    config_dir.chmod(0o755)

    name = f"cs-pod-{os.getpid()}"
    keys, state = f"{name}-keys", f"{name}-state"
    containers = [f"{name}-{c}" for c in ("emulator", "key", "daemon", "app")]
    pm.sweep()
    pm.remove([name], containers, [keys, state])
    locked = ["--read-only", "--cap-drop=ALL", "--security-opt", "no-new-privileges",
              "--user", f"{UID}:{UID}"]
    try:
        pm.podman("pod", "create", "--name", name, "--network", "none")
        # The manifest's emptyDir (medium: Memory) lives as long as the pod; a podman tmpfs
        # volume is unmounted (emptied) when the init container exits, so: a plain volume.
        pm.podman("volume", "create", keys)
        pm.podman("volume", "create", "--opt", "type=tmpfs", "--opt", "device=tmpfs", "--opt",
                  f"o=mode=0700,uid={UID},gid={UID}", state)  # podman 4.3: no size= (quota)
        secrets = f"{identity}:/var/run/secrets/credential-sidecar:ro"
        pm.podman("run", "-d", "--pod", name, "--name", containers[0], *locked,
                  "--no-healthcheck", "-v", f"{config_dir}:/etc/cs-test:ro", image, "emulator",
                  "--listen", EMULATOR, "--ca", "/etc/cs-test/ca.pem",
                  "--trust-anchor-arn", arns["trust_anchor_arn"],
                  "--profile-arn", arns["profile_arn"], "--role-arn", arns["role_arn"])
        # the manifest's init container, its command verbatim
        pm.podman("run", "--rm", "--pod", name, "--name", containers[1], *locked,
                  "--no-healthcheck", "-v", secrets, "-v",
                  f"{keys}:/var/run/credential-sidecar/keys:U", "--entrypoint",
                  key_copy["command"][0], image, *key_copy["command"][1:])
        pm.podman("run", "-d", "--pod", name, "--name", containers[2], *locked,
                  "--health-interval=disable", "-v", secrets,
                  "-v", f"{config_dir}/config.toml:/etc/credential-sidecar/config.toml:ro",
                  "-v", f"{keys}:/var/run/credential-sidecar/keys:ro",
                  "-v", f"{state}:/var/lib/credential-sidecar", image, *daemon_spec["args"])
        yield {"name": name, "containers": containers, "app": app_spec, "image": image,
               "token_dir": token_dir, "daemon": containers[2], "emulator": containers[0]}
    finally:
        pm.remove([name], containers, [keys, state])


def daemon_logs(pod: dict[str, Any]) -> str:
    result = pm.podman("logs", pod["daemon"], check=False)
    return (result.stdout + result.stderr)[-4000:]


def app_run(pod: dict[str, Any], code: str, env: list[str] | None = None,
            container_door: bool = True) -> str:
    """``code`` in the app container, with the manifest's environment (or without its
    container-door variables) plus ``env``."""
    env = [f"--env={e['name']}={e['value']}" for e in pod["app"]["env"]
           if container_door or not e["name"].startswith("AWS_CONTAINER_")] + \
        [f"--env={e}" for e in env or []]
    mount = pod["app"]["volumeMounts"][0]["mountPath"]
    result = pm.podman(
        "run", "--rm", "--pod", pod["name"], "--name", pod["containers"][3], "--read-only",
        "--cap-drop=ALL", "--user", f"{UID}:{UID}", "--no-healthcheck", *env,
        "-v", f"{pod['token_dir']}:{mount}:ro", "--entrypoint", "python3", pod["image"],
        "-c", code, check=False, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.strip()


def test_the_image_is_non_root_with_a_healthcheck_and_no_build_tools(image: str) -> None:
    fmt = "{{.Config.User}}|{{json .Config.Healthcheck}}"
    user, check = pm.podman("image", "inspect", image, "--format", fmt).stdout.strip().split("|")
    assert user == f"{UID}:{UID}" and "healthz" in check
    found = pm.podman("run", "--rm", "--network", "none", "--no-healthcheck", "--entrypoint", "sh",
                      image, "-c", "for t in gcc cc make ld pip pip3; do command -v $t; done; "
                      "ls -d /usr/include/python3* 2>/dev/null; id -u").stdout.split()
    assert found == [str(UID)], found


def test_the_manifest_runs_as_a_pod(pod: dict[str, Any]) -> None:
    assert pm.healthy(pod["daemon"]), pm.podman("logs", pod["daemon"], check=False).stderr[-3000:]
    state = pm.podman("inspect", pod["daemon"], "--format", "{{.State.Health.Status}}").stdout
    assert state.strip() == "healthy"
    try:
        h.wait_for(lambda: app_run(pod, READYZ) == "200", timeout=60, what="/readyz 200")
    except AssertionError:
        raise AssertionError("daemon:\n" + daemon_logs(pod) + "\nemulator:\n"
                             + pm.podman("logs", pod["emulator"], check=False).stderr[-2000:]
                             ) from None
    key_id = app_run(pod, BOTOCORE)
    stats = json.loads(app_run(pod, STATS))
    assert key_id in [c["accessKeyId"] for c in stats["issued"]]
    # the IMDS door, for programs that know nothing else, on the same loopback
    over_imds = app_run(pod, BOTOCORE, env=["AWS_EC2_METADATA_SERVICE_ENDPOINT="
                                            "http://127.0.0.1:9911/"], container_door=False)
    assert over_imds == key_id
    # SIGTERM (podman stop) -> the daemon finishes and exits 0
    pm.podman("stop", "-t", "20", pod["daemon"])
    code = pm.podman("inspect", pod["daemon"], "--format", "{{.State.ExitCode}}").stdout.strip()
    assert code == "0", pm.podman("logs", pod["daemon"], check=False).stderr[-3000:]


READYZ = """
import urllib.error, urllib.request
try:
    print(urllib.request.urlopen("http://127.0.0.1:9913/readyz", timeout=5).status)
except urllib.error.HTTPError as exc:
    print(exc.code)
except OSError:
    print(0)
"""
BOTOCORE = """
import botocore.session
creds = botocore.session.get_session().get_credentials()
print(creds.get_frozen_credentials().access_key)
"""
STATS = f"""
import urllib.request
print(urllib.request.urlopen("http://{EMULATOR}/_emulator/stats", timeout=5).read().decode())
"""
