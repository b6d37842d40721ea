"""Draw and write the sweeps of `qlink sim sweep` (CSV for analysis, PNG for people)."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np

DISTANCES_KM = [0.0, 10.0, 20.0, 30.0, 40.0, 50.0]
EVE_FRACTIONS = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0]


def _write_csv(path: Path, rows: list) -> None:
    fields = [f.name for f in dataclasses.fields(rows[0])]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow(dataclasses.asdict(row))


def write_sweep(
    out_dir: str | Path, *, qubits: int, wcp_qubits: int, e91_pairs: int, seed: int
) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from qlinkmed.qcore.constants import TSIRELSON_BOUND
    from qlinkmed.qcore.params import DistillConfig, SourceKind
    from qlinkmed.qcore.sweep import distance_sweep, eve_sweep, eve_theory, theory_curves

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    # 1. Key rate against distance.
    points = distance_sweep(
        DISTANCES_KM, qubits={SourceKind.SINGLE_PHOTON: qubits, SourceKind.WCP: wcp_qubits}, seed=seed
    )
    grid = np.linspace(0.0, 150.0, 301)
    curves = theory_curves(grid, qubits=qubits)
    _write_csv(out / "keyrate_vs_distance.csv", points)
    written.append(out / "keyrate_vs_distance.csv")
    fig, ax = plt.subplots(figsize=(7.5, 5))
    ax.semilogy(
        grid,
        np.where(curves.single_photon_asymptotic > 0, curves.single_photon_asymptotic, np.nan),
        label="single-photon BB84, asymptotic (f = 1.1)",
    )
    ax.semilogy(
        grid,
        np.where(curves.decoy_asymptotic > 0, curves.decoy_asymptotic, np.nan),
        label="decoy BB84 (GLLP, mu 0.5, nu 0.1), asymptotic",
    )
    ax.semilogy(
        grid,
        np.where(curves.single_photon_finite > 0, curves.single_photon_finite, np.nan),
        "--",
        label=f"single-photon, finite key at {qubits:.0e} pulses",
    )
    for source, marker in (("single-photon", "o"), ("wcp", "s")):
        sel = [p for p in points if p.source == source and p.final_key_bits > 0]
        ax.semilogy(
            [p.distance_km for p in sel],
            [p.key_per_pulse for p in sel],
            marker,
            ls="none",
            label=f"simulated: {source}, {qubits if source == 'single-photon' else wcp_qubits:.0e} pulses",
        )
    floor = ax.get_ylim()[0]
    for source, colour in (("single-photon", "tab:red"), ("wcp", "tab:purple")):
        aborted = [p for p in points if p.source == source and p.final_key_bits == 0]
        ax.plot([p.distance_km for p in aborted], [floor] * len(aborted), "x", color=colour, clip_on=False)
    ax.set_xlabel("fibre length (km)")
    ax.set_ylabel("secret key bits per pulse")
    ax.set_title("Secret key rate against distance (x on the axis: aborted, no key)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "keyrate_vs_distance.png", dpi=120)
    plt.close(fig)
    written.append(out / "keyrate_vs_distance.png")

    # 2. QBER and CHSH against the eavesdropper's share.
    eve_points = eve_sweep(EVE_FRACTIONS, qubits=qubits, e91_pairs=e91_pairs, seed=seed)
    _write_csv(out / "eve_sweep.csv", eve_points)
    written.append(out / "eve_sweep.csv")
    p_grid = np.linspace(0.0, 1.0, 101)
    q_theory, s_theory = eve_theory(p_grid)
    tolerance = DistillConfig().qber_tolerance
    fig, (ax_q, ax_s) = plt.subplots(1, 2, figsize=(11, 4.5))
    bb = [p for p in eve_points if p.protocol == "bb84"]
    ax_q.plot(p_grid, q_theory, label="theory: Q0 + p(1 - 2 Q0)/4")
    ax_q.plot([p.eve_fraction for p in bb], [p.qber for p in bb], "o", label="measured QBER")
    ax_q.plot([p.eve_fraction for p in bb], [p.qber_upper for p in bb], "v", label="finite-size upper bound")
    ax_q.axhline(tolerance, color="red", ls="--", label=f"abort threshold {tolerance:.0%}")
    ax_q.set_xlabel("fraction of pulses intercepted")
    ax_q.set_ylabel("QBER")
    ax_q.set_title("BB84 under intercept-resend")
    ax_q.legend(fontsize=8)
    ax_q.grid(alpha=0.3)
    e91 = [p for p in eve_points if p.protocol == "e91"]
    ax_s.plot(p_grid, s_theory, label="theory: S0 (1 - p/2)")
    ax_s.plot([p.eve_fraction for p in e91], [p.chsh_s for p in e91], "o", label="measured S")
    ax_s.plot(
        [p.eve_fraction for p in e91], [p.chsh_lower for p in e91], "v", label="finite-size lower bound"
    )
    ax_s.axhline(2.0, color="red", ls="--", label="classical limit 2 (abort at or below)")
    ax_s.axhline(TSIRELSON_BOUND, color="grey", ls=":", label="2 sqrt 2")
    ax_s.set_xlabel("fraction of pairs intercepted")
    ax_s.set_ylabel("CHSH S")
    ax_s.set_title("E91 under intercept-resend")
    ax_s.legend(fontsize=8)
    ax_s.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "eve_sweep.png", dpi=120)
    plt.close(fig)
    written.append(out / "eve_sweep.png")
    return written
