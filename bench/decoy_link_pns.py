"""A bb84-decoy link under a photon-number-splitting attack, run through the real daemons.

    .venv/bin/python bench/decoy_link_pns.py                      # 50 km, the configuration's round
    .venv/bin/python bench/decoy_link_pns.py --distance-km 25 --pulses 2e7 --honest-rounds 3
    .venv/bin/python bench/decoy_link_pns.py --kind intercept-resend    # the same with intercept-resend

Writes a fresh loopback deployment with `protocol = "bb84-decoy"` (the facilities' fibre_km is the
channel's length, so the source is the optimiser's for it), starts the channel service and both daemons,
and reports, from facility A's audit log and both local APIs:

1. the honest phase: rounds, their key bits and durations, and the sustained key rate (key bits of the
   established rounds after the first / the wall time they took);
2. PNS attached through the channel's admin API (as `qlink eve attach pns` does): each round that ends
   while it is attached (aborted? reason, key bits, seconds after the attach) and the alarm at both ends;
3. detached: the seconds from the detach to the first round that keys again;
4. the peak resident memory of each process.

The first round that ends after the attach may have started before it (its pulses were already through
the channel): the script marks it.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import _deploy as d
import httpx


def _rounds(deployment: Any, seen: int) -> tuple[list[dict[str, Any]], int]:
    records = d.read_audit(deployment, d.A)
    new = [r for r in records[seen:] if r.get("event") in ("round_established", "round_aborted")]
    return new, len(records)


def _wait_rounds(deployment: Any, seen: int, count: int, timeout: float) -> tuple[list[dict[str, Any]], int]:
    """At least `count` rounds ended after audit position `seen`, with their arrival times."""
    got: list[dict[str, Any]] = []
    start = time.monotonic()
    while len(got) < count:
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{len(got)} of {count} rounds within {timeout} s")
        new, seen = _rounds(deployment, seen)
        now = time.monotonic()
        got.extend({**r, "_at": now} for r in new)
        time.sleep(d.POLL_S * 10)
    return got, seen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--distance-km", type=float, default=50.0, help="fibre length (50)")
    parser.add_argument(
        "--pulses",
        type=lambda t: int(float(t)),
        default=None,
        help="pulses per round (default: the config's)",
    )
    parser.add_argument("--honest-rounds", type=int, default=4, help="honest rounds measured after the first")
    parser.add_argument("--attacked-rounds", type=int, default=2, help="rounds to watch under PNS")
    parser.add_argument("--timeout", type=float, default=900.0, help="give up on any phase after this")
    parser.add_argument(
        "--kind", choices=("pns", "intercept-resend"), default="pns", help="the attack attached (pns)"
    )
    args = parser.parse_args(argv)

    with d.running(
        protocol="bb84-decoy",
        distance_km=args.distance_km,
        pulses_per_round=args.pulses,
        round_timeout_s=None,
    ) as started:
        deployment = started.deployment
        link = d.link_status(deployment, d.A)
        print(f"bb84-decoy at {args.distance_km:g} km; processes ready in {started.ready_s:.2f} s")
        if link is not None:
            print(f"source: {link['decoy']}")
        first, seen = _wait_rounds(deployment, 0, 1, args.timeout)
        print(
            f"first round ended {first[0]['_at'] - started.spawned_at:.1f} s after spawn: "
            f"{first[0]['reason']}, {first[0]['final_key_bits']} bits"
        )
        honest, seen = _wait_rounds(deployment, seen, args.honest_rounds, args.timeout)
        span = honest[-1]["_at"] - first[-1]["_at"]
        bits = sum(int(r["final_key_bits"]) for r in honest)
        established = [r for r in honest if r["event"] == "round_established"]
        print(
            f"honest: {len(established)}/{len(honest)} rounds established, "
            f"{bits / max(len(established), 1):,.0f} key bits per round, median round "
            f"{d.median([float(r['duration_s']) for r in honest]):.1f} s; sustained {bits / span:,.0f} bit/s "
            f"over {span:.1f} s"
        )

        headers = deployment.admin_headers()
        httpx.post(
            deployment.admin_url + "/v1/eve", json={"kind": args.kind, "fraction": 1.0}, headers=headers
        ).raise_for_status()
        attached = time.monotonic()
        print(f"{args.kind} attached (fraction 1.0)")
        attacked, seen = _wait_rounds(deployment, seen, args.attacked_rounds + 1, args.timeout)
        for r in attacked:
            mark = (
                " (started before the attach; its pulses may have crossed after it)"
                if float(r["duration_s"]) > r["_at"] - attached
                else ""
            )
            print(
                f"  round {r['round']}: {'established' if r['event'] == 'round_established' else 'aborted'} "
                f"({r['reason']}), {r['final_key_bits']} key bits, ended {r['_at'] - attached:.1f} s after "
                f"the attach{mark}"
            )
        for facility in (d.A, d.B):
            status = d.link_status(deployment, facility) or {}
            print(f"  alarm at {facility}: {status.get('alarm')}")

        httpx.delete(deployment.admin_url + "/v1/eve", headers=headers).raise_for_status()
        detached = time.monotonic()
        print(f"{args.kind} detached")
        while True:
            after, seen = _wait_rounds(deployment, seen, 1, args.timeout)
            keyed = [r for r in after if r["event"] == "round_established"]
            for r in after:
                print(
                    f"  round {r['round']}: {r['reason']}, {r['final_key_bits']} key bits, ended "
                    f"{r['_at'] - detached:.1f} s after the detach"
                )
            if keyed:
                print(f"first key {keyed[0]['_at'] - detached:.1f} s after the detach")
                break
            if time.monotonic() - detached > args.timeout:
                print("no key after the detach")
                break
        peaks = d.peak_rss_mib(started.group)
        print("peak RSS: " + ", ".join(f"{name} {mib:,.0f} MiB" for name, mib in peaks.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
