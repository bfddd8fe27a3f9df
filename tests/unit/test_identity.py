"""Loading the Roles Anywhere identity from every file layout operators actually have."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from credential_sidecar.devtools import pki
from credential_sidecar.files import FileError, check_private_file
from credential_sidecar.upstream import identity_source as identity_mod
from credential_sidecar.upstream import sigv4_x509
from credential_sidecar.upstream.certificate import Identity, load_identity
from credential_sidecar.upstream.identity_source import IdentitySource

PEM = serialization.Encoding.PEM
DER = serialization.Encoding.DER
PKCS8 = serialization.PrivateFormat.PKCS8
TRADITIONAL = serialization.PrivateFormat.TraditionalOpenSSL
PASSPHRASE = b"correct horse battery staple"


@pytest.fixture(scope="module")
def ca() -> pki.Issued:
    return pki.make_ca("test root", "p256")


@pytest.fixture(scope="module")
def intermediate(ca: pki.Issued) -> pki.Issued:
    return pki.make_intermediate(ca, "test intermediate", "p256")


@pytest.fixture(scope="module")
def rsa_leaf(intermediate: pki.Issued) -> pki.Issued:
    return pki.make_leaf(intermediate, "rsa leaf", "rsa")


@pytest.fixture(scope="module")
def ec_leaf(intermediate: pki.Issued) -> pki.Issued:
    return pki.make_leaf(intermediate, "ec leaf", "p256")


def key_bytes(
    issued: pki.Issued,
    fmt: serialization.PrivateFormat = PKCS8,
    encoding: serialization.Encoding = PEM,
    passphrase: bytes | None = None,
) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    return issued.key.private_bytes(encoding, fmt, encryption)


def write_pair(
    tmp_path: Path, issued: pki.Issued, key: bytes | None = None, *, stem: str = "leaf"
) -> tuple[Path, Path]:
    cert = tmp_path / f"{stem}.crt"
    cert.write_bytes(issued.cert_pem())
    key_path = pki.write_private(tmp_path / f"{stem}.key", key or key_bytes(issued))
    return cert, key_path


def p12_bytes(
    leaf: pki.Issued, cas: list[x509.Certificate], password: bytes | None = None
) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return pkcs12.serialize_key_and_certificates(
        b"leaf", leaf.key, leaf.certificate, cas, encryption
    )


def error_of(call: Callable[[], object]) -> str:
    with pytest.raises(FileError) as info:
        call()
    return str(info.value)


# --- key formats -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("leaf_name", "fmt", "encoding", "marker"),
    [
        ("rsa_leaf", TRADITIONAL, PEM, b"BEGIN RSA PRIVATE KEY"),
        ("ec_leaf", TRADITIONAL, PEM, b"BEGIN EC PRIVATE KEY"),
        ("rsa_leaf", PKCS8, PEM, b"BEGIN PRIVATE KEY"),
        ("ec_leaf", PKCS8, PEM, b"BEGIN PRIVATE KEY"),
        ("rsa_leaf", TRADITIONAL, DER, None),
        ("ec_leaf", TRADITIONAL, DER, None),
        ("rsa_leaf", PKCS8, DER, None),
        ("ec_leaf", PKCS8, DER, None),
    ],
)
def test_unencrypted_key_formats_load(
    tmp_path: Path,
    request: pytest.FixtureRequest,
    leaf_name: str,
    fmt: serialization.PrivateFormat,
    encoding: serialization.Encoding,
    marker: bytes | None,
) -> None:
    leaf: pki.Issued = request.getfixturevalue(leaf_name)
    raw = key_bytes(leaf, fmt, encoding)
    if marker is not None:
        assert marker in raw  # the test exercises the format it claims to
    cert, key = write_pair(tmp_path, leaf, raw)

    loaded = load_identity(certificate=cert, private_key=key)

    assert loaded.serial == leaf.certificate.serial_number
    assert loaded.certificate == leaf.certificate
    assert loaded.chain == ()
    assert loaded.algorithm == sigv4_x509.algorithm_for(leaf.key)
    assert loaded.private_key.private_numbers() == leaf.key.private_numbers()


@pytest.mark.parametrize("ending", [b"", b"\n", b"\r\n"])
def test_encrypted_pkcs8_with_passphrase_file(
    tmp_path: Path, ec_leaf: pki.Issued, ending: bytes
) -> None:
    raw = key_bytes(ec_leaf, passphrase=PASSPHRASE)
    assert b"BEGIN ENCRYPTED PRIVATE KEY" in raw
    cert, key = write_pair(tmp_path, ec_leaf, raw)
    passfile = pki.write_private(tmp_path / "pass", PASSPHRASE + ending)

    loaded = load_identity(certificate=cert, private_key=key, passphrase_file=passfile)

    assert loaded.private_key.private_numbers() == ec_leaf.key.private_numbers()


def test_passphrase_file_loses_only_one_line_ending(tmp_path: Path, ec_leaf: pki.Issued) -> None:
    """A passphrase that itself ends in a newline survives the editor's newline being stripped."""
    raw = key_bytes(ec_leaf, passphrase=b"ends-with-newline\n")
    cert, key = write_pair(tmp_path, ec_leaf, raw)
    passfile = pki.write_private(tmp_path / "pass", b"ends-with-newline\n\n")

    loaded = load_identity(certificate=cert, private_key=key, passphrase_file=passfile)

    assert loaded.serial == ec_leaf.certificate.serial_number


