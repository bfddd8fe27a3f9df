"""One CreateSession in a fresh process, printed as credential_process JSON.

What ``aws_signing_helper credential-process`` does on every invocation (read the certificate and
key, sign, call CreateSession, print), kept as lean as Python allows: the standard library's
HTTP client and the daemon's signer, nothing else. The baseline of bench/credential_process.py.

    python bench/create_session_once.py --certificate C --private-key K --endpoint URL \
        --trust-anchor-arn A --profile-arn P --role-arn R
"""

from __future__ import annotations

import argparse
import json
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from credential_sidecar.upstream.sigv4_x509 import sign_request


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for option in ("--certificate", "--private-key", "--endpoint", "--trust-anchor-arn",
                   "--profile-arn", "--role-arn"):
        parser.add_argument(option, required=True)
    args = parser.parse_args()
    certificate = x509.load_pem_x509_certificate(Path(args.certificate).read_bytes())
    key = load_pem_private_key(Path(args.private_key).read_bytes(), password=None)
    url = args.endpoint.rstrip("/") + "/sessions"
    body = json.dumps({"durationSeconds": 3600, "profileArn": args.profile_arn,
                       "roleArn": args.role_arn, "trustAnchorArn": args.trust_anchor_arn,
                       "roleSessionName": "bench"}).encode()
    signed = sign_request(method="POST", url=url, headers={"Content-Type": "application/json"},
                          body=body, region=args.trust_anchor_arn.split(":")[3],
                          service="rolesanywhere", when=datetime.fromtimestamp(time.time(), UTC),
                          certificate=certificate, private_key=key)  # type: ignore[arg-type]
    request = urllib.request.Request(url, data=body, headers=signed.headers, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        creds = json.load(response)["credentialSet"][0]["credentials"]
    print(json.dumps({"Version": 1, "AccessKeyId": creds["accessKeyId"],
                      "SecretAccessKey": creds["secretAccessKey"],
                      "SessionToken": creds["sessionToken"], "Expiration": creds["expiration"]}))


if __name__ == "__main__":
    main()
