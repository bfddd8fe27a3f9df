"""A throwaway SoftHSM2 token for ``credential-sidecar demo --key-store softhsm``.

The token lives in the demo's temp dir: SOFTHSM2_CONF (set in this process's environment, so
the daemon running in it sees the token) points at a config naming a token dir there. The key
is generated ON the token, non-extractable; only its public half leaves, to be certified.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from credential_sidecar.devtools import pki
from credential_sidecar.files import atomic_write

TOKEN = "credential-sidecar-demo"
OBJECT = "demo"
P11_MODULE = "/usr/share/p11-kit/modules/softhsm2.module"
DEBIAN_PACKAGES = "softhsm2 p11-kit-modules"


@dataclass(frozen=True)
class DemoToken:
    conf: Path
    pin_file: Path
    token: str
    object: str

    def uri(self) -> str:
        return f"pkcs11:token={self.token};object={self.object};type=private"


def missing() -> str | None:
    """Why a SoftHSM token cannot be made here (naming the Debian packages), or None."""
    if shutil.which("softhsm2-util") is None or not Path(P11_MODULE).exists():
        return f"SoftHSM2 is not installed: apt-get install {DEBIAN_PACKAGES}"
    try:
        import pkcs11  # noqa: F401
    except ImportError:
        return "python-pkcs11 is not installed: pip install python-pkcs11"
    from credential_sidecar.upstream.hardware.pkcs11_token import (
        Pkcs11ModuleError,
        default_module,
    )

    try:
        default_module()
    except Pkcs11ModuleError:
        return f"p11-kit's proxy module is not installed: apt-get install {DEBIAN_PACKAGES}"
    return None


def make_token(workdir: Path) -> tuple[DemoToken, pki.PublicKey]:
    """Init a token in ``workdir``, generate a P-256 key on it; its token and public key."""
    import pkcs11
    from pkcs11 import Attribute, KeyType
    from pkcs11.util.ec import encode_named_curve_parameters

    from credential_sidecar.upstream.hardware.pkcs11_key import public_key_from_object
    from credential_sidecar.upstream.hardware.pkcs11_token import default_module

    tokens = workdir / "softhsm-tokens"
    tokens.mkdir(mode=0o700)
    conf = workdir / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\n"
                    "log.level = ERROR\nslots.removable = false\n")
    os.environ["SOFTHSM2_CONF"] = str(conf)  # before the module's first C_Initialize
    pin, so_pin = secrets.token_hex(8), secrets.token_hex(8)
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", TOKEN,
                    "--pin", pin, "--so-pin", so_pin], check=True, capture_output=True)
    pin_file = workdir / "pin"
    atomic_write(pin_file, pin.encode() + b"\n", mode=0o600)
    lib = pkcs11.lib(str(default_module()))
    with lib.get_token(token_label=TOKEN).open(rw=True, user_pin=pin) as session:
        params = session.create_domain_parameters(
            KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")},
            local=True)
        public, _ = params.generate_keypair(
            id=b"\x01", label=OBJECT, store=True,
            private_template={Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False,
                              Attribute.SIGN: True})
        key = public_key_from_object(public)
    if key is None:
        raise RuntimeError("SoftHSM returned a public key this daemon cannot read")
    return DemoToken(conf, pin_file, TOKEN, OBJECT), key
