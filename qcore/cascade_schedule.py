"""Cascade schedules: the top-level block size of each pass, from the key length and the estimated QBER.

Three schedules: Martinez-Mateo et al.'s option (8), the lowest leak; ``low_latency_schedule``, about
five times fewer round trips for about 1.5 % more leak (:mod:`qlinkmed.qcore.cascade` says why the round
trips follow the second pass's block size); and ``few_round_trips_schedule``, another 40 % fewer round
trips for about 4 % more leak, for links whose round trips cost tens of milliseconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import ConfigError
from .params import CascadeKind

OPTION8_PASSES = 14
"""Number of passes in the Martinez-Mateo option (8) schedule."""
LOW_LATENCY_PASSES = 10
"""Number of passes of ``low_latency_schedule``."""
FEW_ROUND_TRIPS_PASSES = 8
"""Number of passes of ``few_round_trips_schedule``."""

OPTION8_THIRD_BLOCK = 4096
"""Top-level block size of the third pass in option (8)."""

QBER_FLOOR = 1e-4
"""QBER assumed when sizing blocks for an estimate of zero (or below this)."""

_MAX_PASSES = 256  # the pass index travels as a u8
MAX_KEY_BITS = (1 << 32) - 1  # range ends travel as u32


@dataclass(frozen=True, slots=True)
class CascadeSchedule:
    """The top-level block size of each pass; the last block of a pass may be shorter.

    A block size larger than the key is read as the whole key."""

    block_sizes: tuple[int, ...]

    def __post_init__(self) -> None:
        if not 1 <= len(self.block_sizes) <= _MAX_PASSES:
            raise ConfigError("block_sizes", f"need 1 to {_MAX_PASSES} passes, got {len(self.block_sizes)}")
        for size in self.block_sizes:
            if not isinstance(size, int | np.integer) or isinstance(size, bool) or size < 1:
                raise ConfigError("block_sizes", f"block sizes must be positive integers, got {size!r}")


def check_length(n: int) -> int:
    """The key length `n` as an int, or ConfigError unless it is an integer in [1, MAX_KEY_BITS]."""
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or not 1 <= n <= MAX_KEY_BITS:
        raise ConfigError("n", f"key length must be an integer in [1, {MAX_KEY_BITS}], got {n!r}")
    return int(n)


def _alpha(qber: float) -> float:
    if not isinstance(qber, int | float | np.floating) or not math.isfinite(qber):
        raise ConfigError("qber", f"must be a finite number, got {qber!r}")
    q = min(max(float(qber), QBER_FLOOR), 0.5)
    return math.log2(1.0 / q) - 0.5


def _schedule(n: int, first: list[int], passes: int = OPTION8_PASSES) -> CascadeSchedule:
    """The given first block sizes, then ceil(n/2) up to `passes` passes, clamped to [min(2, n), n]."""
    sizes = first + [-(-n // 2)] * (passes - len(first))
    low = min(2, n)
    return CascadeSchedule(tuple(max(low, min(size, n)) for size in sizes))


def option8_schedule(n: int, qber: float) -> CascadeSchedule:
    """Martinez-Mateo et al. (arXiv:1407.3257) option (8): 14 passes.

    alpha = log2(1/Q) - 1/2; k1 = 2^ceil(alpha), k2 = 2^ceil((alpha + 12) / 2), k3 = 4096, then
    ceil(n/2). Q is clamped to [QBER_FLOOR, 0.5]; sizes are clamped to [min(2, n), n]. Its leak is the
    lowest we measured (f about 1.04 on 1e5 bits), but it needs 500 or more round trips (see
    cascade.py).
    """
    n = check_length(n)
    alpha = _alpha(qber)
    return _schedule(n, [2 ** math.ceil(alpha), 2 ** math.ceil((alpha + 12.0) / 2.0), OPTION8_THIRD_BLOCK])


def low_latency_schedule(n: int, qber: float) -> CascadeSchedule:
    """Option (8)'s first block, a small second and a mid-sized third, for five times fewer round trips.

    k1 = 2^round(alpha) (alpha as in option (8), so k1 is near 0.7/Q), k2 = 4 k1, k3 = 64 k1, then
    ceil(n/2) up to 10 passes; same clamping as option8_schedule. The third pass splits the error pairs
    that share both a pass-0 and a pass-1 block (about 0.5 such pairs per block), which the half-key
    passes alone leave unsplit about once in 1e4 blocks. Measured on 60 blocks of 1e5 bits per QBER,
    i.i.d. errors, at 1 / 2 / 5 %: f = 1.053 / 1.060 / 1.063 (option (8): 1.042 / 1.041 / 1.044), round
    trips 94 / 82 / 107 (option (8): about 500), no residual errors; it was the fastest of the grid of
    schedules tried that kept f <= 1.07 at every QBER (bench/bench_cascade.py for the current figures).
    """
    n = check_length(n)
    k1 = 2 ** round(_alpha(qber))
    return _schedule(n, [k1, 4 * k1, 64 * k1], passes=LOW_LATENCY_PASSES)


def few_round_trips_schedule(n: int, qber: float) -> CascadeSchedule:
    """A second block only twice the first, then 8 k1 and 64 k1: the fewest round trips we measured.

    k1 = 2^round(alpha) as in ``low_latency_schedule``, then k2 = 2 k1, k3 = 8 k1, k4 = 64 k1 and
    ceil(n/2) up to 8 passes; same clamping. A small second block leaves fewer errors per block, so the
    chains of searches that set the round trips are shorter. Measured on 16 keys of 460,000 bits at 2.3 %
    (i.i.d. errors; what a 2e7-pulse round at 10 km reconciles): round trips median 70, at most 89
    (``low_latency_schedule``: 117, at most 154), f = 1.093 (1.046), no residual errors. The extra leak
    costs about 1.2 % of the final key; over a 50 ms round trip the 47 saved round trips save 2.4 s a
    round (bench/bench_cascade.py for other sizes and QBERs).
    """
    n = check_length(n)
    k1 = 2 ** round(_alpha(qber))
    return _schedule(n, [k1, 2 * k1, 8 * k1, 64 * k1], passes=FEW_ROUND_TRIPS_PASSES)


def schedule_for(kind: CascadeKind, n: int, qber: float) -> CascadeSchedule:
    """The schedule a round's configuration names, for `n` bits at the estimated `qber`."""
    if kind is CascadeKind.FEW_ROUND_TRIPS:
        return few_round_trips_schedule(n, qber)
    return low_latency_schedule(n, qber)
