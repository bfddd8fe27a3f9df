"""The built wheel installs beside python-daemon, and each survives the other's removal.

The package once imported as ``daemon``, python-daemon's name (which AWS's aws-cfn-bootstrap pulls
onto many EC2 hosts): installed together, ours died with an ImportError and uninstalling theirs
deleted our files. Here both go into a fresh venv, the CLI runs, python-daemon is uninstalled,
and every file of ours is still there and the CLI still runs.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str | Path, **kwargs: object) -> str:
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=300,
                          cwd="/", check=False, **kwargs)  # type: ignore[call-overload]
    assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
    return str(done.stdout)


def test_wheel_and_python_daemon_coexist(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", dist, ROOT)
    wheel = next(dist.glob("credential_sidecar-*.whl"))
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv)
    py = venv / "bin" / "python"
    _run(py, "-m", "pip", "install", "-q", "--no-deps", wheel, "python-daemon")
    # The runtime dependencies come from the test venv, behind the fresh venv's own packages,
    # so that only the wheel and python-daemon are new here (a .pth path is not itself scanned
    # for .pth files, so the test venv's editable install stays out).
    site = Path(_run(py, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))").strip())
    (site / "zz_test_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")

    cli = venv / "bin" / "credential-sidecar"
    assert _run(cli, "--version").startswith("credential-sidecar ")
    both = _run(py, "-c", "import daemon, credential_sidecar, credential_sidecar.server; "
                "print(daemon.__file__); print(credential_sidecar.__file__)").split()
    assert both[0].startswith(str(site / "daemon")), "python-daemon is the 'daemon' package"
    assert both[1].startswith(str(site / "credential_sidecar")), "ours is credential_sidecar"
    config = ROOT / "config" / "example.toml"
    checked = subprocess.run([cli, "check-config", "--config", config], capture_output=True,
                             cwd="/", text=True, timeout=120, check=False)
    assert checked.returncode in (0, 2) and "Traceback" not in checked.stderr, checked.stderr

    # credential_process's own script: runs the installed client under the venv's python3 -I -S,
    # from its compiled bytecode, with builtin modules only.
    script = venv / "bin" / "credential-sidecar-process"
    assert script.read_text() == (ROOT / "scripts" / "credential-sidecar-process").read_text()
    absent = subprocess.run([script, "app", "--socket", "/nonexistent/control.sock"],
                            capture_output=True, text=True, timeout=60, cwd="/", check=False)
    assert (absent.returncode, absent.stdout, absent.stderr) == (1, "", (
        "credential-sidecar: daemon not reachable at /nonexistent/control.sock: "
        "No such file or directory\n"))
    traced = subprocess.run([venv / "bin" / "python3", "-I", "-S", "-X", "importtime", script,
                             "app", "--socket", "/nonexistent/control.sock"],
                            capture_output=True, text=True, timeout=60, cwd="/", check=False)
    loaded = {line.split("|")[-1].strip() for line in traced.stderr.splitlines()
              if line.startswith("import time:")}
    assert {"credential_sidecar", "credential_sidecar.client", "_socket"} <= loaded, loaded
    assert not loaded & {"site", "os", "json", "socket", "argparse", "tomllib", "pathlib"}
    assert (site / "credential_sidecar" / "__pycache__").is_dir(), "pip compiled the package"

    ours = sorted(p.relative_to(site) for p in (site / "credential_sidecar").rglob("*.py"))
    assert Path("credential_sidecar/server.py") in ours
    _run(py, "-m", "pip", "uninstall", "-y", "-q", "python-daemon")
    after = sorted(p.relative_to(site) for p in (site / "credential_sidecar").rglob("*.py"))
    assert after == ours, "uninstalling python-daemon removed files of ours"
    assert not (site / "daemon").exists()
    assert _run(cli, "--version").startswith("credential-sidecar ")
