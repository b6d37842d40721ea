"""The parties' random choices, drawn in bulk from a byte supplier the caller passes in.

qcore stays pure (STYLE §1): it never reads the operating system's entropy itself. The daemon hands the
sessions sources built on ``os.urandom`` (``qlinkd.ops.entropy``, the one place it draws randomness);
the simulator hands them sources built on seeded numpy generators, so a run is reproducible from its seed.

Each party holds two sources (:class:`PartyRandomness`):

- ``secret``: every choice an eavesdropper must not predict. Alice's raw bits, bases and decoy classes,
  either party's analyser settings, and the sample positions. Some of these are revealed later (bases
  in sifting, the sample); the rest never are. Revealed draws must tell nothing about unrevealed ones,
  so in the daemon this source is the OS CSPRNG and nothing else.
- ``public``: the seeds that are published as drawn: Cascade's permutation seed and the verification and
  privacy-amplification Toeplitz seeds. They come from their own draws, never from the secret source's
  stream, so even a seeded (non-cryptographic) generator behind ``public`` exposes nothing secret.

Every operation turns bytes into values with numpy in one pass (plus, for rejection sampling, a rare
second pass); none loops per value in Python.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .errors import LocalProtocolError, UsageError

ByteSupplier = Callable[[int], bytes]
"""Returns exactly n uniformly random bytes."""

# The grid a class choice is made on: 2**-56, finer than the float64 probabilities it implements.
_GRID_BITS = 56


class RandomSource:
    """Uniform draws of the shapes the protocol needs, all made from one byte supplier."""

    __slots__ = ("_supply",)

    def __init__(self, supply: ByteSupplier) -> None:
        self._supply = supply

    @classmethod
    def seeded(cls, seed: np.random.SeedSequence | int) -> RandomSource:
        """A reproducible source for the simulator and tests: bytes from a seeded numpy generator (PCG64,
        not cryptographic; the daemon never uses this)."""
        return cls(np.random.default_rng(seed).bytes)

    def __repr__(self) -> str:
        return "RandomSource(state=(hidden))"

    def bytes(self, n: int) -> bytes:
        """n uniform bytes."""
        if n < 0:
            raise UsageError(f"cannot draw {n} bytes")
        data = self._supply(n)
        if len(data) != n:
            raise LocalProtocolError(f"the byte supplier returned {len(data)} bytes, not {n}")
        return data

    def _words(self, n: int, width: int) -> np.ndarray:
        """n unsigned little-endian words of `width` bytes."""
        dtype: np.dtype[np.unsignedinteger] = np.dtype(f"<u{width}")
        return np.frombuffer(self.bytes(n * width), dtype=dtype)

    def bits(self, n: int) -> np.ndarray:
        """n uniform bits as uint8 0/1: n/8 bytes, unpacked."""
        if n < 0:
            raise UsageError(f"cannot draw {n} bits")
        return np.unpackbits(np.frombuffer(self.bytes((n + 7) // 8), dtype=np.uint8), count=n)

    def uint63(self) -> int:
        """One uniform integer in [0, 2**63) (Cascade's permutation seed)."""
        return int.from_bytes(self.bytes(8), "little") >> 1

    def integers(self, high: int, size: int) -> np.ndarray:
        """`size` uniform integers in [0, high) as uint8 (high <= 256) or int64, without modulo bias.

        Each value is a 1-, 2- or 4-byte word w, kept only if w < limit, the largest multiple of `high`
        the word can hold; w % high then takes every residue equally often. The kept words are taken in
        the order drawn (their positions, not their values, decide which are used), so they stay
        independent and uniform. At least half of all words are kept, nearly all of them for small `high`.
        """
        if not 1 <= high <= 2**32:
            raise UsageError(f"integers need 1 <= high <= 2**32, got {high}")
        if size < 0:
            raise UsageError(f"cannot draw {size} integers")
        dtype = np.uint8 if high <= 256 else np.int64
        if high == 2:
            return self.bits(size)
        width = 1 if high <= 2**8 else 2 if high <= 2**16 else 4
        span = 1 << (8 * width)
        limit = span - span % high
        out = np.empty(size, dtype=np.int64)
        filled = 0
        while filled < size:
            need = size - filled
            # Enough words that one pass nearly always suffices: the expected count plus 2% and a margin.
            count = need if limit == span else math.ceil(need * span / limit * 1.02) + 32
            words = self._words(count, width)
            kept = words[words < limit][:need]
            out[filled : filled + kept.size] = kept % high
            filled += kept.size
        return out.astype(dtype)

    def choice(self, probabilities: Sequence[float], size: int) -> np.ndarray:
        """`size` class indices (uint8), class i with probability ``probabilities[i]``.

        Each draw is a uniform u on the 2**-56 grid, class i when B[i-1] <= u < B[i] for the cumulative
        bounds B (the probabilities' sums rounded to that grid, the last exactly 1): class i then comes
        with probability B[i] - B[i-1], within a few 2**-53 of p_i: the float64 resolution of the
        probabilities themselves. u is drawn lazily: its first byte alone decides the class unless a
        bound falls inside that byte's interval (at most one byte value in 256 per bound), and only
        those draws take eight more bytes, of which the top 48 bits complete u. That costs about one
        byte a pulse instead of eight, and the classes are exactly those of drawing all 56 bits each time.
        """
        p = np.asarray(probabilities, dtype=np.float64)
        if p.ndim != 1 or not 1 <= p.size <= 256 or (p < 0).any() or not math.isclose(p.sum(), 1.0):
            raise UsageError(f"probabilities must be 1..256 non-negative numbers summing to 1, got {p}")
        if size < 0:
            raise UsageError(f"cannot draw {size} classes")
        bounds = np.round(np.cumsum(p) * 2.0**_GRID_BITS).astype(np.uint64)
        bounds[-1] = 1 << _GRID_BITS
        rest_bits = np.uint64(_GRID_BITS - 8)
        # Per first byte: the class at the bottom and at the top of its interval (a 256-entry table).
        edges = np.arange(256, dtype=np.uint64) << rest_bits
        bottom = np.searchsorted(bounds, edges, side="right").astype(np.uint8)
        top = np.searchsorted(bounds, edges | np.uint64((1 << (_GRID_BITS - 8)) - 1), side="right")
        first = self._words(size, 1)
        classes: np.ndarray = bottom[first]
        near = np.flatnonzero((bottom != top)[first])
        if near.size:
            rest = self._words(near.size, 8) >> np.uint64(64 - (_GRID_BITS - 8))
            u = (first[near].astype(np.uint64) << rest_bits) | rest
            classes[near] = np.searchsorted(bounds, u, side="right")
        return classes

    def subset_mask(self, n: int, k: int) -> np.ndarray:
        """A uint8 mask over n positions with exactly k of them set, every k-subset equally likely.

        Each position gets a uniform 64-bit key; the k smallest keys are chosen. When the k-th and the
        (k+1)-th smallest keys differ, "the k smallest" is one well-defined set, and since the keys are
        exchangeable (and that event does not depend on which position holds which key) every k-subset
        is equally likely. When they tie (probability below n**2 / 2**64) all keys are drawn afresh, so
        ties are rejected rather than broken in favour of any position.
        """
        if not 0 <= k <= n:
            raise UsageError(f"cannot choose {k} of {n} positions")
        if k in (0, n):
            return np.full(n, 1 if k else 0, dtype=np.uint8)
        while True:
            keys = self._words(n, 8)
            lower, upper = np.partition(keys, [k - 1, k])[[k - 1, k]]
            if lower != upper:
                mask: np.ndarray = (keys <= lower).astype(np.uint8)
                return mask


@dataclass(frozen=True, slots=True, kw_only=True)
class PartyRandomness:
    """One party's two sources: choices that stay secret, and seeds that are published."""

    secret: RandomSource
    """Raw key bits, bases, decoy classes, analyser settings, sample positions. Must be a CSPRNG in the
    daemon: some of its draws are revealed (bases, the sample) and must not expose the others."""
    public: RandomSource
    """Cascade's permutation seed, the verification and privacy-amplification Toeplitz seeds: drawn
    separately from ``secret`` and published as drawn."""

    @classmethod
    def seeded(cls, seed: np.random.SeedSequence) -> PartyRandomness:
        """The simulator's reproducible pair: two independent streams spawned from `seed`."""
        secret, public = seed.spawn(2)
        return cls(secret=RandomSource.seeded(secret), public=RandomSource.seeded(public))
