"""Every call into tpm2-pytss, and the translation of TSS return codes into errors with a fix.

tpm2-pytss has no type information, so it is kept to this module; tpm_key.py stays typed.
It is imported lazily: the daemon runs without it unless a TPM key is configured.
"""

from __future__ import annotations

import contextlib
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from credential_sidecar.upstream.hardware.base import HardwareKeyError, PublicKey
from credential_sidecar.upstream.hardware.tss2_pem import TpmKeyFile

try:
    # No type information in tpm2-pytss (no py.typed): this module is its typed boundary.
    import tpm2_pytss as tss  # type: ignore[import-untyped,import-not-found,unused-ignore]
    from tpm2_pytss.constants import (  # type: ignore[import-untyped,import-not-found,unused-ignore]
        ESYS_TR,
    )
except ImportError:  # pragma: no cover - depends on the install
    tss = None

_TCTI_LAYER = 10 << 16
_RC_INITIALIZE, _RC_REFERENCE_H0, _RC_HANDLE = 0x100, 0x910, 0x08B
_RC_AUTH_FAIL, _RC_BAD_AUTH, _RC_LOCKOUT, _RC_INTEGRITY = 0x08E, 0x0A2, 0x921, 0x09F
_RC_OBJECT_MEMORY = 0x902
_HIERARCHIES = {0x40000001: "RH_OWNER", 0x4000000B: "RH_ENDORSEMENT",
                0x4000000C: "RH_PLATFORM", 0x40000007: "RH_NULL"}


class TpmError(HardwareKeyError):
    """A TPM failure, described with the key and the fix."""


class TpmAuthError(TpmError):
    """The key's (or parent's) auth value was rejected."""


class TpmKeyNotFoundError(TpmError):
    """No object at the persistent handle, or the key file belongs to another TPM/parent."""


class Reconnect(Exception):
    """The connection or our loaded objects are gone; the caller re-opens and retries once."""


def _code(exc: Exception) -> tuple[int, int]:
    rc = int(getattr(exc, "rc", 0))
    return rc, int(getattr(exc, "error", rc))


def _check(exc: Exception, what: str, auth_hint: str = "") -> Exception:
    """Map a TSS2_Exception to our error (or Reconnect)."""
    rc, error = _code(exc)
    if rc & 0xFF0000 == _TCTI_LAYER or error in (_RC_INITIALIZE, _RC_REFERENCE_H0):
        return Reconnect(f"TPM connection failed: {exc}")
    if error in (_RC_AUTH_FAIL, _RC_BAD_AUTH):
        return TpmAuthError(f"{what}: authorization failed ({exc}): {auth_hint or 'check auth'}")
    if error == _RC_LOCKOUT:
        return TpmError(
            f"{what}: the TPM is in dictionary-attack lockout after failed authorizations; "
            "wait for it to recover or reset it (tpm2_dictionarylockout -c -p <lockout auth>)"
        )
    if error == _RC_OBJECT_MEMORY:
        return TpmError(f"{what}: the TPM has no room for another loaded object; use "
                        "the kernel resource manager (device:/dev/tpmrm0) or tpm2-abrmd")
    return TpmError(f"{what}: {exc} (rc {rc:#x})")


def open_esapi(tcti: str) -> Any:
    if tss is None:
        raise TpmError("TPM keys need tpm2-pytss: pip install tpm2-pytss (building it needs "
                       "apt-get install libtss2-dev pkg-config build-essential)")
    try:
        return tss.ESAPI(tcti)
    except Exception as exc:
        raise TpmError(
            f"cannot open the TPM via TCTI {tcti!r}: {exc}. For a hardware TPM check that "
            "/dev/tpmrm0 exists and the service has DeviceAllow=/dev/tpmrm0 rw and "
            "SupplementaryGroups=tss; for swtpm use tpm_tcti = 'swtpm:host=127.0.0.1,port=2321'"
        ) from None


def close(ctx: Any) -> None:
    if ctx is not None:
        with contextlib.suppress(Exception):  # a broken connection: nothing left to release
            ctx.close()


