"""Hardware keys next to key files: CPU and wall time per signature and per renewal.

Keys: RSA-2048 and P-256 in a key file (cryptography), on a SoftHSM2 token (through p11-kit's
proxy, as in production) and in swtpm (persistent handles). The same throwaway token and swtpm
as the tests (tests/helpers/softhsm.py, tests/helpers/swtpm.py).

- per signature: the key's own ``sign`` over a SigV4-X509 string to sign (for a file key, the
  cryptography call the signer makes);
- per renewal: ``RolesAnywhereSource.fetch`` (sign CreateSession, POST it, parse) against the
  Roles Anywhere emulator running in this process, so its signature verification is counted.

CPU is this process's (SoftHSM runs in it; hardware signatures run in a worker thread, which
process time counts) plus, for swtpm, the simulator process's from /proc. Every figure is also
given as a ratio to the file key of the same type measured in the same run.

    .venv/bin/python bench/hardware_keys.py [--signatures 200] [--renewals 100]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import common as c
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from credential_sidecar import logs
from credential_sidecar.clock import SystemClock
from credential_sidecar.config.model import RolesAnywhereConnection
from credential_sidecar.devtools.emulator.server import Emulator, Profile
from credential_sidecar.upstream.hardware.base import HardwareKey
from credential_sidecar.upstream.hardware.tpm_key import TpmKey
from credential_sidecar.upstream.roles_anywhere import RolesAnywhereSource
from tests.helpers import softhsm, swtpm
from tests.helpers.hwkeys import make_intermediate, make_leaf, make_root

h = c.h
os.environ.setdefault("TSS2_LOG", "all+NONE")
KEYS = {"rsa": "RSA-2048", "p256": "P-256"}
DATA = (b"AWS4-X509-ECDSA-SHA256\n20240101T000000Z\n20240101/us-east-1/rolesanywhere/"
        b"aws4_request\n" + b"0" * 64)


def proc_cpu(pid: int | None) -> float:
    """CPU seconds of another process (swtpm), 0 when there is none."""
    if not pid:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(count: int, step: Callable[[], object], other_pid: int | None) -> dict[str, float]:
    """Wall and CPU ms per call (CPU: this process + other_pid)."""
    wall, cpu, other = time.perf_counter(), time.process_time(), proc_cpu(other_pid)
    for _ in range(count):
        step()
    return {"wall_ms": (time.perf_counter() - wall) / count * 1000,
            "cpu_ms": ((time.process_time() - cpu) + (proc_cpu(other_pid) - other))
            / count * 1000}


def signer(private_key: object) -> Callable[[], bytes]:
    if isinstance(private_key, HardwareKey):
        return lambda: private_key.sign(DATA)
    if isinstance(private_key, rsa.RSAPrivateKey):
        return lambda: private_key.sign(DATA, padding.PKCS1v15(), hashes.SHA256())
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        return lambda: private_key.sign(DATA, ec.ECDSA(hashes.SHA256()))
    raise TypeError(f"no signer for {type(private_key).__name__}")


async def measure(conn: dict[str, Any], emulator_url: str, signatures: int, renewals: int,
                  other_pid: int | None) -> dict[str, dict[str, float]]:
    connection = RolesAnywhereConnection.model_validate({**conn, "endpoint": emulator_url})
    async with aiohttp.ClientSession() as http:
        source = RolesAnywhereSource(connection, SystemClock(), http=http)
        for _ in range(3):  # warm up: identity loaded (token login, TPM key load), pool
            await source.fetch()
        sign = signer((await source.identity.get()).private_key)
        signing = await asyncio.to_thread(timed, signatures, sign, other_pid)
        wall, cpu, other = time.perf_counter(), time.process_time(), proc_cpu(other_pid)
        for _ in range(renewals):
            await source.fetch()
        renewal = {"wall_ms": (time.perf_counter() - wall) / renewals * 1000,
                   "cpu_ms": ((time.process_time() - cpu) + (proc_cpu(other_pid) - other))
                   / renewals * 1000}
        await source.identity.close()
    return {"signature": signing, "renewal": renewal}


def _pem(path: Path, *certs: Any) -> Path:
    path.write_bytes(b"".join(x.public_bytes(serialization.Encoding.PEM) for x in certs))
    return path


async def run(tmp: Path, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    (tmp / "hsm").mkdir()
    (tmp / "tpm").mkdir()
    hsm = softhsm.build(tmp / "hsm")
    tpm = swtpm.build(tmp / "tpm")
    try:
        tpm_root = make_root("bench TPM root")
        tpm_inter = make_intermediate(tpm_root, "bench TPM intermediate")
        files = {k: h.make_pki(tmp / k, k, name=k) for k in KEYS}  # type: ignore[arg-type]
        anchors = [hsm.root.cert, tpm_root.cert, *(m.ca.certificate for m in files.values())]
        cases: list[tuple[str, str, dict[str, Any], int | None]] = []
        for key, material in files.items():
            cases.append(("file", key, h.connection("bench", material, ""), None))
        for key in KEYS:
            cases.append(("softhsm", key, h.connection(
                "bench", files[key], "", private_key=hsm.uri(key),
                certificate=f"pkcs11:token={hsm.token};object={key};type=cert"), None))
        for key, handle in (("rsa", "rsap-handle"), ("p256", "ecp-handle")):
            probe = TpmKey(tpm.keys[handle], tcti=tpm.tcti)
            try:
                leaf = make_leaf(tpm_inter, f"bench tpm {key}", probe.public_key())
            finally:
                probe.close()
            cert = _pem(tmp / f"tpm-{key}.pem", leaf, tpm_inter.cert)
            cases.append(("swtpm", key, h.connection(
                "bench", files[key], "", private_key=tpm.keys[handle], certificate=str(cert),
                tpm_tcti=tpm.tcti), tpm.pid))
        emulator = Emulator(trust_anchors={h.TRUST_ANCHOR: anchors},
                            profiles={h.PROFILE: Profile(role_arns=(h.ROLE,))})
        url = await emulator.start("127.0.0.1", 0)
        results: dict[str, dict[str, Any]] = {}
        try:
            for store, key, conn, pid in cases:
                scale = 4 if store == "swtpm" else 1  # swtpm is slow: fewer rounds
                print(f"{store} {KEYS[key]}", flush=True)
                results[f"{store} {KEYS[key]}"] = await measure(
                    conn, url, max(args.signatures // scale, 10),
                    max(args.renewals // scale, 10), pid)
        finally:
            await emulator.stop()
        return results
    finally:
        tpm.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--signatures", type=int, default=200, help="per key (swtpm: a quarter)")
    parser.add_argument("--renewals", type=int, default=100, help="per key (swtpm: a quarter)")
    args = parser.parse_args()
    for reason in (softhsm.missing_tools(), swtpm.missing_tools()):
        if reason:
            raise SystemExit(f"bench/hardware_keys.py: {reason} (tests/setup/hwkeys.sh)")
    with open(os.devnull, "w") as devnull, \
            tempfile.TemporaryDirectory(prefix="bench-hw-") as tmp_name:
        logs.configure("json", "info", stream=devnull)
        results = asyncio.run(run(Path(tmp_name), args))
    rows = []
    for name, row in results.items():
        base = results[f"file {name.split(' ', 1)[1]}"]
        cells: list[object] = [name]
        for what in ("signature", "renewal"):
            for unit in ("cpu_ms", "wall_ms"):
                row[what][unit.replace("_ms", "_ratio")] = ratio = \
                    row[what][unit] / base[what][unit]
                cells.append(f"{row[what][unit]:.2f} ({ratio:.1f}x)")
        rows.append(cells)
    table = c.markdown(["key", "CPU ms / signature", "wall ms / signature",
                        "CPU ms / renewal", "wall ms / renewal"], rows)
    note = ("In brackets: the ratio to the key file of the same type, measured in the same run. "
            "A renewal is RolesAnywhereSource.fetch (sign, POST CreateSession, parse) against "
            "the emulator in the same process (its verification counted); CPU is this "
            "process's plus swtpm's. "
            f"{args.signatures} signatures and {args.renewals} renewals per key (swtpm: a "
            "quarter), one at a time.")
    c.write_result("hardware_keys", {"settings": vars(args), "results": results}, [table, note])


if __name__ == "__main__":
    main()