def test_encrypted_der_and_legacy_pem_keys(tmp_path: Path, rsa_leaf: pki.Issued) -> None:
    passfile = pki.write_private(tmp_path / "pass", PASSPHRASE + b"\n")
    for name, raw in [
        ("der", key_bytes(rsa_leaf, PKCS8, DER, PASSPHRASE)),
        ("legacy", key_bytes(rsa_leaf, TRADITIONAL, PEM, PASSPHRASE)),
    ]:
        cert, key = write_pair(tmp_path, rsa_leaf, raw, stem=name)
        loaded = load_identity(certificate=cert, private_key=key, passphrase_file=passfile)
        assert loaded.private_key.private_numbers() == rsa_leaf.key.private_numbers(), name


def test_encrypted_key_without_passphrase_file(tmp_path: Path, ec_leaf: pki.Issued) -> None:
    cert, key = write_pair(tmp_path, ec_leaf, key_bytes(ec_leaf, passphrase=PASSPHRASE))

    message = error_of(lambda: load_identity(certificate=cert, private_key=key))

    assert str(key) in message
    assert "private_key_passphrase_file" in message


def test_wrong_passphrase_names_the_file_not_the_passphrase(
    tmp_path: Path, ec_leaf: pki.Issued
) -> None:
    cert, key = write_pair(tmp_path, ec_leaf, key_bytes(ec_leaf, passphrase=PASSPHRASE))
    wrong = b"hunter2-wrong-passphrase"
    passfile = pki.write_private(tmp_path / "pass", wrong + b"\n")

    message = error_of(
        lambda: load_identity(certificate=cert, private_key=key, passphrase_file=passfile)
    )

    assert str(passfile) in message
    assert str(key) in message
    assert wrong.decode() not in message
    assert PASSPHRASE.decode() not in message


def test_empty_passphrase_file(tmp_path: Path, ec_leaf: pki.Issued) -> None:
    cert, key = write_pair(tmp_path, ec_leaf, key_bytes(ec_leaf, passphrase=PASSPHRASE))
    passfile = pki.write_private(tmp_path / "pass", b"\n")

    message = error_of(
        lambda: load_identity(certificate=cert, private_key=key, passphrase_file=passfile)
    )

    assert str(passfile) in message
    assert "empty" in message


def test_p384(tmp_path: Path, intermediate: pki.Issued) -> None:
    leaf = pki.make_leaf(intermediate, "p384 leaf", "p384")
    cert, key = write_pair(tmp_path, leaf, key_bytes(leaf, TRADITIONAL))

    loaded = load_identity(certificate=cert, private_key=key)

    assert isinstance(loaded.private_key, ec.EllipticCurvePrivateKey)
    assert loaded.private_key.curve.name == "secp384r1"
    assert loaded.algorithm == sigv4_x509.EC_ALGORITHM


# --- refused keys and certificates -----------------------------------------------------------


def self_signed(key: object, *, ca: bool = False) -> x509.Certificate:
    """A leaf for any key type: pki only makes RSA and EC ones."""
    signing = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "odd")])
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())  # type: ignore[attr-defined]
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(signing, hashes.SHA256())
    )


