"""The daemon as third-party clients meet it: emulator -> daemon doors -> client -> S3 (moto).

Between the client and moto sits the verifying proxy (sigcheck_proxy.py): an S3 request gets
through only if its SigV4 signature verifies with a set the daemon served. Two layouts:

- loopback_stack(): everything on 127.0.0.1 (IMDS door, container door, control socket);
- netns_stack(): everything inside a fresh network namespace, the IMDS door on the real
  addresses 169.254.169.254:80 (connection "app") and [fd00:ec2::254]:80 (connection "app6"),
  for clients that cannot be pointed anywhere else (s3cmd, restic/minio-go, SDK defaults).
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tests.helpers import harness as h
from tests.helpers import moto_s3, procs
from tests.helpers.netns import NetNS
from tests.helpers.sigcheck_proxy import Served, SigcheckProxy, sigcheck_proxy

T = TypeVar("T")
SIDECAR = Path(sys.executable).with_name("credential-sidecar")


@dataclass
class ClientStack:
    tmp: Path
    daemon: h.Daemon
    emulator: h.Emulator
    moto: moto_s3.Moto
    proxy: SigcheckProxy
    control_socket: Path
    netns: NetNS | None = None
    imds_urls: dict[str, str] = field(default_factory=dict)  # connection -> IMDS base URL

    def inside(self, fn: Callable[[], T]) -> T:
        """Run `fn` where the stack's addresses are reachable."""
        return self.netns.call(fn) if self.netns is not None else fn()

    @property
    def token_file(self) -> Path:
        return self.tmp / "state" / "tokens" / "app.token"

    @property
    def container_token(self) -> str:
        return self.token_file.read_text().strip()

    def container_url(self, name: str = "app") -> str:
        return self.daemon.url("container") + f"v1/credentials/{name}"

    def served(self) -> list[Served]:
        """The sets the daemon serves now, read through its IMDS doors."""
        out = []
        for base in self.imds_urls.values():
            doc = self.inside(functools.partial(_role_document, base))
            out.append(Served(doc["AccessKeyId"], doc["SecretAccessKey"], doc["Token"]))
        return out

    def sync(self) -> list[Served]:
        """Let the proxy accept exactly what the daemon serves now; forget the logs so far."""
        sets = self.served()
        self.proxy.serve(*sets)
        self.proxy.reset_log()
        return sets

    def issued(self) -> dict[str, dict[str, Any]]:
        """Access key id -> the set the emulator issued under it."""
        stats = self.inside(self.emulator.stats)
        return {c["accessKeyId"]: c for c in stats["issued"]}

    def check(self, access_key: str, secret: str | None, token: str) -> None:
        """The client holds exactly a set the emulator issued (secret too, when shown)."""
        issued = self.issued()
        assert access_key in issued, "the client holds keys the emulator never issued"
        if secret is not None:
            assert secret == issued[access_key]["secretAccessKey"]
        assert token == issued[access_key]["sessionToken"]

    # --- client environments --------------------------------------------------------------------

    def base_env(self, home: Path, **extra: str) -> dict[str, str]:
        return procs.clean_env(home, AWS_REGION="us-east-1", **extra)

    def imds_env(self, home: Path, connection: str = "app") -> dict[str, str]:
        return self.base_env(home, AWS_EC2_METADATA_SERVICE_ENDPOINT=self.imds_urls[connection])

    def container_env(self, home: Path, token: str) -> dict[str, str]:
        """The container door, IMDS off; `token`: "env", "file" or "none"."""
        env = self.base_env(home, AWS_EC2_METADATA_DISABLED="true",
                            AWS_CONTAINER_CREDENTIALS_FULL_URI=self.container_url())
        if token == "env":
            env["AWS_CONTAINER_AUTHORIZATION_TOKEN"] = self.container_token
        elif token == "file":
            env["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"] = str(self.token_file)
        return env

    def process_command(self) -> str:
        return f"{SIDECAR} credential-process app --socket {self.control_socket}"

    def process_env(self, home: Path) -> dict[str, str]:
        config = home / "aws-config"
        config.write_text("[profile sidecar]\n"
                          f"credential_process = {self.process_command()}\n"
                          "region = us-east-1\n")
        return self.base_env(home, AWS_EC2_METADATA_DISABLED="true",
                             AWS_CONFIG_FILE=str(config), AWS_PROFILE="sidecar")


def _role_document(base: str) -> dict[str, Any]:
    return h.imds_read(base)[1]


@contextlib.contextmanager
def _control_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="cs-clients-"))  # a socket path must fit in 108 bytes
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def loopback_stack(tmp: Path) -> Iterator[ClientStack]:
    material = h.make_pki(tmp / "pki")
    with _control_dir() as sock_dir, moto_s3.moto_server(tmp) as s3, \
            h.emulator(tmp, [material.ca_file]) as emu, \
            h.daemon(tmp, [h.connection("app", material, emu.url)],
                     extra={"container": {"listen": "127.0.0.1:0"},
                            "control": {"socket": str(sock_dir / "control.sock")}}) as daemon, \
            sigcheck_proxy(tmp / "sigcheck", s3.url) as proxy:
        stack = ClientStack(tmp, daemon, emu, s3, proxy, sock_dir / "control.sock",
                            imds_urls={"app": daemon.url("imds:app")})
        stack.sync()
        yield stack


@contextlib.contextmanager
def netns_stack(tmp: Path) -> Iterator[ClientStack]:
    material = h.make_pki(tmp / "pki")
    with _control_dir() as sock_dir, NetNS(imds_v4=True, imds_v6=True) as ns:
        inside = ns.wrap([])
        with moto_s3.moto_server(tmp, netns=ns) as s3, \
                h.emulator(tmp, [material.ca_file], prefix=inside) as emu:
            imds = [
                {"listen": "169.254.169.254:80", "connection": "app", "allow_non_loopback": True},
                {"listen": "[fd00:ec2::254]:80", "connection": "app6",
                 "allow_non_loopback": True},
            ]
            connections = [h.connection("app", material, emu.url),
                           h.connection("app6", material, emu.url)]
            extra = {"container": {"listen": "127.0.0.1:0"},
                     "control": {"socket": str(sock_dir / "control.sock")}}
            with h.daemon(tmp, connections, imds=imds, extra=extra, wait_ready=False,
                          prefix=inside) as daemon:
                h.wait_for(lambda: ns.call(daemon.ready), what="the daemon to be ready")
                with sigcheck_proxy(tmp / "sigcheck", s3.url, netns=ns) as proxy:
                    stack = ClientStack(tmp, daemon, emu, s3, proxy, sock_dir / "control.sock",
                                        ns, imds_urls={"app": "http://169.254.169.254/",
                                                       "app6": "http://[fd00:ec2::254]/"})
                    stack.sync()
                    yield stack
    leftover = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                              check=True, timeout=30).stdout
    assert ns.name not in leftover, f"namespace {ns.name} was not deleted"
