"""Cascade's block geometry and per-pass permutations, derived alike at both ends from the public seed.

Permutations. Pass 0 is the identity. Pass p >= 1 draws from its own stream, child p of the seed
(``Generator(PCG64(seed)).spawn(passes)[p]``, that is ``PCG64(SeedSequence(seed, spawn_key=(p,)))``):
first a uniformly random set of ceil(n/2) positions (fair coin bits, then a uniformly chosen few moved
to fix the count) that form the first half of the pass's order, then a uniformly random order of each
half. The result is a uniformly random permutation, but a pass whose blocks are exactly the two halves
(the last 11 passes of option (8), the last 12 of low_latency_schedule) needs only the set for its
top-level parities: 0.1 ms instead of 1.4 ms at 1e5 bits. Its order is built only if a search enters
it, which is rare. Each pass has its own stream, so building one never shifts another.
"""

from __future__ import annotations

import numpy as np

from .cascade_schedule import MAX_KEY_BITS, CascadeSchedule, check_length
from .errors import ConfigError

_EMPTY = np.zeros(0, dtype=np.int64)


def check_seed(seed: int) -> int:
    """The public seed as an int, or ConfigError unless it is a non-negative integer."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ConfigError("seed", f"must be a non-negative integer, got {seed!r}")
    return int(seed)


def pass_generator(seed: int, pass_index: int) -> np.random.Generator:
    """The random stream of one pass (module docstring)."""
    # The same stream as np.random.Generator(np.random.PCG64(seed)).spawn(passes)[pass_index].
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(pass_index,))))


def half_split(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A uniformly random set of exactly ceil(n/2) of n positions.

    Returned as packed fair-coin bits (MSB first, padding zero) and the sorted positions whose bit is
    inverted to fix the count: members are ``bit ^ (position in toggled)``. The inverted positions are
    the first distinct ones, in draw order, among uniform draws that fall on the larger side. Every step
    treats positions alike, so every set of that size is equally likely."""
    raw = np.frombuffer(rng.bytes((n + 7) // 8), dtype=np.uint8).copy()
    if n % 8:
        raw[-1] &= (0xFF << (8 - n % 8)) & 0xFF
    excess = int(np.count_nonzero(np.unpackbits(raw))) - (n + 1) // 2
    if not excess:
        return raw, _EMPTY
    want, side = abs(excess), int(excess > 0)
    chosen = _EMPTY
    while chosen.size < want:
        draws = rng.integers(0, n, size=2 * want + 16)
        draws = draws[((raw[draws >> 3] >> (7 - (draws & 7))) & 1) == side]
        chosen = np.concatenate((chosen, draws))
        _, first = np.unique(chosen, return_index=True)
        chosen = chosen[np.sort(first)]
    return raw, np.sort(chosen[:want])


def half_members(split: tuple[np.ndarray, np.ndarray], positions: np.ndarray) -> np.ndarray:
    """Which positions are in the first half (bool)."""
    raw, toggled = split
    bits: np.ndarray = ((raw[positions >> 3] >> (7 - (positions & 7))) & 1).astype(bool)
    if toggled.size:
        bits ^= np.isin(positions, toggled)
    return bits


def half_parity(split: tuple[np.ndarray, np.ndarray], key: np.ndarray, packed: np.ndarray) -> int:
    """Parity of the key over the first half (packed: np.packbits(key))."""
    raw, toggled = split
    ones = int(np.count_nonzero(np.unpackbits(packed & raw)))
    return (ones + int(np.count_nonzero(key[toggled]))) & 1


_CHUNK = 1 << 22
"""Positions handled per step when a pass is built: its temporaries stay a few megabytes, not bytes per
key bit on top of the tables being built."""


def pass_permutation(n: int, seed: int, pass_index: int, out: np.ndarray | None = None) -> np.ndarray:
    """The order of pass `pass_index` (module docstring), as int32 when n allows, written into `out`
    (n integers) when given.

    The dtype does not change the order: the shuffle draws the same swaps whatever the item size, and a
    1e10-pulse round's key (2.6e7 to 1e8 bits) would otherwise spend 8 bytes a bit on each pass built."""
    perm = np.empty(n, dtype=np.int32 if n < 1 << 31 else np.int64) if out is None else out
    if pass_index == 0:
        perm[:] = np.arange(n, dtype=perm.dtype)
        return perm
    rng = pass_generator(seed, pass_index)
    raw, toggled = half_split(rng, n)
    mask = np.unpackbits(raw, count=n).view(bool)
    mask[toggled] ^= True
    half = (n + 1) // 2
    _positions(mask, perm[:half])
    mask ^= True
    _positions(mask, perm[half:])
    del mask, raw
    rng.shuffle(perm[:half])
    rng.shuffle(perm[half:])
    return perm


def _positions(mask: np.ndarray, out: np.ndarray) -> None:
    """``out[:] = np.flatnonzero(mask)``, a chunk at a time (flatnonzero alone is 8 bytes a set bit)."""
    at = 0
    for start in range(0, mask.size, _CHUNK):
        found = np.flatnonzero(mask[start : start + _CHUNK])
        out[at : at + found.size] = found + start
        at += found.size


class PrefixParities:
    """Prefix parities of each built pass, one bit each: ``parity(flat)`` for flat position
    ``p * stride + i`` is the parity of the first i key bits in pass p's order, so a range's parity is
    the XOR of two lookups. Packed, they cost an eighth of a byte a key bit a pass (a byte each was 3
    bytes a key bit over the passes a round builds); rows of passes never built are never touched."""

    __slots__ = ("_bits", "_row_bytes", "_stride")

    def __init__(self, passes: int, stride: int) -> None:
        self._stride = stride
        self._row_bytes = (stride + 7) // 8
        self._bits = np.empty(passes * self._row_bytes, dtype=np.uint8)

    def build(self, p: int, key: np.ndarray, perm: np.ndarray | None) -> None:
        """Fill pass p's row from the key in pass order (``perm``; None: the identity), a chunk at a
        time with the running parity carried across chunks."""
        n = self._stride - 1
        row = self._bits[p * self._row_bytes : (p + 1) * self._row_bytes]
        step = max(8, _CHUNK - _CHUNK % 8)  # whole bytes per chunk
        carry = 0
        for start in range(0, n + 1, step):
            end = min(start + step, n + 1)  # prefix entries [start, end) from key bits [start, end - 1)
            values = np.empty(end - start, dtype=np.uint8)
            values[0] = carry
            ordered = key[perm[start : end - 1]] if perm is not None else key[start : end - 1]
            np.bitwise_xor.accumulate(ordered, out=values[1:])
            values[1:] ^= carry
            if end <= n:  # the next chunk starts from prefix[end] = prefix[end - 1] ^ its key bit
                last = perm[end - 1] if perm is not None else end - 1
                carry = int(values[-1]) ^ int(key[last])
            row[start // 8 : start // 8 + (values.size + 7) // 8] = np.packbits(values)

    def parity(self, flat: np.ndarray) -> np.ndarray:
        """The prefix parity at each flat position (uint8 0/1)."""
        p = flat // self._stride
        pos = flat - p * self._stride
        byte = self._bits[p * self._row_bytes + (pos >> 3)]
        bits: np.ndarray = (byte >> (7 - (pos & 7)).astype(np.uint8)) & 1
        return bits


def permutations(n: int, seed: int, passes: int) -> list[np.ndarray]:
    """The order of each pass: ``perm[p][i]`` is the key index at position i of pass p.

    Pass 0 is the identity; the module docstring says how the others derive from the public seed."""
    n = check_length(n)
    seed = check_seed(seed)
    return [pass_permutation(n, seed, p) for p in range(passes)]


def as_key(key: np.ndarray, name: str) -> np.ndarray:
    """`key` as a uint8 array of 0 and 1, or ConfigError naming `name`.

    A uint8 key is returned as is, not copied (a 1e10-pulse round's key is 2.6e7 to 1e8 bits): a caller
    that changes the result copies it first."""
    arr = np.asarray(key)
    if arr.ndim != 1 or not 1 <= arr.size <= MAX_KEY_BITS:
        raise ConfigError(name, f"must be a one-dimensional array of 1 to {MAX_KEY_BITS} bits")
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if arr.dtype.kind not in "iu" or int(arr.max()) > 1 or int(arr.min()) < 0:
        raise ConfigError(name, "must hold only 0 and 1")
    return arr.astype(np.uint8, copy=False)


class BlockLayout:
    """Block geometry of every pass, the same at both ends."""

    __slots__ = ("block", "blocks", "half", "lazy", "n", "passes", "stride", "width")

    def __init__(self, n: int, schedule: CascadeSchedule) -> None:
        self.n = n
        self.stride = n + 1
        self.passes = len(schedule.block_sizes)
        self.half = (n + 1) // 2
        self.block = np.array([min(int(k), n) for k in schedule.block_sizes], dtype=np.int64)
        self.blocks = -(-n // self.block)
        # A block's binary-search tree in heap order (root 1, children 2h and 2h + 1) fits in width ids.
        depth = np.array([(int(k) - 1).bit_length() for k in self.block], dtype=np.int64)
        self.width = np.left_shift(1, depth + 1).astype(np.int64)
        # A pass whose blocks are the two halves of its order (or one block, the whole key) gets its
        # top-level parities from the half split alone.
        self.lazy = [
            p > 0 and (b == 1 or (b == 2 and k == self.half))
            for p, (b, k) in enumerate(zip(self.blocks.tolist(), self.block.tolist(), strict=True))
        ]
