"""Photon-number splitting against the decoy estimate: honest key, PNS outcome and the true single-photon
bound at 10, 25 and 50 km (issue 15, item 4).

    PYTHONPATH=. .venv/bin/python bench/pns_table.py                 # 2e8 pulses at 10 km, 1e9 beyond
    PYTHONPATH=. .venv/bin/python bench/pns_table.py --pulses 1e9    # the same count everywhere

The true bound (qcore.eve_bound) is the asymptotic key of the single-photon and vacuum detections of the
attacked channel: n_X (f_0 + f_1 (1 - h(e_1))) - leak_EC. For an aborted round, which never reached error
correction, it is shown on the honest round's key bits and leak (the signal gain, hence the bulk of the
detections, is the same by construction).
"""

from __future__ import annotations

import argparse

from qlinkmed.qcore.channel import Eavesdropper, EveKind
from qlinkmed.qcore.channel_model import ChannelModel
from qlinkmed.qcore.eve_bound import true_single_photon
from qlinkmed.qcore.params import DecoySource, SourceKind
from qlinkmed.qcore.sim import SimConfig, run_simulation

DEFAULT_PULSES = {10.0: 200_000_000, 25.0: 1_000_000_000, 50.0: 1_000_000_000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pulses", type=float, default=None, help="pulses per round (default per distance)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    decoy = DecoySource()
    print(
        "| km | pulses | honest key (bits) | true bound, honest | PNS outcome | true bound under PNS"
        " | f_1 honest / PNS |"
    )
    print("|---|---|---|---|---|---|---|")
    for km, pulses in DEFAULT_PULSES.items():
        n = int(args.pulses) if args.pulses else pulses
        model = ChannelModel(distance_km=km)
        reports = {}
        for eve in (Eavesdropper(), Eavesdropper(kind=EveKind.PNS)):
            cfg = SimConfig(qubits=n, channel=model, source=SourceKind.WCP, eve=eve, seed=args.seed)
            reports[eve.kind] = run_simulation(cfg).report()
        honest, pns = reports[EveKind.NONE], reports[EveKind.PNS]
        b_honest = true_single_photon(model, decoy, Eavesdropper())
        b_pns = true_single_photon(model, decoy, Eavesdropper(kind=EveKind.PNS))
        basis = pns if not pns["aborted"] else honest
        outcome = f"abort: {pns['abort_reason']}" if pns["aborted"] else f"key {pns['final_key_bits']}"
        print(
            f"| {km:g} | {n:.0e} | {honest['final_key_bits']} "
            f"| {b_honest.length(honest['raw_key_bits'], honest['leaked_ec_bits']):.0f} | {outcome} "
            f"| {max(0.0, b_pns.length(basis['raw_key_bits'], basis['leaked_ec_bits'])):.0f} "
            f"| {b_honest.single_share:.3f} / {b_pns.single_share:.3f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
