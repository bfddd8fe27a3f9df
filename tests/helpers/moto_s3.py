"""moto in server mode as the S3 the clients write to (on loopback, or inside a namespace)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.helpers import procs
from tests.helpers.netns import NetNS

MOTO_SERVER = Path(procs.PYTHON).with_name("moto_server")
T = TypeVar("T")
SETUP_KEYS = Credentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")


@dataclass
class Moto:
    proc: procs.Proc
    url: str
    netns: NetNS | None

    def _inside(self, fn: Callable[[], T]) -> T:
        return self.netns.call(fn) if self.netns is not None else fn()

    def http(self, method: str, path: str,
             body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
        """A direct request to moto, bypassing any proxy, signed with a setup key (moto takes
        any key, but refuses anonymous reads of private objects): for setup and checks."""
        request = AWSRequest(method=method, url=self.url + path, data=body or b"",
                             headers={"Content-Type": "application/octet-stream"})
        S3SigV4Auth(SETUP_KEYS, "s3", "us-east-1").add_auth(request)
        headers = {k: str(v) for k, v in request.headers.items()}
        return self._inside(lambda: procs.http(method, self.url + path, headers, body))

    def create_bucket(self, name: str) -> None:
        status, _, body = self.http("PUT", f"/{name}")
        assert status == 200, f"create bucket {name}: {status} {body[:300]!r}"

    def keys(self, bucket: str) -> list[str]:
        status, _, body = self.http("GET", f"/{bucket}?list-type=2")
        assert status == 200, body
        text = body.decode()
        return [part.split("</Key>")[0] for part in text.split("<Key>")[1:]]

    def get(self, bucket: str, key: str) -> bytes:
        status, _, body = self.http("GET", f"/{bucket}/{key}")
        assert status == 200, body
        return body


@contextlib.contextmanager
def moto_server(tmp: Path, *, netns: NetNS | None = None) -> Iterator[Moto]:
    if not MOTO_SERVER.exists():
        raise AssertionError(f"{MOTO_SERVER} is missing: pip install 'moto[server]'")
    port = netns.call(procs.free_port) if netns is not None else procs.free_port()
    url = f"http://127.0.0.1:{port}"
    args = [str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(port)]
    log = tmp / "moto.log"
    env = procs.clean_env(tmp)
    starter = (netns.started("moto", args, log, env) if netns is not None
               else procs.started("moto", args, log, env))
    with starter as proc:
        moto = Moto(proc, url, netns)

        def up() -> bool:
            if not proc.alive():
                raise AssertionError(f"moto_server exited:\n{proc.log()}")
            try:
                return moto.http("GET", "/moto-api/")[0] == 200
            except OSError:
                return False

        procs.wait_until(up, timeout=60, what="moto_server")
        yield moto