def set_auth(ctx: Any, handle: Any, auth: bytes) -> None:
    ctx.tr_set_auth(handle, auth)


def _primary(ctx: Any, hierarchy: int, rsa_template: bool, parent_auth: bytes) -> Any:
    """The storage primary tpm2-tss-engine/tpm2-openssl derive (same template, same key)."""
    attrs = (tss.TPMA_OBJECT.USERWITHAUTH | tss.TPMA_OBJECT.RESTRICTED | tss.TPMA_OBJECT.DECRYPT
             | tss.TPMA_OBJECT.NODA | tss.TPMA_OBJECT.FIXEDTPM | tss.TPMA_OBJECT.FIXEDPARENT
             | tss.TPMA_OBJECT.SENSITIVEDATAORIGIN)
    sym = tss.TPMT_SYM_DEF_OBJECT(algorithm=tss.TPM2_ALG.AES,
                                  keyBits=tss.TPMU_SYM_KEY_BITS(aes=128),
                                  mode=tss.TPMU_SYM_MODE(aes=tss.TPM2_ALG.CFB))
    if rsa_template:
        params = tss.TPMU_PUBLIC_PARMS(rsaDetail=tss.TPMS_RSA_PARMS(
            symmetric=sym, scheme=tss.TPMT_RSA_SCHEME(scheme=tss.TPM2_ALG.NULL),
            keyBits=2048, exponent=0))
        kind = tss.TPM2_ALG.RSA
    else:
        params = tss.TPMU_PUBLIC_PARMS(eccDetail=tss.TPMS_ECC_PARMS(
            symmetric=sym, scheme=tss.TPMT_ECC_SCHEME(scheme=tss.TPM2_ALG.NULL),
            curveID=tss.TPM2_ECC.NIST_P256, kdf=tss.TPMT_KDF_SCHEME(scheme=tss.TPM2_ALG.NULL)))
        kind = tss.TPM2_ALG.ECC
    template = tss.TPMT_PUBLIC(type=kind, nameAlg=tss.TPM2_ALG.SHA256, objectAttributes=attrs,
                               authPolicy=b"", parameters=params)
    hier = getattr(ESYS_TR, _HIERARCHIES[hierarchy])
    ctx.tr_set_auth(hier, parent_auth)
    handle, *_ = ctx.create_primary(tss.TPM2B_SENSITIVE_CREATE(),
                                    tss.TPM2B_PUBLIC(publicArea=template), hier)
    return handle


def load_keyfile(ctx: Any, key: TpmKeyFile, parent_auth: bytes, what: str) -> Any:
    """Load a TSS2 key under its parent: a persistent key, or a primary re-derived on the spot."""
    try:
        public, _ = tss.TPM2B_PUBLIC.unmarshal(key.public)
        private, _ = tss.TPM2B_PRIVATE.unmarshal(key.private)
    except Exception as exc:
        raise TpmError(f"{what}: the key blobs do not parse ({exc})") from None
    if key.parent in _HIERARCHIES:
        # The spec's default parent is the ECC P-256 SRK; older tpm2-tss-engine keys used RSA.
        last: Exception | None = None
        for rsa_template in ([True] if key.rsa_parent else [False, True]):
            try:
                parent = _primary(ctx, key.parent, rsa_template, parent_auth)
            except Exception as exc:
                raise _check(exc, f"{what}: creating the parent primary key",
                             "the hierarchy auth was rejected: set tpm_parent_auth_file") from None
            try:
                return ctx.load(parent, private, public)
            except Exception as exc:
                if _code(exc)[1] != _RC_INTEGRITY:
                    raise _check(exc, what) from None
                last = exc
            finally:
                ctx.flush_context(parent)
        raise TpmKeyNotFoundError(
            f"{what}: this TPM cannot unwrap the key (TPM_RC_INTEGRITY: {last}); it was made "
            "by another TPM, or the TPM was cleared since"
        )
    if not 0x81000000 <= key.parent <= 0x81FFFFFF:
        raise TpmError(f"{what}: parent handle {key.parent:#x} is neither a hierarchy nor "
                       "a persistent key")
    parent = persistent(ctx, key.parent, f"{what}: parent")
    try:
        ctx.tr_set_auth(parent, parent_auth)
        return ctx.load(parent, private, public)
    except Exception as exc:
        if _code(exc)[1] == _RC_INTEGRITY:
            raise TpmKeyNotFoundError(f"{what}: parent {key.parent:#x} cannot unwrap the key "
                                      "(TPM_RC_INTEGRITY): wrong parent or another TPM") from None
        raise _check(exc, what, "set tpm_parent_auth_file") from None
    finally:
        ctx.tr_close(parent)


