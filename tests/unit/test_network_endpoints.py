"""endpoints.resolve_endpoint against botocore's own ruleset evaluation, region by region."""

from __future__ import annotations

import gzip
import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import pytest
from botocore.awsrequest import AWSResponse
from botocore.config import Config
from botocore.endpoint_provider import EndpointProvider
from botocore.exceptions import EndpointResolutionError
from botocore.session import Session, get_session

from credential_sidecar.upstream.endpoints import (
    LEGACY_GLOBAL_STS_REGIONS,
    Endpoint,
    EndpointError,
    Partitions,
    Service,
    botocore_data_dir,
    default_partitions,
    resolve_endpoint,
)

DATA = botocore_data_dir()
assert DATA is not None
RULESETS = {
    "rolesanywhere": DATA / "rolesanywhere" / "2018-05-10" / "endpoint-rule-set-1.json.gz",
    "sts": DATA / "sts" / "2011-06-15" / "endpoint-rule-set-1.json.gz",
}
PARTITION_DOC: dict[str, Any] = json.loads((DATA / "partitions.json").read_text())
EXTRA_REGIONS = [
    "us-east-9",  # unknown, aws by regex
    "cn-south-7",
    "us-gov-central-3",
    "us-iso-north-5",
    "us-isob-west-2",
    "us-isof-east-4",
    "eu-isoe-south-2",
    "eusc-de-west-9",
    "mars-north-1",  # matches nothing: aws
    "aws-global",
    "aws-cn-global",
    "aws-us-gov-global",
]


def all_regions() -> list[str]:
    listed = [r for p in PARTITION_DOC["partitions"] for r in p["regions"]]
    return sorted(set(listed) | set(EXTRA_REGIONS))


def provider(service: str) -> EndpointProvider:
    with gzip.open(RULESETS[service]) as f:
        ruleset = json.load(f)
    # EndpointProvider mutates partition outputs (adds "name"): give it its own copy
    return EndpointProvider(ruleset, json.loads(json.dumps(PARTITION_DOC)))


PROVIDERS = {s: provider(s) for s in RULESETS}


def botocore_says(
    service: str, region: str, fips: bool, dualstack: bool, legacy: bool
) -> tuple[str, str] | str:
    params: dict[str, Any] = {"Region": region, "UseFIPS": fips, "UseDualStack": dualstack}
    if service == "sts":
        params["UseGlobalEndpoint"] = legacy
    try:
        ep = PROVIDERS[service].resolve_endpoint(**params)
    except EndpointResolutionError:
        return "error"
    schemes = ep.properties.get("authSchemes") or [{}]
    signing = schemes[0].get("signingRegion", region)
    if service == "sts" and region == "aws-global":
        # the ruleset names no signing region for aws-global's FIPS/dual-stack hosts; a real
        # client then signs for us-east-1 (from endpoints.json): see CLIENT_CASES
        signing = "us-east-1"
    return ep.url, signing


def ours(
    service: Service, region: str, fips: bool, dualstack: bool, legacy: bool
) -> tuple[str, str] | str:
    try:
        ep = resolve_endpoint(
            service,
            region,
            use_fips=fips,
            use_dualstack=dualstack,
            sts_regional_endpoints="legacy" if legacy else "regional",
            env={},
        )
    except EndpointError:
        return "error"
    return ep.url, ep.signing_region


def cases() -> Iterator[tuple[Service, str, bool, bool, bool]]:
    services: tuple[Service, ...] = ("rolesanywhere", "sts")
    for service, region, fips, dualstack in itertools.product(
        services, all_regions(), (False, True), (False, True)
    ):
        for legacy in (False, True) if service == "sts" else (False,):
            yield service, region, fips, dualstack, legacy


CASES = list(cases())


def test_case_count() -> None:
    # every listed region, 2 services, 4 variants (+ sts legacy) -- and all partitions present
    ids = {p["id"] for p in PARTITION_DOC["partitions"]}
    assert {"aws", "aws-cn", "aws-us-gov", "aws-iso", "aws-iso-b", "aws-iso-e", "aws-iso-f"} <= ids
    assert len(CASES) == len(all_regions()) * 4 * 3


@pytest.mark.parametrize(("service", "region", "fips", "dualstack", "legacy"), CASES)
def test_matches_botocore_ruleset(
    service: Service, region: str, fips: bool, dualstack: bool, legacy: bool
) -> None:
    assert ours(service, region, fips, dualstack, legacy) == botocore_says(
        service, region, fips, dualstack, legacy
    )


