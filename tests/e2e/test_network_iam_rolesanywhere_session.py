"""awslabs' iam-rolesanywhere-session (an independent SigV4-X509 signer) against local servers.

What it sends (v3.0.0, read from its source and checked here on the wire):

* ``POST https://{endpoint}/sessions`` -- ``endpoint`` is ``host[:port]`` *without a scheme*;
  the scheme is always https, so a local CreateSession server must speak TLS, and
  ``verify=<CA file>`` trusts it (requests go through botocore's URLLib3Session; ``proxies``
  are used only when passed, the environment's *_PROXY is not read for this call);
* JSON body ``{"durationSeconds", "profileArn", "roleArn", "trustAnchorArn"}`` plus
  ``roleSessionName`` / ``instanceProperties`` only when given; no query string;
* ``Content-Type: application/x-amz-json-1.0`` (the daemon sends ``application/json``);
* ``Host`` = the URL's netloc, so ``127.0.0.1:PORT`` (an explicit ``:443`` would stay);
* signed headers: ``content-type;host;x-amz-date;x-amz-x509`` (+ ``x-amz-x509-chain``),
  the canonical request being botocore's SigV4 one;
* ``Authorization: AWS4-X509-{RSA|ECDSA}-{HASH} Credential=<serial>/<date>/<region>/
  rolesanywhere/aws4_request, ...`` where HASH is the *certificate's own signature hash*
  (a leaf signed with SHA-384 gives ``AWS4-X509-ECDSA-SHA384``) while the request signature
  is always SHA-256 -- an emulator accepting only ``-SHA256`` names rejects such leaves.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from credential_sidecar.devtools import pki
from credential_sidecar.devtools.emulator.server import Emulator, Profile
from credential_sidecar.upstream.sigv4_x509 import canonical_query
from tests.helpers.tls_servers import TLSServer, https_server

irs = pytest.importorskip(
    "iam_rolesanywhere_session",
    reason="pip install iam-rolesanywhere-session (not yet in the [test] extras)",
)

REGION = "us-east-1"
ANCHOR = f"arn:aws:rolesanywhere:{REGION}:111122223333:trust-anchor/emulator"
PROFILE = f"arn:aws:rolesanywhere:{REGION}:111122223333:profile/emulator"
ROLE = "arn:aws:iam::111122223333:role/emulator"

pytestmark = pytest.mark.usefixtures("collect_garbage")  # tests/e2e/conftest.py


@dataclass
class Seen:
    method: str
    path_qs: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Identity:
    ca_cert: x509.Certificate  # the trust anchor's CA
    cert_pem: Path
    key_pem: Path
    leaf: x509.Certificate


def make_identity(tmp: Path) -> Identity:
    """A Roles Anywhere CA and client certificate (the project's pki)."""
    anchor = pki.make_ca("network test anchor")
    client = pki.make_leaf(anchor, "workload.example")
    cert_pem, key_pem = tmp / "client.pem", tmp / "client.key"
    cert_pem.write_bytes(client.cert_pem())
    pki.write_private(key_pem, client.key_pem())
    return Identity(anchor.certificate, cert_pem, key_pem, client.certificate)


def recorder(seen: list[Seen]) -> web.Application:
    async def sessions(request: web.Request) -> web.Response:
        seen.append(
            Seen(request.method, request.path_qs, dict(request.headers), await request.read())
        )
        creds = {
            "accessKeyId": "ASIAEXAMPLE",
            "secretAccessKey": "s" * 40,
            "sessionToken": "t" * 64,
            "expiration": "2099-01-01T00:00:00Z",
        }
        return web.json_response({"credentialSet": [{"credentials": creds}]}, status=201)

    app = web.Application()
    app.router.add_post("/sessions", sessions)
    return app


def get_credentials(server: TLSServer, ident: Identity) -> Any:
    session = irs.IAMRolesAnywhereSession(
        profile_arn=PROFILE,
        role_arn=ROLE,
        trust_anchor_arn=ANCHOR,
        certificate=str(ident.cert_pem),
        private_key=str(ident.key_pem),
        region=REGION,
        endpoint=f"127.0.0.1:{server.port}",
        verify=str(server.ca_pem),
        session_duration=900,
    )
    try:
        return session.get_refreshable_credentials().get_frozen_credentials()
    finally:
        # its urllib3 pool keeps the TLS connection open; close it so the server can finish
        session._session.close()


def verify_like_aws(seen: Seen, leaf: x509.Certificate) -> str:
    """Recompute the canonical request ourselves and check the ECDSA signature."""
    auth = seen.headers["Authorization"]
    algorithm, rest = auth.split(" ", 1)
    fields = dict(part.strip().split("=", 1) for part in rest.split(","))
    names = fields["SignedHeaders"].split(";")
    lower = {k.lower(): v for k, v in seen.headers.items()}
    block = "".join(f"{n}:{' '.join(lower[n].split())}\n" for n in names)
    path, _, query = seen.path_qs.partition("?")
    canonical = "\n".join(
        [
            seen.method,
            path,
            canonical_query(query),
            block,
            ";".join(names),
            hashlib.sha256(seen.body).hexdigest(),
        ]
    )
    scope = fields["Credential"].split("/", 1)[1]
    to_sign = "\n".join(
        [algorithm, lower["x-amz-date"], scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    public = leaf.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(bytes.fromhex(fields["Signature"]), to_sign.encode(), ec.ECDSA(hashes.SHA256()))
    return algorithm


async def test_request_shape(tmp_path: Path) -> None:
    ident = make_identity(tmp_path)
    seen: list[Seen] = []
    async with https_server(tmp_path, names=["127.0.0.1"], app=recorder(seen)) as server:
        creds = await asyncio.to_thread(get_credentials, server, ident)
    assert creds.access_key == "ASIAEXAMPLE"
    [request] = seen
    assert (request.method, request.path_qs) == ("POST", "/sessions")
    assert json.loads(request.body) == {
        "durationSeconds": 900,
        "profileArn": PROFILE,
        "roleArn": ROLE,
        "trustAnchorArn": ANCHOR,
    }
    h = request.headers
    assert h["Content-Type"] == "application/x-amz-json-1.0"
    assert h["Host"] == f"127.0.0.1:{server.port}"
    assert base64.b64decode(h["X-Amz-X509"]) == ident.leaf.public_bytes(
        __import__(
            "cryptography.hazmat.primitives.serialization", fromlist=["Encoding"]
        ).Encoding.DER
    )
    assert f"Credential={ident.leaf.serial_number}/" in h["Authorization"]
    assert f"/{REGION}/rolesanywhere/aws4_request" in h["Authorization"]
    assert "SignedHeaders=content-type;host;x-amz-date;x-amz-x509," in h["Authorization"]
    assert verify_like_aws(request, ident.leaf) == "AWS4-X509-ECDSA-SHA256"


def test_endpoint_requires_https_scheme_free_host() -> None:
    with pytest.raises(Exception):  # noqa: B017 - any failure: "http://..." is not a host
        irs.IAMRolesAnywhereSession(
            profile_arn=PROFILE,
            role_arn=ROLE,
            trust_anchor_arn=ANCHOR,
            certificate=b"not a cert",
            private_key=b"nor a key",
            endpoint="http://127.0.0.1:1",
        )


# --- the project's own emulator ------------------------------------------------------------------


async def test_against_project_emulator(tmp_path: Path) -> None:
    """The emulator's app behind TLS accepts the awslabs signer's request as it is."""
    ident = make_identity(tmp_path)
    emulator = Emulator(
        trust_anchors={ANCHOR: [ident.ca_cert]},
        profiles={PROFILE: Profile(role_arns=(ROLE,))},
    )
    async with https_server(tmp_path, names=["127.0.0.1"], app=emulator.app) as server:
        creds = await asyncio.to_thread(get_credentials, server, ident)
    assert creds.access_key.startswith("ASIA")
    assert emulator.succeeded == 1