def persistent(ctx: Any, handle: int, what: str) -> Any:
    try:
        return ctx.tr_from_tpmpublic(handle)
    except Exception as exc:
        if _code(exc)[1] == _RC_HANDLE:
            raise TpmKeyNotFoundError(
                f"{what}: no persistent object at {handle:#010x}; list them with "
                "tpm2_getcap handles-persistent"
            ) from None
        raise _check(exc, what) from None


def public_key(ctx: Any, handle: Any, what: str) -> tuple[PublicKey, Any]:
    """The public key and the signing scheme; refuses keys SigV4-X509 cannot use."""
    try:
        area = ctx.read_public(handle)[0].publicArea
    except Exception as exc:
        raise _check(exc, what) from None
    attrs = int(area.objectAttributes)
    if not attrs & int(tss.TPMA_OBJECT.SIGN_ENCRYPT) or attrs & int(tss.TPMA_OBJECT.RESTRICTED):
        raise TpmError(f"{what}: not an unrestricted signing key ({area.objectAttributes})")
    loaded = serialization.load_der_public_key(area.to_der())
    if isinstance(loaded, rsa.RSAPublicKey):
        alg, own = tss.TPM2_ALG.RSASSA, area.parameters.rsaDetail.scheme
    elif isinstance(loaded, ec.EllipticCurvePublicKey) and loaded.curve.name in ("secp256r1",
                                                                                   "secp384r1"):
        alg, own = tss.TPM2_ALG.ECDSA, area.parameters.eccDetail.scheme
    else:
        raise TpmError(f"{what}: unsupported key type; use RSA or ECC P-256/P-384")
    if int(own.scheme) not in (int(tss.TPM2_ALG.NULL), int(alg)) or (
        int(own.scheme) == int(alg) and int(own.details.anySig.hashAlg) != int(tss.TPM2_ALG.SHA256)
    ):
        raise TpmError(f"{what}: the key is bound to another signing scheme; SigV4-X509 "
                       "needs RSASSA-SHA256 or ECDSA-SHA256 (or a NULL scheme)")
    scheme = tss.TPMT_SIG_SCHEME(scheme=alg)
    scheme.details.any.hashAlg = tss.TPM2_ALG.SHA256
    return loaded, scheme


def sign(ctx: Any, handle: Any, scheme: Any, digest: bytes, auth_hint: str, what: str) -> bytes:
    ticket = tss.TPMT_TK_HASHCHECK(tag=tss.TPM2_ST.HASHCHECK, hierarchy=tss.TPM2_RH.NULL)
    try:
        sig = ctx.sign(handle, tss.TPM2B_DIGEST(digest), scheme, ticket)
    except Exception as exc:
        raise _check(exc, what, auth_hint) from None
    if int(sig.sigAlg) == int(tss.TPM2_ALG.RSASSA):
        return bytes(sig.signature.rsassa.sig)
    return encode_dss_signature(int.from_bytes(bytes(sig.signature.ecdsa.signatureR), "big"),
                                int.from_bytes(bytes(sig.signature.ecdsa.signatureS), "big"))


def unload(ctx: Any, handle: Any, *, transient: bool) -> None:
    """Flush a loaded key (a raw swtpm has three object slots) or drop a persistent's ESYS_TR."""
    if handle is None:
        return
    with contextlib.suppress(Exception):  # connection gone: the TPM/tpmrm dropped it already
        if transient:
            ctx.flush_context(handle)
        else:
            ctx.tr_close(handle)