@pytest.mark.parametrize(
    ("make_key", "reason"),
    [
        (lambda: rsa.generate_private_key(65537, 1024), "RSA 1024-bit"),
        (lambda: ec.generate_private_key(ec.SECP521R1()), "EC secp521r1"),
        (lambda: ed25519.Ed25519PrivateKey.generate(), "Ed25519"),
    ],
)
def test_unsupported_keys_refused_with_reason(
    tmp_path: Path, make_key: Callable[[], object], reason: str
) -> None:
    key_obj = make_key()
    cert = tmp_path / "odd.crt"
    cert.write_bytes(self_signed(key_obj).public_bytes(PEM))
    raw = key_obj.private_bytes(PEM, PKCS8, serialization.NoEncryption())  # type: ignore[attr-defined]
    key = pki.write_private(tmp_path / "odd.key", raw)

    message = error_of(lambda: load_identity(certificate=cert, private_key=key))

    assert reason in message
    assert "P-256" in message  # says what would be accepted
    if reason == "Ed25519":  # the certificate's key type is refused before the key is read
        assert str(cert) in message
    else:
        assert str(key) in message


def test_ca_certificate_refused_as_leaf(tmp_path: Path, ca: pki.Issued) -> None:
    cert, key = write_pair(tmp_path, ca)

    message = error_of(lambda: load_identity(certificate=cert, private_key=key))

    assert str(cert) in message
    assert "CA" in message


def test_mismatched_key(tmp_path: Path, ec_leaf: pki.Issued, intermediate: pki.Issued) -> None:
    other = pki.make_leaf(intermediate, "other", "p256")
    cert = tmp_path / "x.crt"
    cert.write_bytes(ec_leaf.cert_pem())
    key = pki.write_private(tmp_path / "x.key", other.key_pem())

    message = error_of(lambda: load_identity(certificate=cert, private_key=key))

    assert message == f"private key {key} does not match certificate {cert}"


def test_expired_certificate_loads_and_exposes_not_after(
    tmp_path: Path, intermediate: pki.Issued
) -> None:
    ended = datetime(2020, 1, 2, 3, 4, 5, tzinfo=UTC)
    leaf = pki.make_leaf(
        intermediate, "expired", "p256", not_before=ended - timedelta(days=1), not_after=ended
    )
    cert, key = write_pair(tmp_path, leaf)

    loaded = load_identity(certificate=cert, private_key=key)

    assert loaded.not_after == ended
    assert loaded.not_after.tzinfo is not None


def test_key_file_holding_a_certificate(tmp_path: Path, ec_leaf: pki.Issued) -> None:
    cert = tmp_path / "leaf.crt"
    cert.write_bytes(ec_leaf.cert_pem())
    key = pki.write_private(tmp_path / "leaf.key", ec_leaf.cert_pem())

    message = error_of(lambda: load_identity(certificate=cert, private_key=key))

    assert str(key) in message
    assert "CERTIFICATE" in message


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "is empty"),
        (b"-----BEGIN CERTIFICATE-----\nMIIB", "malformed PEM certificate"),
        (b"\x30\x03junk", "neither a PEM or DER X.509 certificate nor a PKCS#12 bundle"),
    ],
)
def test_broken_certificate_file(
    tmp_path: Path, ec_leaf: pki.Issued, content: bytes, reason: str
) -> None:
    cert = tmp_path / "leaf.crt"
    cert.write_bytes(content)
    cert.chmod(0o644)
    key = pki.write_private(tmp_path / "leaf.key", ec_leaf.key_pem())

    message = error_of(lambda: load_identity(certificate=cert, private_key=key))

    assert message.startswith(f"certificate {cert} ")
    assert reason in message


def test_garbage_key_is_not_echoed(tmp_path: Path, ec_leaf: pki.Issued) -> None:
    cert = tmp_path / "leaf.crt"
    cert.write_bytes(ec_leaf.cert_pem())
    secret = (
        b"-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1tYXRlcmlhbA==\n-----END PRIVATE KEY-----\n"
    )
    key = pki.write_private(tmp_path / "leaf.key", secret)

    message = error_of(lambda: load_identity(certificate=cert, private_key=key))

    assert str(key) in message
    assert "c2VjcmV0" not in message


# --- certificate layouts ---------------------------------------------------------------------


def test_der_certificate(tmp_path: Path, rsa_leaf: pki.Issued) -> None:
    cert = tmp_path / "leaf.der"
    cert.write_bytes(rsa_leaf.certificate.public_bytes(DER))
    key = pki.write_private(tmp_path / "leaf.key", rsa_leaf.key_pem())

    loaded = load_identity(certificate=cert, private_key=key)

    assert loaded.certificate == rsa_leaf.certificate


