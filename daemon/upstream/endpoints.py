"""Where IAM Roles Anywhere and STS requests go, as the AWS SDKs decide it, without botocore.

The SDKs evaluate each service's endpoint ruleset (``botocore/data/<service>/<version>/
endpoint-rule-set-1.json.gz``) over the partition table (``botocore/data/partitions.json``). For
``rolesanywhere`` and ``sts`` those rulesets reduce to a few patterns, applied here to the
partition data alone (read as JSON: importing botocore costs ~10x more, see docs/network.md):

rolesanywhere::

    fips + dualstack  https://rolesanywhere-fips.{region}.{dualStackDnsSuffix}
    fips              https://rolesanywhere-fips.{region}.{dnsSuffix}
    dualstack         https://rolesanywhere.{region}.{dualStackDnsSuffix}
    otherwise         https://rolesanywhere.{region}.{dnsSuffix}

sts: the same with ``sts``, except

* fips (not dualstack) in ``aws-us-gov``: ``https://sts.{region}.amazonaws.com`` (GovCloud's
  regular STS endpoints are FIPS endpoints);
* region ``aws-global`` (neither fips nor dualstack): ``https://sts.amazonaws.com``, signed for
  ``us-east-1``;
* ``sts_regional_endpoints="legacy"`` (``AWS_STS_REGIONAL_ENDPOINTS``; the default has been
  ``regional`` since botocore 1.36): ``https://sts.amazonaws.com`` signed for ``us-east-1`` for
  the 16 regions of ``LEGACY_GLOBAL_STS_REGIONS`` (neither fips nor dualstack).

A partition is found as botocore's ``aws.partition`` finds it: the first partition (in file
order) listing the region or whose ``regionRegex`` matches it; else the first partition (aws).
A partition without FIPS / dual-stack support is an ``EndpointError`` (the ruleset's error).

Region handling as botocore's client: ``fips-`` / ``-fips`` in the region name is removed and
turns FIPS on; the region must be a valid host label.

Overrides, highest first: the ``endpoint_url`` argument (the daemon's config);
``AWS_ENDPOINT_URL_ROLESANYWHERE`` / ``AWS_ENDPOINT_URL_STS``; ``AWS_ENDPOINT_URL`` -- the two
environment ones unless ``AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true``. With an override, FIPS and
dual-stack are ignored (botocore sends to the override and signs for the region, no error).
``AWS_USE_FIPS_ENDPOINT`` / ``AWS_USE_DUALSTACK_ENDPOINT`` apply when the arguments are None
(``"true"``, any case, is true; anything else false -- botocore's ``ensure_boolean``).

The signing region is the configured region -- also for FIPS and dual-stack hosts -- except for
STS's global endpoint (``us-east-1``).

Note: ``botocore client.meta.endpoint_url`` is NOT where requests go: it comes from the legacy
``endpoints.json`` resolver, while each request's URL comes from the ruleset (e.g. STS in
us-iso-east-1 dual-stack: meta says ``sts.us-iso-east-1.api.aws``, requests go to
``sts.us-iso-east-1.api.aws.ic.gov``). The tests compare with botocore's ruleset provider.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "LEGACY_GLOBAL_STS_REGIONS",
    "Endpoint",
    "EndpointError",
    "Partition",
    "Partitions",
    "botocore_data_dir",
    "default_partitions",
    "resolve_endpoint",
]

Service = Literal["rolesanywhere", "sts"]
SERVICES: tuple[Service, ...] = ("rolesanywhere", "sts")

# The regions the STS ruleset sends to sts.amazonaws.com when UseGlobalEndpoint is true.
LEGACY_GLOBAL_STS_REGIONS = frozenset(
    {
        "ap-northeast-1",
        "ap-south-1",
        "ap-southeast-1",
        "ap-southeast-2",
        "aws-global",
        "ca-central-1",
        "eu-central-1",
        "eu-north-1",
        "eu-west-1",
        "eu-west-2",
        "eu-west-3",
        "sa-east-1",
        "us-east-1",
        "us-east-2",
        "us-west-1",
        "us-west-2",
    }
)
ENV_SERVICE_NAMES: Mapping[Service, str] = {"rolesanywhere": "ROLESANYWHERE", "sts": "STS"}
_HOST_LABEL = re.compile(r"^(?![0-9]+$)(?!-)[a-zA-Z0-9-]{,63}(?<!-)$")  # botocore's check


class EndpointError(ValueError):
    """No endpoint for this combination (the ruleset's error), or a bad region."""


@dataclass(frozen=True)
class Partition:
    id: str
    dns_suffix: str
    dual_stack_dns_suffix: str
    supports_fips: bool
    supports_dual_stack: bool
    implicit_global_region: str
    region_regex: re.Pattern[str]
    regions: frozenset[str]

    def matches(self, region: str) -> bool:
        return region in self.regions or self.region_regex.match(region) is not None


@dataclass(frozen=True)
class Partitions:
    partitions: tuple[Partition, ...]

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Partitions:
        out = []
        for p in doc["partitions"]:
            o = p["outputs"]
            out.append(
                Partition(
                    id=str(p["id"]),
                    dns_suffix=str(o["dnsSuffix"]),
                    dual_stack_dns_suffix=str(o["dualStackDnsSuffix"]),
                    supports_fips=bool(o["supportsFIPS"]),
                    supports_dual_stack=bool(o["supportsDualStack"]),
                    implicit_global_region=str(o.get("implicitGlobalRegion", "")),
                    region_regex=re.compile(str(p["regionRegex"])),
                    regions=frozenset(p.get("regions", {})),
                )
            )
        if not out:
            raise EndpointError("partition data lists no partition")
        return cls(tuple(out))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Partitions:
        with open(path, encoding="utf-8") as f:
            return cls.from_json(json.load(f))

    def for_region(self, region: str) -> Partition:
        for partition in self.partitions:
            if partition.matches(region):
                return partition
        return self.partitions[0]

    def regions(self) -> list[tuple[str, str]]:
        """(partition id, region) for every region the data lists."""
        return [(p.id, r) for p in self.partitions for r in sorted(p.regions)]


def botocore_data_dir() -> Path | None:
    """botocore's data directory, found without importing botocore (None if not installed)."""
    spec = importlib.util.find_spec("botocore")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        data = Path(location) / "data"
        if (data / "partitions.json").is_file():
            return data
    return None


@lru_cache(maxsize=1)
def default_partitions() -> Partitions:
    data = botocore_data_dir()
    if data is None:
        raise EndpointError("botocore's partitions.json was not found: is botocore installed?")
    return Partitions.load(data / "partitions.json")


@dataclass(frozen=True)
class Endpoint:
    url: str  # scheme://host[:port][/path], no trailing slash
    signing_region: str
    partition: str | None  # None for an override
    source: str  # "ruleset", "config", or the environment variable's name
    fips: bool = False
    dualstack: bool = False

    @property
    def hostname(self) -> str:
        from urllib.parse import urlsplit

        return urlsplit(self.url).hostname or ""


def _env_bool(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() == "true"


def _override(
    service: Service, endpoint_url: str | None, env: Mapping[str, str]
) -> tuple[str, str] | None:
    if endpoint_url:
        return endpoint_url, "config"
    if _env_bool(env, "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS"):
        return None
    for name in (f"AWS_ENDPOINT_URL_{ENV_SERVICE_NAMES[service]}", "AWS_ENDPOINT_URL"):
        value = env.get(name, "").strip()
        if value:
            return value, name
    return None


def normalize_region(region: str) -> tuple[str, bool]:
    """(region, fips forced) as botocore's client does with ``fips-`` pseudo regions."""
    normalized = region.replace("fips-", "").replace("-fips", "")
    if not normalized or not _HOST_LABEL.match(normalized):
        raise EndpointError(f"region {region!r} is not a valid region name")
    return normalized, normalized != region


def resolve_endpoint(
    service: Service,
    region: str,
    *,
    use_fips: bool | None = None,
    use_dualstack: bool | None = None,
    endpoint_url: str | None = None,
    sts_regional_endpoints: str | None = None,
    env: Mapping[str, str] | None = None,
    partitions: Partitions | None = None,
) -> Endpoint:
    """The endpoint for ``service`` in ``region``; arguments left None come from ``env``."""
    if service not in SERVICES:
        raise EndpointError(f"unknown service {service!r}")
    environ = os.environ if env is None else env
    region, forced_fips = normalize_region(region)
    fips = forced_fips or (
        use_fips if use_fips is not None else _env_bool(environ, "AWS_USE_FIPS_ENDPOINT")
    )
    dualstack = (
        use_dualstack
        if use_dualstack is not None
        else _env_bool(environ, "AWS_USE_DUALSTACK_ENDPOINT")
    )
    override = _override(service, endpoint_url, environ)
    if override is not None:
        url, source = override
        return Endpoint(url.rstrip("/"), region, None, source)

    if sts_regional_endpoints is None:
        sts_regional_endpoints = environ.get("AWS_STS_REGIONAL_ENDPOINTS", "regional")
    mode = sts_regional_endpoints.strip().lower() or "regional"
    if mode not in ("regional", "legacy"):
        raise EndpointError(
            f"sts_regional_endpoints {sts_regional_endpoints!r}: use 'regional' or 'legacy'"
        )

    partition = (partitions or default_partitions()).for_region(region)
    global_sts = "https://sts.amazonaws.com"
    if service == "sts" and not fips and not dualstack:
        if region == "aws-global" or (mode == "legacy" and region in LEGACY_GLOBAL_STS_REGIONS):
            return Endpoint(global_sts, "us-east-1", partition.id, "ruleset")

    if fips and not partition.supports_fips:
        raise EndpointError(f"FIPS is enabled but partition {partition.id} does not support FIPS")
    if dualstack and not partition.supports_dual_stack:
        raise EndpointError(
            f"dual-stack is enabled but partition {partition.id} does not support it"
        )
    suffix = partition.dual_stack_dns_suffix if dualstack else partition.dns_suffix
    name = f"{service}-fips" if fips else service
    if service == "sts" and fips and not dualstack and partition.id == "aws-us-gov":
        name, suffix = "sts", "amazonaws.com"
    signing = "us-east-1" if service == "sts" and region == "aws-global" else region
    return Endpoint(
        f"https://{name}.{region}.{suffix}", signing, partition.id, "ruleset", fips, dualstack
    )
