"""Build a SoftHSM2 token in a temp dir: keys generated on it (non-extractable), certs imported.

The token is reached through p11-kit's proxy, as in production: p11-kit loads SoftHSM from
/usr/share/p11-kit/modules/softhsm2.module, and SoftHSM reads SOFTHSM2_CONF when initialised.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pkcs11
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pkcs11 import Attribute, KeyType
from pkcs11.util.ec import encode_named_curve_parameters
from pkcs11.util.x509 import decode_x509_certificate

from credential_sidecar.upstream.hardware.pkcs11_key import public_key_from_object
from credential_sidecar.upstream.hardware.pkcs11_token import default_module
from tests.helpers.hwkeys import Issuer, make_intermediate, make_leaf, make_root

USER_PIN = "4711-good-pin"  # the right PIN is no secret in tests; the canary is the wrong one
SO_PIN = "so-pin-12345678"
SOFTHSM_LIBS = ("/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
                "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
                "/usr/lib/softhsm/libsofthsm2.so")
KEYS = {  # label: (id, kind, always_authenticate)
    "rsa": (b"\x01", "rsa", False),
    "p256": (b"\x02", "secp256r1", False),
    "p384": (b"\x03", "secp384r1", False),
    "p256-always": (b"\x04", "secp256r1", True),
}


@dataclass
class SoftHsm:
    dir: Path
    module: Path  # p11-kit proxy
    softhsm_lib: Path
    pin_file: Path
    token: str
    pin_token: str  # a second token, for PIN failure tests (its login state is separate)
    root: Issuer
    intermediate: Issuer
    certs: dict[str, x509.Certificate] = field(default_factory=dict)
    unrelated: list[x509.Certificate] = field(default_factory=list)

    def uri(self, label: str, *, token: str | None = None) -> str:
        return f"pkcs11:token={token or self.token};object={label};type=private" \
               f"?pin-source=file:{self.pin_file}"


_BUILT: SoftHsm | None = None


def shared(tmp_root: Path) -> SoftHsm:
    """One token set per test process: SoftHSM reads SOFTHSM2_CONF once, at its first
    C_Initialize, and a module loads once per process, so a second set would be invisible."""
    global _BUILT
    if _BUILT is None:
        reason = missing_tools()
        if reason:
            raise RuntimeError(f"{reason}; tests/setup/hwkeys.sh installs it")
        _BUILT = build(tmp_root)
    return _BUILT


def missing_tools() -> str | None:
    if shutil.which("softhsm2-util") is None:
        return "softhsm2-util not installed (apt-get install softhsm2)"
    if not any(Path(p).exists() for p in SOFTHSM_LIBS):
        return "libsofthsm2.so not installed (apt-get install softhsm2)"
    if not Path("/usr/share/p11-kit/modules/softhsm2.module").exists():
        return "SoftHSM is not registered with p11-kit (/usr/share/p11-kit/modules/softhsm2.module)"
    try:
        default_module()
    except Exception as exc:
        return str(exc)
    return None


def write_secret(path: Path, text: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
    return path


def _generate(session: pkcs11.Session, label: str, ident: bytes, kind: str, always: bool) -> None:
    private = {Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False, Attribute.SIGN: True,
               Attribute.ALWAYS_AUTHENTICATE: always}
    if kind == "rsa":
        session.generate_keypair(KeyType.RSA, 2048, id=ident, label=label, store=True,
                                 private_template=private)
        return
    params = session.create_domain_parameters(
        KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters(kind)}, local=True)
    params.generate_keypair(id=ident, label=label, store=True, private_template=private)


def _import_cert(session: pkcs11.Session, cert: x509.Certificate, label: str,
                 ident: bytes) -> None:
    attrs = decode_x509_certificate(cert.public_bytes(serialization.Encoding.DER))
    attrs.update({Attribute.LABEL: label, Attribute.ID: ident, Attribute.TOKEN: True})
    session.create_object(attrs)


def build(tmp: Path) -> SoftHsm:
    """Init two tokens, generate keys on 'sidecar', issue and import certs (+ unrelated ones)."""
    (tmp / "tokens").mkdir()
    conf = tmp / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tmp / 'tokens'}\nobjectstore.backend = file\n"
                    "log.level = ERROR\nslots.removable = false\n")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    for label in ("sidecar", "pintest"):
        subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", label,
                        "--pin", USER_PIN, "--so-pin", SO_PIN],
                       check=True, capture_output=True)
    root = make_root("Sidecar Test Root")
    inter = make_intermediate(root, "Sidecar Test Intermediate")
    other_root = make_root("Unrelated Root")
    # Same subject name as our intermediate, other key: only a signature check tells them apart.
    lookalike = make_intermediate(other_root, "Sidecar Test Intermediate")
    hsm = SoftHsm(tmp, default_module(),
                  Path(next(p for p in SOFTHSM_LIBS if Path(p).exists())),
                  write_secret(tmp / "pin", USER_PIN), "sidecar", "pintest", root, inter)
    lib = pkcs11.lib(str(hsm.module))
    with lib.get_token(token_label="sidecar").open(rw=True, user_pin=USER_PIN) as session:
        for label, (ident, kind, always) in KEYS.items():
            _generate(session, label, ident, kind, always)
            pub = next(session.get_objects({Attribute.CLASS: pkcs11.ObjectClass.PUBLIC_KEY,
                                            Attribute.ID: ident}))
            public = public_key_from_object(pub)
            assert public is not None
            hsm.certs[label] = make_leaf(inter, f"sidecar {label}", public)
            _import_cert(session, hsm.certs[label], label, ident)
        hsm.unrelated = [other_root.cert, lookalike.cert,
                         make_leaf(lookalike, "someone else", other_root.key.public_key())]
        _import_cert(session, inter.cert, "intermediate", b"\xaa")
        for n, cert in enumerate(hsm.unrelated):
            _import_cert(session, cert, f"unrelated-{n}", bytes([0xb0 + n]))
    with lib.get_token(token_label="pintest").open(rw=True, user_pin=USER_PIN) as session:
        _generate(session, "p256", b"\x02", "secp256r1", False)
    return hsm


def close_sessions_behind_back(hsm: SoftHsm, token: str) -> None:
    """C_CloseAllSessions straight into SoftHSM, under p11-kit and python-pkcs11."""
    lib = ctypes.CDLL(str(hsm.softhsm_lib))
    ulong = ctypes.c_ulong
    # CKR_CRYPTOKI_ALREADY_INITIALIZED proves this is the instance p11-kit loaded for us.
    assert lib.C_Initialize(None) == 0x191
    count = ulong(0)
    assert lib.C_GetSlotList(ctypes.c_ubyte(1), None, ctypes.byref(count)) == 0
    slots = (ulong * count.value)()
    assert lib.C_GetSlotList(ctypes.c_ubyte(1), slots, ctypes.byref(count)) == 0
    for slot in slots:
        info = ctypes.create_string_buffer(1024)  # CK_TOKEN_INFO; the label is its first field
        assert lib.C_GetTokenInfo(ulong(slot), info) == 0
        if info.raw[:32].rstrip(b" ").decode() == token:
            assert lib.C_CloseAllSessions(ulong(slot)) == 0
            return
    raise AssertionError(f"token {token} not found in SoftHSM")
