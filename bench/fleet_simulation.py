"""How hard does a fleet of daemons hit CreateSession? A discrete-event simulation.

Every host runs the daemon's own schedule code (``renewal.schedule.refresh_point`` and
``backoff``, the real Policy) against an upstream that admits ``--quota`` calls per second
per account (CreateSession allows roughly 10) and throttles the rest with Retry-After.
Two starts are simulated: a cold start where every host boots in the same second (the worst
case), and a restart of a warm fleet, which the persistent cache turns into no calls at all
until each cached set falls due.

The baseline, measured in the same run, is the same fleet renewing exactly at half life with
no jitter: the ratio column says how much jitter flattens the peak.

    .venv/bin/python bench/fleet_simulation.py --hosts 1000 10000
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import random
import sys
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from credential_sidecar.clock import utc
from credential_sidecar.credentials import Credentials
from credential_sidecar.renewal.schedule import Policy, backoff, refresh_point
from credential_sidecar.renewal.state import ConnectionState
from credential_sidecar.upstream.base import UpstreamError

LIFETIME = 3600
HORIZON = 24 * 3600
THROTTLED = UpstreamError("ThrottlingException", "Rate exceeded", 429, retry_after=1.0)


@dataclass
class Result:
    label: str
    hosts: int
    calls: int
    peak_per_second: int
    p99_per_second: float
    steady_peak: int
    seconds_to_all_served: float
    throttled: int
    min_left_served: float


def _set(now: float) -> Credentials:
    return Credentials("ASIA", "s", "t", utc(now + LIFETIME), utc(now))


def simulate(hosts: int, policy: Policy, quota: float, *, seed: int, label: str,
             warm: bool = False) -> Result:
    schedule_rng = random.Random(seed)
    states = [ConnectionState(str(i)) for i in range(hosts)]
    rng = random.Random(seed + 1)
    events: list[tuple[float, int]] = []
    for i, state in enumerate(states):
        if warm:  # restarted with a cached set of random age: due when its refresh point comes
            issued = -rng.uniform(0, LIFETIME * 0.5)
            state.current = _set(issued)
            state.refresh_remaining = refresh_point(state.current, policy, schedule_rng)
            heapq.heappush(events, (issued + LIFETIME - state.refresh_remaining, i))
        else:
            heapq.heappush(events, (0.0, i))
    admitted: Counter[int] = Counter()
    attempts: Counter[int] = Counter()
    served_all_at = math.inf if not warm else 0.0
    waiting = hosts if not warm else 0
    throttled = 0
    min_left = math.inf
    while events:
        at, i = heapq.heappop(events)
        if at > HORIZON:
            break
        state = states[i]
        second = int(at)
        attempts[second] += 1
        if state.current is not None:
            min_left = min(min_left, state.current.remaining(at))
        if admitted[second] >= quota:
            throttled += 1
            state.failures += 1
            left = state.current.remaining(at) if state.current else None
            delay = backoff(state.failures, THROTTLED, left, policy, schedule_rng)
            heapq.heappush(events, (at + delay, i))
            continue
        admitted[second] += 1
        first = state.current is None
        state.current = _set(at)
        state.failures = 0
        state.refresh_remaining = refresh_point(state.current, policy, schedule_rng)
        heapq.heappush(events, (at + LIFETIME - state.refresh_remaining, i))
        if first:
            waiting -= 1
            if waiting == 0:
                served_all_at = at
    counts = sorted(attempts.values())
    steady = [n for s, n in attempts.items() if s >= 6 * 3600]
    return Result(
        label=label,
        hosts=hosts,
        calls=sum(counts),
        peak_per_second=max(counts),
        p99_per_second=counts[int(len(counts) * 0.99)] if counts else 0,
        steady_peak=max(steady) if steady else 0,
        seconds_to_all_served=served_all_at,
        throttled=throttled,
        min_left_served=min_left,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hosts", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--quota", type=float, default=10, help="CreateSession calls/s admitted")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("bench/results/fleet_simulation.json"))
    args = parser.parse_args(argv)
    policy = Policy()
    scenarios = (
        ("baseline: renew at half life, no jitter", replace(policy, refresh_jitter=0.0), False),
        ("daemon policy", policy, False),
        ("daemon policy, warm restart from the cache", policy, True),
    )
    rows: list[Result] = []
    print(f"3600 s sessions, 24 h simulated; the upstream admits {args.quota:g} calls/s "
          "(the rest get ThrottlingException). Steady state: after the first 6 h.")
    header = (f"{'hosts':>6}  {'scenario':<43} {'calls/24h':>9} {'peak/s':>6} {'steady peak/s':>13}"
              f" {'ratio':>5} {'all served':>10} {'throttled':>9} {'min R served':>12}")
    print(header)
    for hosts in args.hosts:
        base: Result | None = None
        for label, pol, warm in scenarios:
            row = simulate(hosts, pol, args.quota, seed=args.seed, label=label, warm=warm)
            base = base or row
            rows.append(row)
            ratio = row.steady_peak / max(1, base.steady_peak)
            print(f"{row.hosts:>6}  {row.label:<43} {row.calls:>9} {row.peak_per_second:>6}"
                  f" {row.steady_peak:>13} {ratio:>5.2f} {row.seconds_to_all_served:>9.0f}s"
                  f" {row.throttled:>9} {row.min_left_served:>11.0f}s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps([r.__dict__ for r in rows], indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