def test_legacy_global_regions_match_the_ruleset() -> None:
    with gzip.open(RULESETS["sts"]) as f:
        ruleset = json.load(f)
    found: set[str] = set()

    def walk(rules: list[dict[str, Any]]) -> None:
        for rule in rules:
            for cond in rule.get("conditions", []):
                argv = cond["argv"]
                if cond["fn"] == "stringEquals" and argv[0] == {"ref": "Region"}:
                    if rule["type"] == "endpoint" and rule["endpoint"]["url"] == (
                        "https://sts.amazonaws.com"
                    ):
                        found.add(argv[1])
            if rule["type"] == "tree":
                walk(rule["rules"])

    walk(ruleset["rules"][:1])  # the UseGlobalEndpoint tree
    assert found == LEGACY_GLOBAL_STS_REGIONS


# --- a real botocore client: where do its requests actually go, signed for which region? --------


class _Body:
    def stream(self, **_: Any) -> Iterator[bytes]:
        return iter([b""])


def sent_by_client(session: Session, service: str, region: str, **config: Any) -> tuple[str, str]:
    seen: list[Any] = []  # AWSRequest

    def before_send(request: Any, **_: Any) -> Any:
        seen.append(request)
        return AWSResponse(request.url, 500, cast(Any, {}), _Body())

    client: Any = session.create_client(
        service,
        region_name=region,
        aws_access_key_id="AKID",
        aws_secret_access_key="S",
        config=Config(retries={"total_max_attempts": 1}, **config),
    )
    client.meta.events.register("before-send", before_send)
    try:
        if service == "sts":
            client.get_caller_identity()
        else:
            client.list_profiles()
    except Exception:
        pass
    auth: str | bytes = seen[0].headers["Authorization"]
    auth_text = auth.decode() if isinstance(auth, bytes) else auth
    scope_region = auth_text.split("Credential=")[1].split("/")[2]
    parts = urlsplit(seen[0].url)
    return f"{parts.scheme}://{parts.netloc}", scope_region


CLIENT_CASES = [
    ("rolesanywhere", "us-east-1", False, False),
    ("rolesanywhere", "eu-west-1", True, False),
    ("rolesanywhere", "us-gov-west-1", True, False),
    ("rolesanywhere", "cn-north-1", False, True),
    ("rolesanywhere", "us-iso-east-1", True, True),
    ("rolesanywhere", "us-isob-east-1", False, False),
    ("rolesanywhere", "eu-isoe-west-1", True, False),
    ("rolesanywhere", "us-isof-south-1", False, False),
    ("sts", "us-east-1", False, False),
    ("sts", "us-east-1", True, False),
    ("sts", "us-gov-east-1", True, False),
    ("sts", "us-gov-east-1", True, True),
    ("sts", "us-iso-east-1", False, True),  # meta.endpoint_url differs here; the request does not
    ("sts", "cn-northwest-1", True, False),
    ("sts", "aws-global", False, False),
    ("sts", "aws-global", True, False),
    ("sts", "aws-global", False, True),
]


@pytest.fixture(scope="module")
def session() -> Session:
    s = get_session()
    s.set_config_variable("sts_regional_endpoints", "regional")
    return s


@pytest.mark.parametrize(("service", "region", "fips", "dualstack"), CLIENT_CASES)
def test_matches_what_a_botocore_client_sends(
    session: Session, service: Service, region: str, fips: bool, dualstack: bool
) -> None:
    kwargs: dict[str, Any] = {}
    if fips:
        kwargs["use_fips_endpoint"] = True
    if dualstack:
        kwargs["use_dualstack_endpoint"] = True
    url, signing_region = sent_by_client(session, service, region, **kwargs)
    ep = resolve_endpoint(service, region, use_fips=fips, use_dualstack=dualstack, env={})
    assert (ep.url, ep.signing_region) == (url, signing_region)


def test_meta_endpoint_url_is_not_where_requests_go(session: Session) -> None:
    client = session.create_client(
        "sts",
        region_name="us-iso-east-1",
        aws_access_key_id="A",
        aws_secret_access_key="S",
        config=Config(use_dualstack_endpoint=True),
    )
    assert client.meta.endpoint_url == "https://sts.us-iso-east-1.api.aws"
    assert resolve_endpoint("sts", "us-iso-east-1", use_dualstack=True, env={}).url == (
        "https://sts.us-iso-east-1.api.aws.ic.gov"
    )


# --- environment and overrides -------------------------------------------------------------------


def test_env_fips_and_dualstack() -> None:
    env = {"AWS_USE_FIPS_ENDPOINT": "TRUE", "AWS_USE_DUALSTACK_ENDPOINT": "true"}
    ep = resolve_endpoint("rolesanywhere", "us-west-2", env=env)
    assert ep.url == "https://rolesanywhere-fips.us-west-2.api.aws"
    assert (ep.fips, ep.dualstack, ep.signing_region) == (True, True, "us-west-2")
    assert ep.hostname == "rolesanywhere-fips.us-west-2.api.aws"
    # explicit arguments beat the environment
    ep = resolve_endpoint(
        "rolesanywhere", "us-west-2", use_fips=False, use_dualstack=False, env=env
    )
    assert ep.url == "https://rolesanywhere.us-west-2.amazonaws.com"
    for value in ("1", "yes", "on", ""):
        assert not resolve_endpoint("sts", "us-west-2", env={"AWS_USE_FIPS_ENDPOINT": value}).fips


