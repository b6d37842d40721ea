"""Key measured over the running daemons at several fibre lengths, as the points `qlink sim sweep
--daemon-points FILE` draws beside the simulated ones.

    .venv/bin/python bench/daemon_points.py --protocols bb84,e91 --distances 0,10,25 \
        --out docs/data/daemon_points.json
    .venv/bin/python bench/daemon_points.py --protocols bb84-decoy --distances 0,25 --pulses bb84-decoy=1e7

For every (protocol, distance) this writes a fresh loopback deployment (bench/_deploy.py `running`: the
channel service and both daemons, real processes, sockets and mutual TLS; only the photons are
emulated), waits for the first round to end, then counts the rounds facility A (Alice) records in its
audit log until --rounds more have ended or --seconds have passed. Per point: rounds ended, final key
bits of the established ones, key bits per pulse (key bits / (rounds * pulses per round)) and the
sustained rate (key bits / the window's wall time, first round excluded: it includes the start-up).

The protocol string goes to the deployment unchanged, so a protocol the daemons learn later (e.g.
`bb84-decoy`) needs no change here; give its pulses per round with --pulses when the facility
configuration has no default for it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import _deploy as d

from qlinkmed.client.sweep_plots import DaemonPoint, daemon_points_document
from qlinkmed.qlinkd.ops.config import DEFAULT_PULSES_PER_ROUND

FIRST_ROUND_TIMEOUT_S = 120.0


def _rounds(deployment: Any) -> list[dict[str, Any]]:
    return [
        r for r in d.read_audit(deployment, d.A) if r.get("event") in ("round_established", "round_aborted")
    ]


def measure(
    protocol: str, distance_km: float, pulses: int, *, rounds: int, seconds: float, afterpulse: float
) -> DaemonPoint:
    with d.running(
        protocol=protocol,
        pulses_per_round=pulses,
        distance_km=distance_km,
        afterpulse=afterpulse,
        round_timeout_s=120.0,
    ) as started:
        deployment = started.deployment
        d.wait_for(lambda: len(_rounds(deployment)) > 0, FIRST_ROUND_TIMEOUT_S, f"{protocol}: first round")
        first = len(_rounds(deployment))
        window_start = time.monotonic()
        # A slow link: the window ends at --seconds with the rounds it has.
        with contextlib.suppress(TimeoutError):
            d.wait_for(lambda: len(_rounds(deployment)) >= first + rounds, seconds, f"{rounds} rounds")
        window = time.monotonic() - window_start
        records = _rounds(deployment)[first:]
    key_bits = sum(int(r["final_key_bits"]) for r in records if r["event"] == "round_established")
    return DaemonPoint(
        protocol=protocol,
        distance_km=distance_km,
        pulses_per_round=pulses,
        rounds=len(records),
        key_bits=key_bits,
        key_bits_per_pulse=key_bits / (len(records) * pulses) if records else 0.0,
        sustained_bits_per_s=key_bits / window if window > 0 else 0.0,
    )


def _pulses(items: list[str], protocols: list[str]) -> dict[str, int]:
    out = {kind.value: n for kind, n in DEFAULT_PULSES_PER_ROUND.items()}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--pulses {item!r}: expected PROTOCOL=N")
        out[name] = int(float(value))
    missing = [p for p in protocols if p not in out]
    if missing:
        raise SystemExit(f"no default pulses per round for {', '.join(missing)}: give --pulses PROTOCOL=N")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--protocols", default="bb84,e91", help="comma-separated, passed through (bb84,e91)")
    parser.add_argument("--distances", default="0,10,25", help="fibre lengths, km (0,10,25)")
    parser.add_argument(
        "--pulses",
        action="append",
        default=[],
        metavar="PROTOCOL=N",
        help="pulses (pairs) per round for a protocol (default: the facility configuration's: bb84 1e6, "
        "e91 2e7)",
    )
    parser.add_argument("--rounds", type=int, default=4, help="rounds to count after the first (4)")
    parser.add_argument("--seconds", type=float, default=120.0, help="longest window per point (120)")
    parser.add_argument(
        "--afterpulse", type=float, default=0.04, help="detector after-pulse probability (0.04)"
    )
    parser.add_argument("--out", default=None, help="write the JSON here (default: print it)")
    args = parser.parse_args(argv)
    protocols = [p.strip() for p in args.protocols.split(",") if p.strip()]
    distances = [float(x) for x in args.distances.split(",")]
    pulses = _pulses(args.pulses, protocols)
    points = []
    started = time.monotonic()
    for protocol in protocols:
        for distance in distances:
            point = measure(
                protocol,
                distance,
                pulses[protocol],
                rounds=args.rounds,
                seconds=args.seconds,
                afterpulse=args.afterpulse,
            )
            points.append(point)
            print(
                f"{protocol} {distance:g} km, {pulses[protocol]:.0e} pulses/round: {point.rounds} rounds, "
                f"{point.key_bits:,} key bits ({point.key_bits_per_pulse:.3e}/pulse), "
                f"{point.sustained_bits_per_s:,.0f} bit/s",
                file=sys.stderr,
            )
    doc = daemon_points_document(
        points,
        command="python bench/daemon_points.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        measured=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        afterpulse=args.afterpulse,
        elapsed_s=round(time.monotonic() - started, 1),
    )
    text = json.dumps(doc, indent=2) + "\n"
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
