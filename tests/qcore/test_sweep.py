"""`qlink sim sweep` writes the two plots and their data."""

from __future__ import annotations

import csv
from pathlib import Path

from qlinkmed.client.sweep_plots import DISTANCES_KM, EVE_FRACTIONS, write_sweep


def test_sweep_writes_csv_and_png(tmp_path: Path) -> None:
    files = write_sweep(tmp_path, qubits=300_000, wcp_qubits=300_000, e91_pairs=300_000, seed=2)
    names = sorted(f.name for f in files)
    assert names == ["eve_sweep.csv", "eve_sweep.png", "keyrate_vs_distance.csv", "keyrate_vs_distance.png"]
    for f in files:
        if f.suffix == ".png":
            assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    distance_rows = list(csv.DictReader((tmp_path / "keyrate_vs_distance.csv").open()))
    assert len(distance_rows) == 2 * len(DISTANCES_KM)
    eve_rows = list(csv.DictReader((tmp_path / "eve_sweep.csv").open()))
    assert len(eve_rows) == 2 * len(EVE_FRACTIONS)
    bb84 = [r for r in eve_rows if r["protocol"] == "bb84"]
    # Eve on every pulse: the QBER is far above the honest point and the round aborts.
    assert float(bb84[-1]["qber"]) > float(bb84[0]["qber"]) + 0.15
    assert bb84[-1]["aborted"] == "True"
    e91 = [r for r in eve_rows if r["protocol"] == "e91"]
    assert float(e91[-1]["chsh_s"]) < float(e91[0]["chsh_s"]) - 0.8
