"""qcore benchmark: prints the figures the README quotes. Not a test; timings vary on a shared machine, so
every figure is the median of several runs.

    python bench/bench_qcore.py            # all figures
    python bench/bench_qcore.py --quick    # fewer repeats
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable
from typing import TypeVar

import numpy as np

from qlinkmed.qcore.backends import get_backend
from qlinkmed.qcore.cascade_pair import reconcile
from qlinkmed.qcore.cascade_schedule import low_latency_schedule
from qlinkmed.qcore.channel_model import ChannelModel
from qlinkmed.qcore.params import ProtocolKind
from qlinkmed.qcore.sim import SimConfig, SimResult, run_simulation
from qlinkmed.qcore.theory import binary_entropy
from qlinkmed.qcore.toeplitz import toeplitz_hash

R = TypeVar("R")


def _median_time(fn: Callable[[], R], repeats: int) -> tuple[float, list[R]]:
    times: list[float] = []
    results: list[R] = []
    for _ in range(repeats):
        start = time.perf_counter()
        results.append(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times), results


def bench_end_to_end(backend: str, pulses: int, repeats: int) -> None:
    channel = ChannelModel(distance_km=10.0, misalignment=0.02)
    seeds = iter(range(1, 1000))

    def one() -> SimResult:
        return run_simulation(SimConfig(qubits=pulses, channel=channel, backend=backend, seed=next(seeds)))

    one()  # warm-up (imports, qiskit circuit cache)
    t, results = _median_time(one, repeats)
    keys = [r.report()["final_key_bits"] for r in results]
    detected = statistics.median(r.detected for r in results)
    print(
        f"end to end, BB84 10 km, {backend:6s}: {pulses:,} pulses in {t * 1e3:7.1f} ms median of {repeats} "
        f"-> {pulses / t / 1e6:6.2f} M pulses/s sent, {detected / t / 1e6:5.2f} M detections/s; "
        f"final key {statistics.median(keys):,.0f} bits ({sum(k > 0 for k in keys)}/{repeats} established)"
    )


def bench_e91(pulses: int, repeats: int) -> None:
    seeds = iter(range(1, 1000))

    def one() -> SimResult:
        return run_simulation(
            SimConfig(
                protocol=ProtocolKind.E91,
                qubits=pulses,
                channel=ChannelModel(distance_km=0.0),
                seed=next(seeds),
            )
        )

    t, results = _median_time(one, repeats)
    r = results[0].report()
    print(
        f"end to end, E91 0 km, numpy: {pulses:,} pairs in {t * 1e3:.1f} ms "
        f"-> {pulses / t / 1e6:.2f} M pairs/s; "
        f"S = {r['chsh_s']:.3f}, final key {r['final_key_bits']:,} bits"
    )


def bench_backend_only(pulses: int, repeats: int) -> None:
    rng = np.random.default_rng(1)
    bits = rng.integers(0, 2, pulses, dtype=np.uint8)
    bases = rng.integers(0, 2, pulses, dtype=np.uint8)
    meas = rng.integers(0, 2, pulses, dtype=np.uint8)
    for name in ("numpy", "qiskit"):
        backend = get_backend(name)
        backend.measure_photons(bits[:1000], bases[:1000], meas[:1000], 0.02, rng)
        t, _ = _median_time(functools.partial(backend.measure_photons, bits, bases, meas, 0.02, rng), repeats)
        print(
            f"measurement backend {name:6s}: {pulses:,} qubits in {t * 1e3:7.1f} ms "
            f"-> {pulses / t / 1e6:6.2f} M qubits/s"
        )


def bench_toeplitz(repeats: int) -> None:
    rng = np.random.default_rng(2)
    for n, m in ((1_000_000, 500_000), (30_000, 10_000)):
        x = rng.integers(0, 2, n, dtype=np.uint8)
        seed = rng.integers(0, 2, n + m - 1, dtype=np.uint8)
        t, _ = _median_time(functools.partial(toeplitz_hash, seed, x, m), repeats)
        print(f"Toeplitz hash {n:>9,} -> {m:>7,} bits: {t * 1e3:7.1f} ms median of {repeats}")


def bench_cascade(n: int, blocks: int) -> None:
    rng = np.random.default_rng(3)
    for q in (0.01, 0.02, 0.05):
        rates, effs, trips, residual = [], [], [], 0
        for b in range(blocks):
            alice = rng.integers(0, 2, n, dtype=np.uint8)
            errors = rng.random(n) < q
            bob = alice ^ errors.astype(np.uint8)
            actual = errors.mean()
            start = time.perf_counter()
            result = reconcile(alice, bob, low_latency_schedule(n, actual), seed=b + 1)
            rates.append(n / (time.perf_counter() - start))
            effs.append(result.leaked_bits / (n * float(binary_entropy(actual))))
            trips.append(result.round_trips)
            residual += int(not np.array_equal(result.bob_key, alice))
        print(
            f"Cascade {n:,}-bit blocks, QBER {q:.0%}: {statistics.median(rates) / 1e6:5.2f} Mbit/s median, "
            f"efficiency {np.mean(effs):.4f} mean (max {np.max(effs):.4f}), "
            f"{np.mean(trips):.1f} round trips, {residual}/{blocks} blocks with residual errors"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args()
    repeats = 3 if args.quick else 7
    print(f"qcore benchmark ({repeats} repeats, median)")
    bench_end_to_end("numpy", 1_000_000, repeats)
    bench_end_to_end("qiskit", 1_000_000, max(3, repeats // 2))
    bench_backend_only(1_000_000, max(3, repeats // 2))
    bench_e91(10_000_000, 3)
    bench_toeplitz(repeats)
    bench_cascade(100_000, 10 if args.quick else 40)


if __name__ == "__main__":
    main()