@pytest.mark.parametrize(
    ("service", "env", "url", "source"),
    [
        (
            "sts",
            {"AWS_ENDPOINT_URL_STS": "https://s.example/", "AWS_ENDPOINT_URL": "https://a"},
            "https://s.example",
            "AWS_ENDPOINT_URL_STS",
        ),
        ("sts", {"AWS_ENDPOINT_URL": "https://a.example"}, "https://a.example", "AWS_ENDPOINT_URL"),
        (
            "rolesanywhere",
            {"AWS_ENDPOINT_URL_STS": "https://s", "AWS_ENDPOINT_URL": "https://a"},
            "https://a",
            "AWS_ENDPOINT_URL",
        ),
        (
            "rolesanywhere",
            {"AWS_ENDPOINT_URL_ROLESANYWHERE": "http://127.0.0.1:8443"},
            "http://127.0.0.1:8443",
            "AWS_ENDPOINT_URL_ROLESANYWHERE",
        ),
        (
            "rolesanywhere",
            {
                "AWS_ENDPOINT_URL_ROLESANYWHERE": "https://r",
                "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS": "true",
            },
            "https://rolesanywhere.eu-west-1.amazonaws.com",
            "ruleset",
        ),
    ],
)
def test_endpoint_url_env(service: Service, env: dict[str, str], url: str, source: str) -> None:
    ep = resolve_endpoint(service, "eu-west-1", env=env)
    assert (ep.url, ep.source, ep.signing_region) == (url, source, "eu-west-1")


def test_config_endpoint_wins_and_ignores_fips() -> None:
    env = {"AWS_ENDPOINT_URL_STS": "https://s.example", "AWS_USE_FIPS_ENDPOINT": "true"}
    ep = resolve_endpoint("sts", "us-east-1", endpoint_url="https://mine.example:8443/", env=env)
    assert ep == Endpoint("https://mine.example:8443", "us-east-1", None, "config")


def test_sts_regional_endpoints_from_env() -> None:
    legacy = resolve_endpoint("sts", "eu-west-1", env={"AWS_STS_REGIONAL_ENDPOINTS": "legacy"})
    assert (legacy.url, legacy.signing_region) == ("https://sts.amazonaws.com", "us-east-1")
    regional = resolve_endpoint("sts", "eu-south-1", env={"AWS_STS_REGIONAL_ENDPOINTS": "legacy"})
    assert regional.url == "https://sts.eu-south-1.amazonaws.com"
    with pytest.raises(EndpointError):
        resolve_endpoint("sts", "eu-west-1", env={"AWS_STS_REGIONAL_ENDPOINTS": "nope"})


@pytest.mark.parametrize(
    ("region", "url"),
    [
        ("fips-us-gov-west-1", "https://rolesanywhere-fips.us-gov-west-1.amazonaws.com"),
        ("us-gov-west-1-fips", "https://rolesanywhere-fips.us-gov-west-1.amazonaws.com"),
    ],
)
def test_fips_pseudo_regions(session: Session, region: str, url: str) -> None:
    ep = resolve_endpoint("rolesanywhere", region, env={})
    assert (ep.url, ep.signing_region, ep.fips) == (url, "us-gov-west-1", True)
    assert sent_by_client(session, "rolesanywhere", region) == (url, "us-gov-west-1")


@pytest.mark.parametrize("region", ["", "-us-east-1", "us_east_1", "123", "a" * 64, "us east"])
def test_bad_regions(region: str) -> None:
    with pytest.raises(EndpointError):
        resolve_endpoint("sts", region, env={})


def test_partition_without_variants(tmp_path: Path) -> None:
    doc = json.loads(json.dumps(PARTITION_DOC))
    for p in doc["partitions"]:
        p["outputs"]["supportsFIPS"] = p["outputs"]["supportsDualStack"] = False
    path = tmp_path / "partitions.json"
    path.write_text(json.dumps(doc))
    parts = Partitions.load(path)
    with pytest.raises(EndpointError, match="FIPS"):
        resolve_endpoint("sts", "us-east-1", use_fips=True, env={}, partitions=parts)
    with pytest.raises(EndpointError, match="dual-stack"):
        resolve_endpoint("sts", "us-east-1", use_dualstack=True, env={}, partitions=parts)


def test_default_partitions_cover_the_data() -> None:
    parts = default_partitions()
    assert len(parts.regions()) == sum(len(p["regions"]) for p in PARTITION_DOC["partitions"])
    assert parts.for_region("us-isob-east-1").id == "aws-iso-b"
    assert parts.for_region("nowhere-1").id == "aws"