def test_pem_leaf_followed_by_chain(
    tmp_path: Path, ec_leaf: pki.Issued, intermediate: pki.Issued, ca: pki.Issued
) -> None:
    cert, key = write_pair(tmp_path, ec_leaf)
    cert.write_bytes(ec_leaf.cert_pem() + intermediate.cert_pem() + ca.cert_pem())

    loaded = load_identity(certificate=cert, private_key=key)

    assert loaded.certificate == ec_leaf.certificate
    assert loaded.chain == (intermediate.certificate, ca.certificate)


def test_intermediates_file_follows_certificate_file_chain(
    tmp_path: Path, ec_leaf: pki.Issued, intermediate: pki.Issued, ca: pki.Issued
) -> None:
    second = pki.make_intermediate(ca, "second intermediate", "rsa")
    cert, key = write_pair(tmp_path, ec_leaf)
    cert.write_bytes(ec_leaf.cert_pem() + intermediate.cert_pem())
    bundle = tmp_path / "chain.pem"
    bundle.write_bytes(second.cert_pem() + ca.cert_pem())
    bundle.chmod(0o644)  # certificates may be world-readable

    loaded = load_identity(certificate=cert, private_key=key, intermediates=bundle)

    assert loaded.chain == (intermediate.certificate, second.certificate, ca.certificate)


def test_chain_drops_leaf_and_repeats(
    tmp_path: Path, ec_leaf: pki.Issued, intermediate: pki.Issued
) -> None:
    """A full-chain file given as both certificate and intermediates sends each cert once."""
    cert, key = write_pair(tmp_path, ec_leaf)
    cert.write_bytes(ec_leaf.cert_pem() + intermediate.cert_pem())

    loaded = load_identity(certificate=cert, private_key=key, intermediates=cert)

    assert loaded.chain == (intermediate.certificate,)


def test_der_intermediate(tmp_path: Path, ec_leaf: pki.Issued, intermediate: pki.Issued) -> None:
    cert, key = write_pair(tmp_path, ec_leaf)
    bundle = tmp_path / "chain.der"
    bundle.write_bytes(intermediate.certificate.public_bytes(DER))

    loaded = load_identity(certificate=cert, private_key=key, intermediates=bundle)

    assert loaded.chain == (intermediate.certificate,)


def test_intermediates_file_without_certificates(tmp_path: Path, ec_leaf: pki.Issued) -> None:
    cert, key = write_pair(tmp_path, ec_leaf)
    bundle = tmp_path / "chain.pem"
    bundle.write_bytes(b"not a certificate at all")

    message = error_of(
        lambda: load_identity(certificate=cert, private_key=key, intermediates=bundle)
    )

    assert str(bundle) in message


def test_fingerprint_tracks_leaf_and_chain(
    tmp_path: Path, ec_leaf: pki.Issued, intermediate: pki.Issued
) -> None:
    cert, key = write_pair(tmp_path, ec_leaf)
    bare = load_identity(certificate=cert, private_key=key)
    again = load_identity(certificate=cert, private_key=key)
    cert.write_bytes(ec_leaf.cert_pem() + intermediate.cert_pem())
    chained = load_identity(certificate=cert, private_key=key)

    assert bare.fingerprint() == again.fingerprint()
    assert len(bare.fingerprint()) == 64
    assert bare.fingerprint() != chained.fingerprint()


def test_identity_repr_hides_the_key(tmp_path: Path, ec_leaf: pki.Issued) -> None:
    cert, key = write_pair(tmp_path, ec_leaf)
    loaded = load_identity(certificate=cert, private_key=key)

    assert "private_key" not in repr(loaded)
    assert isinstance(loaded, Identity)


# --- PKCS#12 ---------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".p12", ".pfx", ".P12"])
def test_pkcs12_without_password(
    tmp_path: Path, rsa_leaf: pki.Issued, intermediate: pki.Issued, suffix: str
) -> None:
    bundle = pki.write_private(
        tmp_path / f"id{suffix}", p12_bytes(rsa_leaf, [intermediate.certificate])
    )

    loaded = load_identity(certificate=bundle)

    assert loaded.certificate == rsa_leaf.certificate
    assert loaded.chain == (intermediate.certificate,)
    assert loaded.private_key.private_numbers() == rsa_leaf.key.private_numbers()


