"""Sealing-layer benchmark: the figures for issue 4 (goal: sealing a 1 KiB EHR message <= 20 us). Not a
test; timings vary on a shared machine, so each figure is the median over several batches.

    python bench/bench_seal.py            # all figures
    python bench/bench_seal.py --quick    # fewer repeats
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from collections.abc import Callable

import numpy as np

from qlinkmed.qlinkd.seal import Direction, Opener, Sealer, SendState, derive_traffic_key
from qlinkmed.qlinkd.seal.otp import open_otp, otp_key_bytes, seal_otp

KEY_IDS = [uuid.UUID(int=1)]
EHR_BYTES = 1024
CHUNK_BYTES = 1 << 20
GOAL_US = 20.0


def _median_per_call(fn: Callable[[], object], calls: int, batches: int) -> float:
    """Median seconds per call over `batches` batches of `calls` calls."""
    times = []
    for _ in range(batches):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls)
    return statistics.median(times)


def _pair(rng: np.random.Generator) -> tuple[Sealer, Opener]:
    key = derive_traffic_key(rng.bytes(32), KEY_IDS, direction=Direction.MASTER_TO_SLAVE)
    state = SendState(next_counter=0, bytes_sealed=0, started_at=0.0)
    return Sealer(key, state=state), Opener(key, started_at=0.0)


def bench_aead_small(rng: np.random.Generator, calls: int, batches: int) -> None:
    sealer, opener = _pair(rng)
    message = rng.bytes(EHR_BYTES)
    # The frames to open come first: the opener takes counters strictly in order, from 0.
    frames = iter([sealer.seal(message, now=1.0) for _ in range(calls * batches)])
    seal_s = _median_per_call(lambda: sealer.seal(message, now=1.0), calls, batches)
    open_s = _median_per_call(lambda: opener.open(next(frames), now=1.0), calls, batches)
    verdict = "meets" if seal_s * 1e6 <= GOAL_US else "MISSES"
    print(f"AEAD seal 1 KiB : {seal_s * 1e6:7.2f} us median ({verdict} the {GOAL_US:.0f} us goal)")
    print(f"AEAD open 1 KiB : {open_s * 1e6:7.2f} us median")


def bench_otp_small(rng: np.random.Generator, calls: int, batches: int) -> None:
    message = rng.bytes(EHR_BYTES)
    # One fresh pad per message, as in use: key material is never reused.
    pads = [rng.bytes(otp_key_bytes(EHR_BYTES)) for _ in range(calls * batches)]
    it = iter(pads)
    seal_s = _median_per_call(lambda: seal_otp(message, next(it), KEY_IDS), calls, batches)
    sealed = [seal_otp(message, pad, KEY_IDS).frame for pad in pads]
    pairs = iter(zip(sealed, pads, strict=True))

    def open_one() -> bytes:
        frame, pad = next(pairs)
        return open_otp(frame, pad)

    open_s = _median_per_call(open_one, calls, batches)
    verdict = "meets" if seal_s * 1e6 <= GOAL_US else "MISSES"
    print(
        f"OTP  seal 1 KiB : {seal_s * 1e6:7.2f} us median ({verdict} the {GOAL_US:.0f} us goal), "
        f"key {8 * otp_key_bytes(EHR_BYTES)} bits per message"
    )
    print(f"OTP  open 1 KiB : {open_s * 1e6:7.2f} us median")


def bench_aead_bulk(rng: np.random.Generator, calls: int, batches: int) -> None:
    sealer, opener = _pair(rng)
    chunk = rng.bytes(CHUNK_BYTES)
    # The frames to open come first: the opener takes counters strictly in order, from 0.
    frames = iter([sealer.seal(chunk, now=1.0) for _ in range(calls * batches)])
    seal_s = _median_per_call(lambda: sealer.seal(chunk, now=1.0), calls, batches)
    open_s = _median_per_call(lambda: opener.open(next(frames), now=1.0), calls, batches)
    print(f"AEAD seal 1 MiB : {CHUNK_BYTES / seal_s / 1e9:7.2f} GB/s ({seal_s * 1e3:.3f} ms per chunk)")
    print(f"AEAD open 1 MiB : {CHUNK_BYTES / open_s / 1e9:7.2f} GB/s ({open_s * 1e3:.3f} ms per chunk)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args()
    rng = np.random.default_rng(2024)
    small_calls, small_batches = (500, 5) if args.quick else (2000, 15)
    bulk_calls, bulk_batches = (10, 3) if args.quick else (20, 9)
    bench_aead_small(rng, small_calls, small_batches)
    bench_otp_small(rng, small_calls, small_batches)
    bench_aead_bulk(rng, bulk_calls, bulk_batches)


if __name__ == "__main__":
    main()
