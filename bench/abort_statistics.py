"""Abort statistics over many seeded rounds (the figures behind the README's claims; not a test).

python bench/abort_statistics.py [--runs 200]
"""

from __future__ import annotations

import argparse
import math
import statistics

from qlinkmed.qcore.channel import Eavesdropper, EveKind
from qlinkmed.qcore.channel_model import ChannelModel, predict_e91
from qlinkmed.qcore.params import ProtocolKind
from qlinkmed.qcore.sim import SimConfig, run_simulation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    channel = ChannelModel(distance_km=10.0, misalignment=0.02)

    honest = [
        run_simulation(SimConfig(qubits=1_000_000, channel=channel, seed=20_000 + s)).report()
        for s in range(args.runs)
    ]
    aborted = [r for r in honest if r["aborted"]]
    keys = [r["final_key_bits"] for r in honest if not r["aborted"]]
    print(
        f"BB84 honest, 10 km, 2 % misalignment, 1e6 pulses: {len(aborted)}/{args.runs} aborted "
        f"({sorted({r['abort_reason'] for r in aborted})}); "
        f"QBER mean {statistics.mean(r['qber'] for r in honest):.4%}; "
        f"final key median {statistics.median(keys):,.0f} bits; "
        f"keys identical in {sum(r['keys_equal'] for r in honest if not r['aborted'])}/{len(keys)}"
    )

    tapped = [
        run_simulation(
            SimConfig(
                qubits=200_000,
                channel=channel,
                eve=Eavesdropper(kind=EveKind.INTERCEPT_RESEND, fraction=1.0),
                seed=10_000 + s,
            )
        ).report()
        for s in range(args.runs)
    ]
    q = [r["qber"] for r in tapped]
    print(
        f"BB84 intercept-resend p = 1, 2e5 pulses: {sum(r['aborted'] for r in tapped)}/{args.runs} aborted "
        f"({sorted({r['abort_reason'] for r in tapped})}); QBER mean {statistics.mean(q):.4f}, "
        f"sd {statistics.stdev(q):.4f}, range [{min(q):.4f}, {max(q):.4f}]"
    )

    for fraction in (0.0, 1.0):
        config = SimConfig(
            protocol=ProtocolKind.E91,
            qubits=20_000_000,  # BBM92: each CHSH pair of settings gets 5 % of the coincidences
            channel=ChannelModel(distance_km=10.0),
            eve=Eavesdropper(
                kind=EveKind.INTERCEPT_RESEND if fraction else EveKind.NONE, fraction=max(fraction, 0.0)
            ),
            seed=5,
        )
        r = run_simulation(config).report()
        model = predict_e91(config.channel).chsh * (1 - fraction / 2)
        print(
            f"E91 10 km, Eve on {fraction:.0%}: S = {r['chsh_s']:.4f} (lower bound {r['chsh_lower']:.4f}), "
            f"model {model:.4f}, 2 sqrt2 (1 - 2Q) = {2 * math.sqrt(2) * (1 - 2 * r['qber']):.4f} "
            f"at Q = {r['qber']:.4f}; "
            f"{'aborted: ' + r['abort_reason'] if r['aborted'] else 'key ' + str(r['final_key_bits'])}"
        )


if __name__ == "__main__":
    main()
