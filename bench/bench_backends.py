"""Throughput of the measurement backends: photons (BB84) and pairs (E91) measured per second.

    .venv/bin/python bench/bench_backends.py                 # 1e6 photons, 1e6 pairs, median of 5
    .venv/bin/python bench/bench_backends.py --profile       # pyinstrument profile of one qiskit photon run

The product requires the qiskit backend to sustain at least 1e6 measured qubits per second; the script
prints whether it does (a photon is one qubit, a pair two). Each figure is the median of --repeats timed
calls after one untimed warm-up call (which imports qiskit and builds the circuits).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

from qlinkmed.qcore.backends import get_backend
from qlinkmed.qcore.backends.qiskit_backend import QiskitBackend

REQUIRED_QUBITS_PER_S = 1e6


def _median_seconds(call: Callable[[int], object], repeats: int) -> float:
    call(-1)  # warm-up: imports, circuit building, caches
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        call(i)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _photon_call(backend, n: int, flip: float, seed: int) -> Callable[[int], object]:
    rng = np.random.default_rng(seed)
    bits, bases, meas = (rng.integers(0, 2, n, dtype=np.uint8) for _ in range(3))
    return lambda i: backend.measure_photons(bits, bases, meas, flip, np.random.default_rng(seed + 1 + i))


def _pair_call(backend, n: int, flip: float, seed: int, *, eve: bool) -> Callable[[int], object]:
    rng = np.random.default_rng(seed)
    a8 = rng.integers(0, 3, n).astype(np.int8)
    b8 = rng.integers(1, 4, n).astype(np.int8)
    e8 = (rng.integers(0, 2, n) * 2).astype(np.int8) if eve else np.full(n, -1, np.int8)
    return lambda i: backend.measure_pairs(a8, b8, e8, flip, flip, np.random.default_rng(seed + 1 + i))


def _row(label: str, n: int, seconds: float, qubits_per_item: int) -> float:
    rate = n / seconds
    print(
        f"  {label:<34} {n:>9,d} in {seconds * 1e3:8.1f} ms  {rate:>14,.0f} /s  "
        f"{rate * qubits_per_item:>14,.0f} qubits/s"
    )
    return rate * qubits_per_item


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--photons", type=float, default=1e6, help="photons per call (default 1e6)")
    parser.add_argument("--pairs", type=float, default=1e6, help="honest pairs per call (default 1e6)")
    parser.add_argument(
        "--eve-pairs", type=float, default=1e5, help="pairs per call with Eve on every pair (default 1e5)"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per figure (median; default 5)")
    parser.add_argument("--flip", type=float, default=0.03, help="misalignment probability (default 0.03)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--profile", action="store_true", help="profile one qiskit photon call and exit")
    args = parser.parse_args(argv)
    n_photons, n_pairs, n_eve = int(args.photons), int(args.pairs), int(args.eve_pairs)

    if args.profile:
        from pyinstrument import Profiler

        call = _photon_call(get_backend("qiskit"), n_photons, args.flip, args.seed)
        call(-1)
        with Profiler() as profiler:
            call(0)
        print(profiler.output_text(unicode=True, color=False))
        return 0

    backends = {
        "numpy": get_backend("numpy"),
        "qiskit": get_backend("qiskit"),
        "qiskit (deferred Eve)": QiskitBackend(defer_eve_measurement=True),
    }
    print(f"median of {args.repeats} calls, flip {args.flip}")
    qiskit_rates: list[float] = []
    for name, backend in backends.items():
        print(name)
        if name != "qiskit (deferred Eve)":
            seconds = _median_seconds(_photon_call(backend, n_photons, args.flip, args.seed), args.repeats)
            rate = _row("BB84 photons", n_photons, seconds, 1)
            if name == "qiskit":
                qiskit_rates.append(rate)
            call = _pair_call(backend, n_pairs, args.flip, args.seed, eve=False)
            rate = _row("E91 pairs, honest", n_pairs, _median_seconds(call, args.repeats), 2)
            if name == "qiskit":
                qiskit_rates.append(rate)
        call = _pair_call(backend, n_eve, args.flip, args.seed, eve=True)
        _row("E91 pairs, Eve on every pair", n_eve, _median_seconds(call, args.repeats), 2)

    ok = min(qiskit_rates) >= REQUIRED_QUBITS_PER_S
    print(
        f"requirement: qiskit >= {REQUIRED_QUBITS_PER_S:,.0f} measured qubits/s without Eve: "
        f"{'met' if ok else 'NOT met'} (slowest {min(qiskit_rates):,.0f}/s)"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
