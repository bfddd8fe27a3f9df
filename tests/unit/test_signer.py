from __future__ import annotations

import base64
import json
from datetime import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from credential_sidecar.devtools import pki
from credential_sidecar.upstream import sigv4_x509


def test_rsa_vector_reproduced_byte_for_byte(vectors_dir: Path) -> None:
    vec = json.loads((vectors_dir / "rsa-vector.json").read_text())
    cert = x509.load_pem_x509_certificate((vectors_dir / vec["certificate_pem_file"]).read_bytes())
    key = serialization.load_pem_private_key(
        (vectors_dir / vec["private_key_pem_file"]).read_bytes(), password=None
    )
    chain = [
        x509.load_der_x509_certificate(base64.b64decode((vectors_dir / f).read_text()))
        for f in vec["chain_der_base64_files"]
    ]
    signed = sigv4_x509.sign_request(
        method=vec["method"],
        url=vec["url"],
        headers=vec["headers"],
        body=vec["body"].encode(),
        region=vec["region"],
        service=vec["service"],
        when=datetime.fromisoformat(vec["time"].replace("Z", "+00:00")),
        certificate=cert,
        private_key=key,  # type: ignore[arg-type]
        chain=chain,
    )
    expected = vec["expected"]
    assert signed.headers["X-Amz-Date"] == expected["x-amz-date"]
    assert signed.headers["X-Amz-X509"] == expected["x-amz-x509"]
    assert signed.headers["X-Amz-X509-Chain"] == expected["x-amz-x509-chain"]
    assert signed.canonical_request == expected["canonical_request"]
    assert signed.string_to_sign == expected["string_to_sign"]
    assert signed.headers["Authorization"] == expected["authorization"]


def _verify(cert: x509.Certificate, signed: sigv4_x509.SignedRequest) -> None:
    signature = bytes.fromhex(signed.headers["Authorization"].rsplit("Signature=", 1)[1])
    public = cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(signature, signed.string_to_sign.encode(), ec.ECDSA(hashes.SHA256()))


def test_ec_vector_certificate_signature_verifies(vectors_dir: Path) -> None:
    cert = x509.load_pem_x509_certificate((vectors_dir / "cert-ec.pem").read_bytes())
    key = serialization.load_pem_private_key(
        (vectors_dir / "cert-ec-key.pem").read_bytes(), password=None
    )
    signed = sigv4_x509.sign_request(
        method="POST",
        url="https://rolesanywhere.us-east-1.amazonaws.com/sessions",
        headers={"Content-Type": "application/json"},
        body=b"{}",
        region="us-east-1",
        service="rolesanywhere",
        when=datetime.fromisoformat("2024-01-02T03:04:05+00:00"),
        certificate=cert,
        private_key=key,  # type: ignore[arg-type]
    )
    assert signed.headers["Authorization"].startswith(
        f"AWS4-X509-ECDSA-SHA256 Credential={cert.serial_number}/20240102/us-east-1/rolesanywhere/"
    )
    assert "x-amz-x509-chain" not in signed.headers["Authorization"]
    _verify(cert, signed)


@pytest.mark.parametrize("kind", ["rsa", "p256", "p384"])
def test_generated_keys_sign_and_verify(kind: str, tmp_path: Path) -> None:
    ca = pki.make_ca("test CA", key_type=kind)
    leaf = pki.make_leaf(ca, "leaf", key_type=kind)
    signed = sigv4_x509.sign_request(
        method="POST",
        url="http://127.0.0.1:8443/sessions",
        headers={"Content-Type": "application/json"},
        body=b'{"a": 1}',
        region="eu-west-1",
        service="rolesanywhere",
        when=datetime.fromisoformat("2026-11-22T10:00:00+00:00"),
        certificate=leaf.certificate,
        private_key=leaf.key,
    )
    assert signed.headers["Host"] == "127.0.0.1:8443"
    assert "host:127.0.0.1:8443\n" in signed.canonical_request
    signature = bytes.fromhex(signed.headers["Authorization"].rsplit("Signature=", 1)[1])
    public = leaf.certificate.public_key()
    message = signed.string_to_sign.encode()
    if isinstance(public, rsa.RSAPublicKey):
        assert signed.headers["Authorization"].startswith("AWS4-X509-RSA-SHA256 ")
        public.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
        with pytest.raises(InvalidSignature):
            public.verify(signature, message + b"x", padding.PKCS1v15(), hashes.SHA256())
    else:
        assert isinstance(public, ec.EllipticCurvePublicKey)
        assert signed.headers["Authorization"].startswith("AWS4-X509-ECDSA-SHA256 ")
        public.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        with pytest.raises(InvalidSignature):
            public.verify(signature, message + b"x", ec.ECDSA(hashes.SHA256()))


def test_default_port_is_left_out_of_host() -> None:
    assert sigv4_x509.host_header("https://rolesanywhere.us-east-1.amazonaws.com:443/sessions") == (
        "rolesanywhere.us-east-1.amazonaws.com"
    )
    assert sigv4_x509.host_header("http://[::1]:8080/x") == "[::1]:8080"
