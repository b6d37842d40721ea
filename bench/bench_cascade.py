"""Cascade benchmark: throughput, efficiency, round trips and residual errors on i.i.d. errors.

For each QBER, N blocks of n random bits get i.i.d. errors; both parties run in this process and every
message goes through encode() and decode(). Efficiency is leaked bits / (n h(Q)) with Q the block's
actual error rate. Time covers both parties' setup (permutations included) and the whole exchange.

    .venv/bin/python bench/bench_cascade.py                  # 20 blocks of 1e5 bits, both schedules
    .venv/bin/python bench/bench_cascade.py --blocks 1000 --schedule low-latency
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from qlinkmed.qcore.cascade_pair import reconcile
from qlinkmed.qcore.cascade_schedule import CascadeSchedule, low_latency_schedule, option8_schedule

SCHEDULES = {"option8": option8_schedule, "low-latency": low_latency_schedule}


def binary_entropy(q: float) -> float:
    if q <= 0.0 or q >= 1.0:
        return 0.0
    return float(-q * np.log2(q) - (1 - q) * np.log2(1 - q))


def run(name: str, qber: float, n: int, blocks: int, seed: int) -> str:
    schedule: CascadeSchedule = SCHEDULES[name](n, qber)
    rng = np.random.default_rng([seed, round(qber * 1e6), n])
    seconds, efficiency, trips, nbytes = [], [], [], []
    residual = 0
    for i in range(blocks):
        alice = (rng.random(n) < 0.5).astype(np.uint8)
        errors = rng.random(n) < qber
        bob = alice ^ errors
        start = time.perf_counter()
        result = reconcile(alice, bob, schedule, seed=int(rng.integers(0, 2**63)))
        seconds.append(time.perf_counter() - start)
        actual = float(np.count_nonzero(errors)) / n
        efficiency.append(result.leaked_bits / (n * binary_entropy(actual)) if actual else float("nan"))
        trips.append(result.round_trips)
        nbytes.append(result.bytes_exchanged)
        residual += int(not np.array_equal(result.bob_key, alice))
        del i
    median = float(np.median(seconds))
    return (
        f"{name:>11}  Q={qber:5.3f}  {n / median / 1e6:6.2f} Mbit/s (median {median * 1e3:6.1f} ms, "
        f"p90 {np.percentile(seconds, 90) * 1e3:6.1f} ms)  f={np.nanmean(efficiency):.4f} "
        f"(sd {np.nanstd(efficiency):.4f})  round trips {np.mean(trips):6.1f} (max {max(trips)})  "
        f"{np.mean(nbytes) / 1024:6.1f} KiB  residual-error blocks {residual}/{blocks}  "
        f"blocks {schedule.block_sizes[:3]}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=20, help="blocks per QBER (default 20)")
    parser.add_argument("--n", type=int, default=100_000, help="bits per block (default 1e5)")
    parser.add_argument("--qber", type=float, nargs="+", default=[0.01, 0.02, 0.05])
    parser.add_argument("--schedule", choices=[*SCHEDULES, "both"], default="both")
    parser.add_argument("--seed", type=int, default=2024)
    args = parser.parse_args()
    names = list(SCHEDULES) if args.schedule == "both" else [args.schedule]
    for name in names:
        for qber in args.qber:
            print(run(name, qber, args.n, args.blocks, args.seed), flush=True)


if __name__ == "__main__":
    main()
