"""A software TPM (swtpm, socket mode, loopback) with keys made by tpm2-tools and tpm2-openssl.

swtpm is started with --daemon: its parent exits only once both sockets listen, so the tests
wait on that exit rather than sleeping. It is stopped through a pidfd, again without polling.
"""

from __future__ import annotations

import importlib.util
import os
import select
import shutil
import signal
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from credential_sidecar.upstream.hardware.tss2_pem import TPM2_RH_OWNER, TpmKeyFile, encode_pem
from tests.helpers.softhsm import write_secret

# libtss2 logs its own errors to stderr; the tests provoke some on purpose.
os.environ.setdefault("TSS2_LOG", "all+NONE")
SRK_ATTRS = "restricted|decrypt|fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda"
SIGN_ATTRS = "sign|fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda"
KEY_AUTH = "tpm-key-auth-good"
TPM2_PROVIDER_GLOB = "/usr/lib/*/ossl-modules/tpm2.so"


def missing_tools() -> str | None:
    for tool, package in (("swtpm", "swtpm"), ("tpm2_createprimary", "tpm2-tools"),
                          ("tpm2_encodeobject", "tpm2-tools (>= 5.3)")):
        if shutil.which(tool) is None:
            return f"{tool} not installed (apt-get install {package})"
    if importlib.util.find_spec("tpm2_pytss") is None:
        return "tpm2-pytss not installed: pip install -e '.[test]' (after tests/setup/hwkeys.sh)"
    return None


def _free_port_pair() -> int:
    """A port P with P+1 free too (swtpm's TCTI expects the control port at P+1)."""
    for _ in range(50):
        with socket.socket() as a, socket.socket() as b:
            a.bind(("127.0.0.1", 0))
            port = int(a.getsockname()[1])
            try:
                b.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    raise RuntimeError("no free loopback port pair")


@dataclass
class Swtpm:
    dir: Path
    port: int = 0
    pid: int = 0
    keys: dict[str, str] = field(default_factory=dict)  # name -> private_key config value
    key_auth_file: Path | None = None

    @property
    def tcti(self) -> str:
        return f"swtpm:host=127.0.0.1,port={self.port}"

    def start(self) -> None:
        """Start on self.port (or a fresh pair); returns once the sockets listen."""
        (self.dir / "state").mkdir(exist_ok=True)
        for _ in range(5):
            port = self.port or _free_port_pair()
            pidfile = self.dir / "swtpm.pid"
            done = subprocess.run(
                ["swtpm", "socket", "--tpm2", "--daemon", "--pid", f"file={pidfile}",
                 "--server", f"type=tcp,port={port},bindaddr=127.0.0.1",
                 "--ctrl", f"type=tcp,port={port + 1},bindaddr=127.0.0.1",
                 "--tpmstate", f"dir={self.dir / 'state'}",
                 "--flags", "not-need-init,startup-clear"],
                capture_output=True, text=True, check=False)
            if done.returncode == 0:
                self.port, self.pid = port, int(pidfile.read_text())
                return
            if self.port:  # a restart must reuse the port the keys were configured with
                raise RuntimeError(f"swtpm restart failed: {done.stderr}")
        raise RuntimeError(f"swtpm did not start: {done.stderr}")

    def stop(self) -> None:
        if not self.pid:
            return
        try:
            fd = os.pidfd_open(self.pid)
        except ProcessLookupError:
            self.pid = 0
            return
        try:
            os.kill(self.pid, signal.SIGTERM)
            if not select.select([fd], [], [], 10)[0]:
                os.kill(self.pid, signal.SIGKILL)
                select.select([fd], [], [], 10)
        finally:
            os.close(fd)
            self.pid = 0

    def tool(self, *args: str, env: dict[str, str] | None = None) -> str:
        run_env = dict(os.environ, TPM2TOOLS_TCTI=self.tcti, **(env or {}))
        out = subprocess.run(list(args), cwd=self.dir, env=run_env, capture_output=True,
                             text=True, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed: {out.stderr[-2000:]}")
        subprocess.run(["tpm2_flushcontext", "-t"], cwd=self.dir, env=run_env,
                       capture_output=True, check=True)  # no resource manager: free the slots
        return out.stdout


def _create(tpm: Swtpm, name: str, parent: str, alg: str, *extra: str) -> None:
    tpm.tool("tpm2_create", "-C", parent, "-G", alg, "-g", "sha256", "-a", SIGN_ATTRS,
             "-u", f"{name}.pub", "-r", f"{name}.priv", *extra)


def build(tmp: Path) -> Swtpm:
    tpm = Swtpm(tmp)
    tpm.start()
    try:
        _make_keys(tpm)
    except BaseException:
        tpm.stop()
        raise
    return tpm


def _make_keys(tpm: Swtpm) -> None:
    d = tpm.dir
    srk = ("tpm2_createprimary", "-C", "o", "-g", "sha256", "-G", "ecc256:aes128cfb",
           "-a", SRK_ATTRS)
    tpm.tool(*srk, "-c", "srk.ctx")
    tpm.tool("tpm2_evictcontrol", "-C", "o", "-c", "srk.ctx", "0x81000001")
    # RSA key file under the persistent SRK, encoded by tpm2-tools (it writes emptyAuth FALSE).
    _create(tpm, "rsa", "0x81000001", "rsa2048:rsassa-sha256:null")
    tpm.tool("tpm2_encodeobject", "-C", "0x81000001", "-u", "rsa.pub", "-r", "rsa.priv",
             "-o", "rsa-tools.pem")
    tpm.keys["rsa-pem"] = str(d / "rsa-tools.pem")
    # P-256 key file with an auth value under the owner hierarchy's SRK, encoded by our code.
    tpm.key_auth_file = write_secret(d / "key-auth", KEY_AUTH)
    tpm.tool(*srk, "-c", "owner-srk.ctx")
    _create(tpm, "ecauth", "owner-srk.ctx", "ecc256:ecdsa-sha256", "-p", f"file:{d / 'key-auth'}")
    pem = encode_pem(TpmKeyFile(TPM2_RH_OWNER, (d / "ecauth.pub").read_bytes(),
                                (d / "ecauth.priv").read_bytes(), empty_auth=False))
    (d / "ec-auth.pem").write_bytes(pem)
    tpm.keys["ec-auth-pem"] = str(d / "ec-auth.pem")
    # Persistent keys.
    for name, alg, handle in (("ecp", "ecc256", "0x81000002"), ("rsap", "rsa2048", "0x81000003")):
        _create(tpm, name, "0x81000001", alg)
        tpm.tool("tpm2_load", "-C", "0x81000001", "-u", f"{name}.pub", "-r", f"{name}.priv",
                 "-c", f"{name}.ctx")
        tpm.tool("tpm2_evictcontrol", "-C", "o", "-c", f"{name}.ctx", handle)
        tpm.keys[f"{name}-handle"] = f"handle:{handle}"
    # P-256 key file from tpm2-openssl, the way most people make them (owner parent, NULL scheme).
    if any(Path("/usr/lib").glob(TPM2_PROVIDER_GLOB.removeprefix("/usr/lib/"))):
        tpm.tool("openssl", "genpkey", "-provider", "tpm2", "-provider", "default",
                 "-algorithm", "EC", "-pkeyopt", "group:P-256", "-out", "ec-openssl.pem",
                 env={"TPM2OPENSSL_TCTI": tpm.tcti})
        tpm.keys["ec-openssl-pem"] = str(d / "ec-openssl.pem")
