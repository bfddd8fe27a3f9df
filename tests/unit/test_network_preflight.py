"""check-config / start / reload open the proxy credentials file and the CA bundles too."""

from __future__ import annotations

from pathlib import Path

from credential_sidecar.config.load import parse_config
from credential_sidecar.upstream.preflight import file_problems
from tests.helpers.tls_pki import CA

KEY_ID = "AKIAIOSFODNN7EXAMPLE"


def config(tmp: Path, **extra: object) -> list[str]:
    secret = tmp / "k.secret"
    secret.write_text("x" * 40 + "\n")
    secret.chmod(0o600)
    daemon = {}
    if "daemon_ca_bundle" in extra:
        daemon["ca_bundle"] = str(extra.pop("daemon_ca_bundle"))
    conn = {"name": "k", "type": "access-keys", "access_key_id": KEY_ID,
            "secret_access_key_file": str(secret), **extra}
    return list(file_problems(parse_config({"daemon": daemon, "connections": [conn]})))


def test_good_files_pass(tmp_path: Path) -> None:
    creds = tmp_path / "proxy.auth"
    creds.write_text("alice:s3cret\n")
    creds.chmod(0o600)
    bundle = CA.new().write(tmp_path / "ca.pem")
    assert config(tmp_path, proxy_credentials_file=str(creds), ca_bundle=str(bundle),
                  daemon_ca_bundle=bundle) == []


def test_each_problem_is_named(tmp_path: Path) -> None:
    loose = tmp_path / "proxy.auth"
    loose.write_text("alice:s3cret\n")
    loose.chmod(0o644)
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    problems = config(tmp_path, proxy_credentials_file=str(loose), ca_bundle=str(junk),
                      daemon_ca_bundle=tmp_path / "absent.pem")
    assert len(problems) == 3
    assert problems[0].startswith("connections[0] (k): proxy credentials file")
    assert "chmod 600" in problems[0] and "s3cret" not in problems[0]
    assert problems[1] == (
        f"connections[0] (k): CA bundle {junk} holds no usable PEM certificate "
        "(NO_CERTIFICATE_OR_CRL_FOUND)"
    )
    assert problems[2].startswith(f"daemon.ca_bundle: CA bundle {tmp_path / 'absent.pem'}")