@pytest.mark.parametrize("ending", [b"", b"\n"])
def test_pkcs12_with_password(
    tmp_path: Path, ec_leaf: pki.Issued, intermediate: pki.Issued, ending: bytes
) -> None:
    bundle = pki.write_private(
        tmp_path / "id.p12", p12_bytes(ec_leaf, [intermediate.certificate], PASSPHRASE)
    )
    passfile = pki.write_private(tmp_path / "pass", PASSPHRASE + ending)

    loaded = load_identity(certificate=bundle, passphrase_file=passfile)

    assert loaded.serial == ec_leaf.certificate.serial_number
    assert loaded.chain == (intermediate.certificate,)


def test_pkcs12_leaf_found_among_extra_certs(
    tmp_path: Path, ec_leaf: pki.Issued, intermediate: pki.Issued
) -> None:
    """Some tools store the leaf beside the CAs instead of as the bundle's own certificate."""
    raw = pkcs12.serialize_key_and_certificates(
        b"leaf",
        ec_leaf.key,
        None,
        [intermediate.certificate, ec_leaf.certificate],
        serialization.NoEncryption(),
    )
    bundle = pki.write_private(tmp_path / "id.pfx", raw)

    loaded = load_identity(certificate=bundle)

    assert loaded.certificate == ec_leaf.certificate
    assert loaded.chain == (intermediate.certificate,)


def test_unencrypted_pkcs12_with_a_passphrase_file(tmp_path: Path, ec_leaf: pki.Issued) -> None:
    bundle = pki.write_private(tmp_path / "id.p12", p12_bytes(ec_leaf, []))
    passfile = pki.write_private(tmp_path / "pass", PASSPHRASE)

    loaded = load_identity(certificate=bundle, passphrase_file=passfile)

    assert loaded.certificate == ec_leaf.certificate


def test_pkcs12_without_the_keys_certificate(
    tmp_path: Path, ec_leaf: pki.Issued, intermediate: pki.Issued
) -> None:
    other = pki.make_leaf(intermediate, "other", "p256")
    raw = pkcs12.serialize_key_and_certificates(
        b"leaf", ec_leaf.key, None, [other.certificate], serialization.NoEncryption()
    )
    bundle = pki.write_private(tmp_path / "id.p12", raw)

    message = error_of(lambda: load_identity(certificate=bundle))

    assert str(bundle) in message
    assert "no certificate matching" in message


def test_pkcs12_detected_by_content(tmp_path: Path, ec_leaf: pki.Issued) -> None:
    bundle = pki.write_private(tmp_path / "id.crt", p12_bytes(ec_leaf, []))

    loaded = load_identity(certificate=bundle)

    assert loaded.certificate == ec_leaf.certificate


def test_pkcs12_detected_by_content_still_refused_when_readable(
    tmp_path: Path, ec_leaf: pki.Issued
) -> None:
    bundle = tmp_path / "id.crt"
    bundle.write_bytes(p12_bytes(ec_leaf, []))
    bundle.chmod(0o644)

    message = error_of(lambda: load_identity(certificate=bundle))

    assert f"PKCS#12 bundle {bundle} has mode 0644" in message


def test_pkcs12_with_a_private_key_configured(tmp_path: Path, ec_leaf: pki.Issued) -> None:
    bundle = pki.write_private(tmp_path / "id.p12", p12_bytes(ec_leaf, []))
    key = pki.write_private(tmp_path / "id.key", ec_leaf.key_pem())

    message = error_of(lambda: load_identity(certificate=bundle, private_key=key))

    assert str(bundle) in message
    assert f"remove private_key ({key})" in message


def test_encrypted_pkcs12_without_passphrase_file(tmp_path: Path, ec_leaf: pki.Issued) -> None:
    bundle = pki.write_private(tmp_path / "id.p12", p12_bytes(ec_leaf, [], PASSPHRASE))

    message = error_of(lambda: load_identity(certificate=bundle))

    assert str(bundle) in message
    assert "private_key_passphrase_file" in message


def test_pkcs12_wrong_password(tmp_path: Path, ec_leaf: pki.Issued) -> None:
    bundle = pki.write_private(tmp_path / "id.p12", p12_bytes(ec_leaf, [], PASSPHRASE))
    wrong = b"definitely-not-it"
    passfile = pki.write_private(tmp_path / "pass", wrong)

    message = error_of(lambda: load_identity(certificate=bundle, passphrase_file=passfile))

    assert str(bundle) in message
    assert str(passfile) in message
    assert wrong.decode() not in message


