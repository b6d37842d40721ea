"""What the OS CSPRNG costs a round (issue 14, item 1). Not a test; timings vary on a shared machine, so
every figure is the median of several repeats.

    python bench/bench_randomness.py                 # 1,000,000 pulses per round, 15 repeats
    python bench/bench_randomness.py --pulses 200000 --repeats 31

For one round of the daemon's defaults it times every draw a link end makes: Alice's bits and bases (and
decoy classes for a weak-coherent-pulse source), Bob's bases, the sample over the key candidates (about
3.3 % of the pulses at 10 km), the Cascade seed and the two Toeplitz seeds (about 7 % of the pulses each).
Three ways: the old single PCG64 stream (numpy's own calls, as the daemon drew them before), the same
draws through ``RandomSource`` on a seeded PCG64 (the simulator's path), and through ``RandomSource`` on
``os.urandom`` (the daemon's path). The last line prints the raw throughput of ``os.urandom`` in bulk.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import numpy as np

from qlinkmed.qcore.params import DecoySource
from qlinkmed.qcore.randomness import RandomSource

CANDIDATE_SHARE = 0.033
SEED_SHARE = 0.07


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def old_pcg64_round(rng: np.random.Generator, n: int, decoy: bool) -> None:
    """The draws as the daemon made them before: one PCG64 generator for everything."""
    np.unpackbits(np.frombuffer(rng.bytes((n + 7) // 8), dtype=np.uint8), count=n)
    np.unpackbits(np.frombuffer(rng.bytes((n + 7) // 8), dtype=np.uint8), count=n)
    if decoy:
        rng.choice(3, size=n, p=np.asarray(DecoySource().probabilities)).astype(np.uint8)
    rng.integers(0, 2, size=n, dtype=np.uint8)  # Bob's bases
    candidates = int(n * CANDIDATE_SHARE)
    rng.choice(candidates, size=round(0.3 * candidates), replace=False)
    int(rng.integers(0, 2**63))
    seed_bits = int(n * SEED_SHARE)
    for _ in range(2):
        np.unpackbits(np.frombuffer(rng.bytes((seed_bits + 7) // 8), dtype=np.uint8), count=seed_bits)


def source_round(secret: RandomSource, public: RandomSource, n: int, decoy: bool) -> None:
    """The same draws as the sessions make them now."""
    secret.bits(n)
    secret.bits(n)
    if decoy:
        secret.choice(DecoySource().probabilities, n)
    secret.integers(2, n)  # Bob's bases
    candidates = int(n * CANDIDATE_SHARE)
    secret.subset_mask(candidates, round(0.3 * candidates))
    public.uint63()
    seed_bits = int(n * SEED_SHARE)
    public.bits(seed_bits)
    public.bits(seed_bits)


def compare(n: int, decoy: bool, repeats: int) -> str:
    rng = np.random.default_rng(1)
    old = _median_ms(lambda: old_pcg64_round(rng, n, decoy), repeats)
    seeded = RandomSource.seeded(2), RandomSource.seeded(3)
    sim = _median_ms(lambda: source_round(*seeded, n, decoy), repeats)
    system = RandomSource(os.urandom), RandomSource(os.urandom)
    daemon = _median_ms(lambda: source_round(*system, n, decoy), repeats)
    label = "decoy (WCP) source  " if decoy else "single-photon source"
    return (
        f"{label}  PCG64 (before) {old:7.2f} ms   seeded RandomSource {sim:7.2f} ms   "
        f"os.urandom RandomSource {daemon:7.2f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pulses", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    n, repeats = args.pulses, args.repeats
    print(f"randomness per link round ({n:,} pulses, median of {repeats})")
    for decoy in (False, True):
        print(compare(n, decoy, repeats))
    size = 8 * 2**20
    ms = _median_ms(lambda: os.urandom(size), repeats)
    print(f"os.urandom throughput: {size / 2**20 / (ms / 1e3):,.0f} MiB/s ({size >> 20} MiB per call)")


if __name__ == "__main__":
    main()
