"""E91 (BBM92 analysis) with the default detectors at 0 km: the figures behind the README's claim (issue
15), per seed. An honest run: the key, both hashes, the privacy-amplification length beside Tomamichel
2012's length recomputed from the same counts, and S beside 2 sqrt 2 (1 - 2Q) with its statistical
band. Then intercept-resend on every pair: the abort and S beside sqrt 2 V. Not a test (the assertions
live in tests/qcore/test_e91_bbm92.py); this prints what the closing note quotes.

python bench/e91_figures.py [--pairs 2e7] [--seeds 5]
"""

from __future__ import annotations

import argparse
import math
import time

from qlinkmed.qcore.channel import Eavesdropper, EveKind
from qlinkmed.qcore.channel_model import ChannelModel, predict_e91
from qlinkmed.qcore.finite_bb84 import tomamichel_length
from qlinkmed.qcore.params import ProtocolKind
from qlinkmed.qcore.sim import SimConfig, run_simulation

Z_1E6 = 4.89
"""Two-sided 1e-6 normal quantile: the band the tests use."""


def _band(chsh_trials: int, qber: float, sample_bits: int) -> float:
    # Four correlators on a quarter of the CHSH trials each (Var E <= 1/N), plus Q's own sampling error
    # carried through 2 sqrt 2 (1 - 2Q).
    q_sigma = math.sqrt(qber * (1 - qber) / sample_bits)
    return Z_1E6 * (math.sqrt(16 / chsh_trials) + 4 * math.sqrt(2) * q_sigma)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=float, default=2e7)
    parser.add_argument("--seeds", type=int, default=5, help="seeds 1..N")
    args = parser.parse_args()
    channel = ChannelModel(distance_km=0.0)
    visibility = float(predict_e91(channel).chsh) / (2 * math.sqrt(2))
    print(f"E91/BBM92, default detectors, 0 km, {args.pairs:.0e} pairs; visibility V = {visibility:.4f}")
    for seed in range(1, args.seeds + 1):
        start = time.perf_counter()
        result = run_simulation(
            SimConfig(protocol=ProtocolKind.E91, qubits=int(args.pairs), channel=channel, seed=seed)
        )
        elapsed = time.perf_counter() - start
        r = result.report()
        stats = result.bob.statistics
        if r["aborted"] or stats is None:
            print(f"seed {seed}: ABORTED {r['abort_reason']}: {r['abort_detail']}")
            continue
        formula = tomamichel_length(
            r["raw_key_bits"], r["sample_bits"], r["qber"], float(r["leaked_ec_bits"])
        ).length
        honest = 2 * math.sqrt(2) * (1 - 2 * r["qber"])
        band = _band(stats.chsh_trials, r["qber"], r["sample_bits"])
        print(
            f"seed {seed}: key {r['final_key_bits']:,} bits, hashes "
            f"{'equal' if r['alice_key_sha256'] == r['bob_key_sha256'] else 'DIFFERENT'}; PA output "
            f"{r['pa_output_bits']:,} vs Tomamichel on the same counts {formula:,}; Q {r['qber']:.4f}; "
            f"S {r['chsh_s']:.4f} [{r['chsh_lower']:.3f}, {r['chsh_upper']:.3f}] vs 2 sqrt2 (1-2Q) "
            f"{honest:.4f} +- {band:.4f} ({'inside' if abs(r['chsh_s'] - honest) <= band else 'OUTSIDE'}); "
            f"{elapsed:.1f} s"
        )
    for seed in range(1, args.seeds + 1):
        result = run_simulation(
            SimConfig(
                protocol=ProtocolKind.E91,
                qubits=int(args.pairs),
                channel=channel,
                eve=Eavesdropper(kind=EveKind.INTERCEPT_RESEND, fraction=1.0),
                seed=seed,
            )
        )
        r = result.report()
        stats = result.bob.statistics
        trials = stats.chsh_trials if stats is not None else 0
        band = Z_1E6 * math.sqrt(16 / trials) if trials else math.inf
        print(
            f"intercept-resend on all pairs, seed {seed}: "
            f"{'ABORTED ' + str(r['abort_reason']) if r['aborted'] else 'KEYED'}, key {r['final_key_bits']} "
            f"bits; S {r['chsh_s']:.4f} vs sqrt2 V {math.sqrt(2) * visibility:.4f} +- {band:.4f}"
        )


if __name__ == "__main__":
    main()