# --- file checks -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o660, 0o601])
def test_check_private_file_refuses_group_or_other_access(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "reports.key"
    path.write_bytes(b"x")
    path.chmod(mode)

    message = error_of(lambda: check_private_file(path, "private key"))

    assert message.startswith(f"private key {path} has mode {mode:04o}: it must not be ")
    assert message.endswith(f"by group or others; run: chmod 600 {path}")


def test_check_private_file_message_matches_ssh_style(tmp_path: Path) -> None:
    path = tmp_path / "reports.key"
    path.write_bytes(b"x")
    path.chmod(0o644)

    assert error_of(lambda: check_private_file(path, "private key")) == (
        f"private key {path} has mode 0644: it must not be readable by group or others; "
        f"run: chmod 600 {path}"
    )


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o700])
def test_check_private_file_accepts_owner_only(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "reports.key"
    path.write_bytes(b"x")
    path.chmod(mode)

    check_private_file(path, "private key")  # must not raise


def test_check_private_file_missing_and_not_regular(tmp_path: Path) -> None:
    missing = tmp_path / "nope.key"
    directory = tmp_path / "dir.key"
    directory.mkdir(mode=0o700)

    assert str(missing) in error_of(lambda: check_private_file(missing, "private key"))
    message = error_of(lambda: check_private_file(directory, "private key"))
    assert str(directory) in message
    assert "not a regular file" in message


def test_world_readable_key_refused_before_use(tmp_path: Path, ec_leaf: pki.Issued) -> None:
    cert, key = write_pair(tmp_path, ec_leaf)
    key.chmod(0o644)

    message = error_of(lambda: load_identity(certificate=cert, private_key=key))

    assert f"private key {key} has mode 0644" in message


def test_world_readable_passphrase_file_refused(tmp_path: Path, ec_leaf: pki.Issued) -> None:
    cert, key = write_pair(tmp_path, ec_leaf, key_bytes(ec_leaf, passphrase=PASSPHRASE))
    passfile = tmp_path / "pass"
    passfile.write_bytes(PASSPHRASE)
    passfile.chmod(0o644)

    message = error_of(
        lambda: load_identity(certificate=cert, private_key=key, passphrase_file=passfile)
    )

    assert f"{passfile} has mode 0644" in message
    assert PASSPHRASE.decode() not in message


def test_readable_passphrase_file_refused_even_if_key_is_plain(
    tmp_path: Path, ec_leaf: pki.Issued
) -> None:
    """The passphrase leaked either way: say so instead of ignoring the file."""
    cert, key = write_pair(tmp_path, ec_leaf)
    passfile = tmp_path / "pass"
    passfile.write_bytes(PASSPHRASE)
    passfile.chmod(0o640)

    message = error_of(
        lambda: load_identity(certificate=cert, private_key=key, passphrase_file=passfile)
    )

    assert f"private key passphrase file {passfile} has mode 0640" in message


def test_world_readable_pkcs12_refused(tmp_path: Path, ec_leaf: pki.Issued) -> None:
    bundle = tmp_path / "id.p12"
    bundle.write_bytes(p12_bytes(ec_leaf, []))
    bundle.chmod(0o644)

    message = error_of(lambda: load_identity(certificate=bundle))

    assert f"PKCS#12 bundle {bundle} has mode 0644" in message
    assert f"chmod 600 {bundle}" in message


def test_world_readable_certificate_is_fine(tmp_path: Path, ec_leaf: pki.Issued) -> None:
    cert, key = write_pair(tmp_path, ec_leaf)
    cert.chmod(0o644)

    loaded = load_identity(certificate=cert, private_key=key)

    assert loaded.serial == ec_leaf.certificate.serial_number


@pytest.mark.parametrize("which", ["certificate", "private_key", "intermediates"])
def test_missing_files_named(tmp_path: Path, ec_leaf: pki.Issued, which: str) -> None:
    cert, key = write_pair(tmp_path, ec_leaf)
    paths = {"certificate": cert, "private_key": key, "intermediates": tmp_path / "chain.pem"}
    (tmp_path / "chain.pem").write_bytes(ec_leaf.cert_pem())
    missing = tmp_path / f"missing-{which}"
    paths[which] = missing

    message = error_of(lambda: load_identity(**paths))

    assert str(missing) in message
    assert "does not exist" in message


def test_certificate_without_a_key(tmp_path: Path, ec_leaf: pki.Issued) -> None:
    cert, _ = write_pair(tmp_path, ec_leaf)

    message = error_of(lambda: load_identity(certificate=cert))

    assert str(cert) in message
    assert "private_key" in message


# --- IdentitySource --------------------------------------------------------------------------


def bump_mtime(*paths: Path) -> None:
    """Renewals within one timestamp tick must still be seen: move mtime explicitly."""
    for path in paths:
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


async def test_source_reloads_replaced_certificate_and_key(
    tmp_path: Path, ec_leaf: pki.Issued, intermediate: pki.Issued
) -> None:
    cert, key = write_pair(tmp_path, ec_leaf)
    source = IdentitySource(certificate=cert, private_key=key)
    assert source.current() is None

    first = await source.get()
    assert first.serial == ec_leaf.certificate.serial_number
    assert source.current() is first
    assert await source.get() is first  # unchanged files: the same object, no reload

    renewed = pki.make_leaf(intermediate, "renewed", "p256")
    cert.write_bytes(renewed.cert_pem())
    pki.write_private(key, renewed.key_pem())
    bump_mtime(cert, key)

    second = await source.get()
    assert second.serial == renewed.certificate.serial_number
    assert source.current() is second


async def test_source_keeps_previous_identity_when_new_file_is_garbage(
    tmp_path: Path, ec_leaf: pki.Issued
) -> None:
    cert, key = write_pair(tmp_path, ec_leaf)
    source = IdentitySource(certificate=cert, private_key=key)
    first = await source.get()

    cert.write_bytes(b"-----BEGIN CERTIFICATE-----\nhalf-writ")
    bump_mtime(cert)
    with structlog.testing.capture_logs() as logs:
        kept = await source.get()

    assert kept is first
    assert source.current() is first
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert len(warnings) == 1
    assert str(cert) in warnings[0]["error"]


async def test_source_recovers_after_garbage(
    tmp_path: Path, ec_leaf: pki.Issued, intermediate: pki.Issued
) -> None:
    cert, key = write_pair(tmp_path, ec_leaf)
    source = IdentitySource(certificate=cert, private_key=key)
    await source.get()
    cert.write_bytes(b"garbage")
    bump_mtime(cert)
    assert (await source.get()).serial == ec_leaf.certificate.serial_number

    renewed = pki.make_leaf(intermediate, "renewed", "p256")
    cert.write_bytes(renewed.cert_pem())
    pki.write_private(key, renewed.key_pem())
    bump_mtime(cert, key)

    assert (await source.get()).serial == renewed.certificate.serial_number


async def test_source_without_any_good_identity_raises(tmp_path: Path) -> None:
    cert = tmp_path / "leaf.crt"
    cert.write_bytes(b"garbage")
    key = pki.write_private(tmp_path / "leaf.key", b"garbage")
    source = IdentitySource(certificate=cert, private_key=key)

    with pytest.raises(FileError, match=str(cert)):
        await source.get()
    assert source.current() is None


async def test_source_notices_a_chmod_fix(tmp_path: Path, ec_leaf: pki.Issued) -> None:
    """Fixing a refused mode changes neither content nor mtime: the source must still look again."""
    cert, key = write_pair(tmp_path, ec_leaf)
    source = IdentitySource(certificate=cert, private_key=key)
    first = await source.get()

    key.chmod(0o644)
    bump_mtime(key)
    assert await source.get() is first  # refused, old one kept

    key.chmod(0o600)
    second = await source.get()
    assert second is not first
    assert second.serial == first.serial


async def test_source_does_not_reload_unchanged_files(
    tmp_path: Path, ec_leaf: pki.Issued, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = write_pair(tmp_path, ec_leaf)
    calls = 0
    real = identity_mod.load_identity

    def counting(**kwargs: Path | None) -> Identity:
        nonlocal calls
        calls += 1
        return real(**kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(identity_mod, "load_identity", counting)
    source = IdentitySource(certificate=cert, private_key=key)

    results = await asyncio.gather(*(source.get() for _ in range(5)))
    await source.get()
    assert calls == 1
    assert all(r is results[0] for r in results)

    cert.write_bytes(b"garbage")
    bump_mtime(cert)
    await source.get()
    await source.get()
    assert calls == 2  # a broken file is tried once per change, not on every get()
