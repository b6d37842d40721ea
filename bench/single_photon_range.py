"""Range of single-photon BB84 under the abort rule (issue 15): seeded rounds per distance, with the
observed QBER, its finite-size bound, the outcome and the key (the figures behind the README's claim;
not a test).

python bench/single_photon_range.py [--qubits 1e7] [--misalignment 0.02] [--seeds 5]
                                    [--distances 70,80,85,90,92,94,96]
"""

from __future__ import annotations

import argparse
import statistics

from qlinkmed.qcore.auth import ROUND_AUTH_BITS
from qlinkmed.qcore.channel_model import ChannelModel
from qlinkmed.qcore.sim import SimConfig, run_simulation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--qubits", type=float, default=1e7)
    parser.add_argument("--misalignment", type=float, default=0.02)
    parser.add_argument("--seeds", type=int, default=5, help="seeds 1..N per distance")
    parser.add_argument("--distances", default="70,80,85,90,92,94,96")
    args = parser.parse_args()
    for distance in (float(d) for d in args.distances.split(",")):
        rows = []
        for seed in range(1, args.seeds + 1):
            config = SimConfig(
                qubits=int(args.qubits),
                channel=ChannelModel(distance_km=distance, misalignment=args.misalignment),
                seed=seed,
            )
            rows.append(run_simulation(config).report())
        keyed = [r for r in rows if not r["aborted"]]
        outcomes = ", ".join(
            f"seed {r['seed']}: Q {r['qber']:.2%} (Q+mu {r['qber_upper']:.1%}) "
            + (f"key {r['final_key_bits']}" if not r["aborted"] else r["abort_reason"])
            for r in rows
        )
        median = statistics.median(r["final_key_bits"] for r in keyed) if keyed else 0
        print(
            f"{distance:g} km, {args.qubits:.0e} pulses: keyed {len(keyed)}/{len(rows)}, "
            f"median key {median:,.0f} bits, theory {rows[0]['theory']['finite_key_bits']} bits "
            f"(PA output, keyed above {ROUND_AUTH_BITS}); {outcomes}"
        )


if __name__ == "__main__":
    main()
