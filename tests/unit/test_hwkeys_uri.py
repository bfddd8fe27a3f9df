"""RFC 7512 parsing: percent-decoding, id bytes, refusing inline PINs and unknown attributes."""

from __future__ import annotations

from pathlib import Path

import pytest

from credential_sidecar.config.pkcs11_uri import Pkcs11Uri, Pkcs11UriError, parse


def test_full_uri() -> None:
    uri = parse("pkcs11:token=My%20Token;object=sign%3bkey;id=%01%02%FF;type=private;"
                "serial=00ab;slot-id=3?pin-source=file:/etc/sidecar/pin&module-name=softhsm2")
    assert uri == Pkcs11Uri(token="My Token", object="sign;key", id=b"\x01\x02\xff",
                            type="private", serial="00ab", slot_id=3,
                            pin_source=Path("/etc/sidecar/pin"), module_name="softhsm2")
    assert parse(str(uri)) == uri


@pytest.mark.parametrize("text", [
    "pkcs11:token=t;pin-source=file:/p",  # in the path: a common slip we accept
    "pkcs11:token=t?pin-source=file:///p",
    "pkcs11:token=t?pin-source=/p",
])
def test_pin_source_forms(text: str) -> None:
    assert parse(text).pin_source == Path("/p")


def test_utf8_label() -> None:
    assert parse("pkcs11:token=%C3%A9t%C3%A9").token == "été"


@pytest.mark.parametrize(("text", "message"), [
    ("pkcs11:token=t?pin-value=123456", "pin-value: a PIN must not be written"),
    ("pkcs11:token=t;pin-value=123456", "pin-source=file:"),
    ("https://token=t", "must start with 'pkcs11:'"),
    ("pkcs11:token=t;colour=red", "'colour' is not supported"),
    ("pkcs11:library-description=x", "pkcs11_module setting"),
    ("pkcs11:token=a;token=b", "repeats attribute 'token'"),
    ("pkcs11:type=secret", "use one of private"),
    ("pkcs11:slot-id=x1", "not a decimal number"),
    ("pkcs11:token", "without '='"),
    ("pkcs11:token=t?pin-source=|/bin/cat", "absolute file path"),
    ("pkcs11:token=%FF", "not UTF-8"),
])
def test_refused(text: str, message: str) -> None:
    with pytest.raises(Pkcs11UriError, match=message.replace("|", r"\|")) as err:
        parse(text)
    assert "123456" not in str(err.value)
