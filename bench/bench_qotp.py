"""QOTPE cost against the number of records (issue 18, Build 5), on synthetic tables shaped like seed
paper 003's three data sets, with the numpy path (production) and the qiskit-aer circuit path (24 qubits
a circuit: the cross-check) side by side.

    .venv/bin/python bench/bench_qotp.py                       # table + docs/img/qotp_cost.png
    .venv/bin/python bench/bench_qotp.py --records 100 1000 --runs 3 --no-plot

The tables are generated here, seeded, as CSV text (what an EHR export of them looks like), with the
columns of the public sets the paper used: a COVID-19 surveillance line list (date, county, state,
fips, cases, deaths, age group, sex, hospitalised, ICU), TCGA glioma grading (grade, gender, age at
diagnosis, race and 20 mutation flags) and the Pima diabetes set (8 measurements and the outcome).
Their values are synthetic; only the row sizes matter for the cost. Key material comes from os.urandom
here (the daemon cuts it from the key pool: 2 key bytes per data byte). Each figure is the median of
--runs runs of encrypt + decrypt of the whole table.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from qlinkmed.qcore.qotp import CIRCUIT_MAX_BITS, QotpKey, circuit_encrypt, decrypt, encrypt

ROOT = Path(__file__).resolve().parents[1]
LINK_RATE_BPS = 698_000
"""The sustained key rate of a 10 km BB84 link measured in docs/benchmarks.md (issue 16): what the pad
really costs is key, two bits for every data bit."""
CIRCUIT_RECORDS = (1, 3, 10)
"""The circuit path runs one circuit per CIRCUIT_MAX_BITS / 8 bytes: measured on a few records, and its
per-byte cost extrapolated in the table (marked)."""


def covid(rng: np.random.Generator, n: int) -> str:
    out = io.StringIO()
    out.write("date,county,state,fips,cases,deaths,age_group,sex,hospitalised,icu\n")
    for i in range(n):
        out.write(
            f"2020-{3 + i % 10:02d}-{1 + i % 28:02d},County{rng.integers(1, 3000)},ST{rng.integers(1, 51)},"
            f"{rng.integers(1000, 57000):05d},{rng.integers(0, 5000)},{rng.integers(0, 200)},"
            f"{rng.choice(['0-17', '18-49', '50-64', '65+'])},{rng.choice(['F', 'M'])},"
            f"{rng.choice(['Yes', 'No'])},{rng.choice(['Yes', 'No'])}\n"
        )
    return out.getvalue()


def glioma(rng: np.random.Generator, n: int) -> str:
    genes = [f"G{k}" for k in range(20)]
    out = io.StringIO()
    out.write("grade,gender,age_at_diagnosis,race," + ",".join(genes) + "\n")
    for _ in range(n):
        flags = ",".join(str(int(b)) for b in rng.integers(0, 2, len(genes)))
        out.write(
            f"{rng.choice(['LGG', 'GBM'])},{rng.choice(['Male', 'Female'])},{rng.uniform(14, 89):.2f},"
            f"{rng.choice(['white', 'black or african american', 'asian'])},{flags}\n"
        )
    return out.getvalue()


def diabetes(rng: np.random.Generator, n: int) -> str:
    out = io.StringIO()
    out.write("pregnancies,glucose,blood_pressure,skin_thickness,insulin,bmi,pedigree,age,outcome\n")
    for _ in range(n):
        out.write(
            f"{rng.integers(0, 17)},{rng.integers(44, 199)},{rng.integers(24, 122)},{rng.integers(7, 99)},"
            f"{rng.integers(14, 846)},{rng.uniform(18, 67):.1f},{rng.uniform(0.08, 2.42):.3f},"
            f"{rng.integers(21, 81)},{rng.integers(0, 2)}\n"
        )
    return out.getvalue()


TABLES: dict[str, Callable[[np.random.Generator, int], str]] = {
    "covid19": covid,
    "tcga_glioma": glioma,
    "diabetes": diabetes,
}


def numpy_seconds(data: bytes) -> float:
    key = QotpKey.from_material(os.urandom(2 * len(data)))
    started = time.perf_counter()
    cipher = encrypt(data, key)
    plain = decrypt(cipher, key)
    elapsed = time.perf_counter() - started
    if plain != data:
        raise SystemExit("decrypt(encrypt(x)) != x")
    return elapsed


def circuit_seconds(data: bytes) -> float:
    """Encrypt with the circuit path, CIRCUIT_MAX_BITS at a time, checked against the numpy path."""
    step = CIRCUIT_MAX_BITS // 8
    started = time.perf_counter()
    for at in range(0, len(data), step):
        chunk = data[at : at + step]
        key = QotpKey.from_material(os.urandom(2 * len(chunk)))
        if circuit_encrypt(chunk, key) != encrypt(chunk, key):
            raise SystemExit("the circuit and numpy paths disagree")
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, nargs="+", default=[10, 100, 1_000, 10_000, 100_000])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "qotp_cost.png")
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    # Warm the circuit path once (qiskit's import and the simulator's first run are not per-record costs).
    circuit_seconds(b"abc")
    results: dict[str, list[tuple[int, int, float]]] = {}
    circuit: dict[str, float] = {}
    print(
        f"{'table':<12} {'records':>8} {'bytes':>11} {'numpy enc+dec':>14} {'MB/s':>8} {'circuit (est.)':>15}"
        f" {'key (Mbit)':>11} {'link time':>10}"
    )
    for name, make in TABLES.items():
        sample = make(rng, max(CIRCUIT_RECORDS)).encode()
        per_byte = statistics.median(circuit_seconds(sample[: len(sample) // 3]) for _ in range(3)) / (
            len(sample) // 3
        )
        circuit[name] = per_byte
        for n in args.records:
            data = make(rng, n).encode()
            seconds = statistics.median(numpy_seconds(data) for _ in range(args.runs))
            results.setdefault(name, []).append((n, len(data), seconds))
            print(
                f"{name:<12} {n:>8,} {len(data):>11,} {seconds * 1e3:>11.3f} ms"
                f" {len(data) / seconds / 1e6:>8.0f}"
                f" {per_byte * len(data):>13.1f} s {16 * len(data) / 1e6:>11.2f}"
                f" {16 * len(data) / LINK_RATE_BPS:>8.1f} s"
            )
    rate = f"{LINK_RATE_BPS / 1e3:.0f} kbit/s"
    print(f"key: 2 bits per data bit; link time: that key at {rate} (10 km BB84)")
    print(
        f"circuit path: measured on {max(CIRCUIT_RECORDS)} records, one {CIRCUIT_MAX_BITS}-qubit circuit"
        f" per {CIRCUIT_MAX_BITS // 8} bytes; (est.) = per byte x size"
    )
    if not args.no_plot:
        plot(results, circuit, args.out)
        print(f"plot: {args.out}")
    return 0


def plot(results: dict[str, list[tuple[int, int, float]]], circuit: dict[str, float], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, rows in results.items():
        records = [r[0] for r in rows]
        (line,) = ax.plot(records, [r[2] for r in rows], marker="o", label=f"{name}: numpy")
        ax.plot(
            records,
            [circuit[name] * r[1] for r in rows],
            linestyle="--",
            color=line.get_color(),
            label=f"{name}: circuit (extrapolated)",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("records")
    ax.set_ylabel("encrypt + decrypt (s)")
    ax.set_title("QOTPE cost against table size (median of runs)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
