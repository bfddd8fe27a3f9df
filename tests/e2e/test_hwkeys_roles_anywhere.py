"""CreateSession signed by hardware keys, end to end: config text -> RolesAnywhereSource ->
the in-process emulator, which checks the SigV4-X509 signature and the chain to its anchor."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from credential_sidecar.clock import SystemClock
from credential_sidecar.config.errors import ConfigError
from credential_sidecar.config.load import parse_config
from credential_sidecar.devtools.emulator.server import Emulator, Profile
from credential_sidecar.upstream.base import UpstreamError
from credential_sidecar.upstream.hardware.tpm_key import TpmKey
from credential_sidecar.upstream.roles_anywhere import RolesAnywhereSource
from tests.helpers.hwkeys import Issuer, make_intermediate, make_leaf, make_root
from tests.helpers.softhsm import SoftHsm
from tests.helpers.swtpm import Swtpm

ACCOUNT = "111122223333"
TA = f"arn:aws:rolesanywhere:eu-west-1:{ACCOUNT}:trust-anchor/hw"
PROFILE = f"arn:aws:rolesanywhere:eu-west-1:{ACCOUNT}:profile/hw"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/hw"
MDWE = [sys.executable, str(Path(__file__).resolve().parent.parent / "helpers" / "mdwe.py")]
SIGN_UNDER_MDWE = """
import sys
from credential_sidecar.upstream.hardware.base import verify
from credential_sidecar.upstream.hardware.factory import open_key
key = open_key(sys.argv[1], tpm_tcti=sys.argv[2])
verify(key.public_key(), key.sign(b"x"), b"x")
key.close()
print("signed")
"""


@pytest.fixture(scope="module")
def tpm_ca() -> tuple[Issuer, Issuer]:
    root = make_root("TPM E2E Root")
    return root, make_intermediate(root, "TPM E2E Intermediate")


async def _emulator(anchor: Any) -> Emulator:
    emu = Emulator(trust_anchors={TA: [anchor]}, profiles={PROFILE: Profile((ROLE,))})
    await emu.start()
    return emu


def _source(url: str, **conn: object) -> RolesAnywhereSource:
    config = parse_config({"connections": [{
        "name": "hw", "type": "roles-anywhere", "trust_anchor_arn": TA, "profile_arn": PROFILE,
        "role_arn": ROLE, "session_name": "hwkeys", "endpoint": url, **conn,
    }]})
    return RolesAnywhereSource(config.connections[0], SystemClock(), timeout=5.0)  # type: ignore[arg-type]


@pytest.fixture
async def hsm_emulator(softhsm: SoftHsm) -> AsyncIterator[Emulator]:
    emu = await _emulator(softhsm.root.cert)
    try:
        yield emu
    finally:
        await emu.stop()


@pytest.mark.parametrize("label", ["rsa", "p384", "p256-always"])
async def test_token_key_and_certificate(softhsm: SoftHsm, hsm_emulator: Emulator,
                                         label: str) -> None:
    """Key, leaf and intermediate all come from the token; unrelated token certs stay out."""
    src = _source(hsm_emulator.url, private_key=softhsm.uri(label),
                  certificate=f"pkcs11:token=sidecar;object={label};type=cert")
    try:
        creds = await src.fetch()
        again = await src.fetch()  # the same logged-in session signs again
        identity = src.identity.current()
    finally:
        await src.close()
    assert creds.access_key_id == hsm_emulator.issued[-2]["accessKeyId"]
    assert again.access_key_id == hsm_emulator.issued[-1]["accessKeyId"]
    assert identity is not None and identity.chain == (softhsm.intermediate.cert,)


async def test_token_key_with_certificate_file(softhsm: SoftHsm, hsm_emulator: Emulator,
                                               tmp_path: Path) -> None:
    cert = tmp_path / "leaf.pem"
    cert.write_bytes(softhsm.certs["p256"].public_bytes(serialization.Encoding.PEM))
    src = _source(hsm_emulator.url, private_key=softhsm.uri("p256"), certificate=str(cert))
    try:
        await src.fetch()
    finally:
        await src.close()
    assert hsm_emulator.succeeded == 1


async def test_renewed_certificate_file_reuses_the_open_key(
        softhsm: SoftHsm, hsm_emulator: Emulator, tmp_path: Path) -> None:
    """A certificate renewal on disk re-reads the file, not the token login."""
    cert = tmp_path / "leaf.pem"
    pem = softhsm.certs["rsa"].public_bytes(serialization.Encoding.PEM)
    cert.write_bytes(pem)
    src = _source(hsm_emulator.url, private_key=softhsm.uri("rsa"), certificate=str(cert))
    try:
        await src.fetch()
        first = src.identity.current()
        replacement = tmp_path / "new.pem"
        replacement.write_bytes(pem + b"\n")  # another inode and size: a renewed file
        replacement.replace(cert)
        await src.fetch()
        second = src.identity.current()
    finally:
        await src.close()
    assert first is not None and second is not None and first is not second
    assert second.private_key is first.private_key
    assert hsm_emulator.succeeded == 2


async def test_key_not_matching_the_certificate_is_refused(
        softhsm: SoftHsm, hsm_emulator: Emulator, tmp_path: Path) -> None:
    cert = tmp_path / "leaf.pem"
    cert.write_bytes(softhsm.certs["rsa"].public_bytes(serialization.Encoding.PEM))
    src = _source(hsm_emulator.url, private_key=softhsm.uri("p256"), certificate=str(cert))
    try:
        with pytest.raises(UpstreamError, match="does not match certificate CN=sidecar rsa"):
            await src.fetch()
    finally:
        await src.close()
    assert hsm_emulator.calls == 0


def test_pin_value_in_the_config_is_refused_without_echo() -> None:
    with pytest.raises(ConfigError) as err:
        _source("http://127.0.0.1:9", certificate="c.pem",
                private_key="pkcs11:token=t;object=k?pin-value=CANARY-77123")
    assert "pin-source=file:" in str(err.value) and "CANARY-77123" not in str(err.value)


@pytest.mark.parametrize("name", ["rsa-pem", "ecp-handle", "ec-auth-pem"])
async def test_tpm_key(swtpm: Swtpm, tpm_ca: tuple[Issuer, Issuer], tmp_path: Path,
                       name: str) -> None:
    root, inter = tpm_ca
    probe = TpmKey(swtpm.keys[name], tcti=swtpm.tcti, key_auth_file=swtpm.key_auth_file)
    try:
        leaf = make_leaf(inter, f"tpm {name}", probe.public_key())
    finally:
        probe.close()
    (tmp_path / "leaf.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "chain.pem").write_bytes(inter.cert.public_bytes(serialization.Encoding.PEM))
    emu = await _emulator(root.cert)
    extra: dict[str, object] = {"tpm_tcti": swtpm.tcti}
    if name == "ec-auth-pem":
        extra["tpm_key_auth_file"] = str(swtpm.key_auth_file)
    src = _source(emu.url, private_key=swtpm.keys[name], certificate=str(tmp_path / "leaf.pem"),
                  intermediates=str(tmp_path / "chain.pem"), **extra)
    try:
        await src.fetch()
        await src.fetch()
    finally:
        await src.close()
        await emu.stop()
    assert emu.succeeded == 2


def test_signing_under_memory_deny_write_execute(softhsm: SoftHsm, swtpm: Swtpm) -> None:
    """The unit has MemoryDenyWriteExecute=yes: p11-kit's proxy (libffi), SoftHSM and
    tpm2-pytss (cffi) must sign without a writable+executable mapping."""
    probe = subprocess.run([*MDWE, sys.executable, "-c", "pass"], capture_output=True,
                           timeout=60, check=False)
    if probe.returncode == 3:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux 6.3+)")
    for key in (softhsm.uri("p256"), swtpm.keys["rsa-pem"]):
        done = subprocess.run([*MDWE, sys.executable, "-W", "error", "-c", SIGN_UNDER_MDWE, key,
                               swtpm.tcti], capture_output=True, text=True, timeout=120,
                              check=False, cwd=Path(__file__).resolve().parents[2])
        assert done.returncode == 0 and done.stdout.strip().endswith("signed"), done.stderr
