"""Toeplitz hashing over GF(2): the two-universal family used for privacy amplification.

Convention (fixed here, relied on by both ends of the link). For an input ``x`` of ``n`` bits and an
output of ``m`` bits, the seed has ``n + m - 1`` bits and defines the m x n binary Toeplitz matrix

    T[i, j] = seed[i - j + n - 1],    0 <= i < m, 0 <= j < n,

so ``seed[n - 1]`` is the main diagonal, ``seed[n - 1 - j]`` is row 0 (read along the row) and
``seed[n - 1 + i]`` is column 0 (read down the column). The hash is ``y = T x mod 2``.

Because ``y[i] = sum_j seed[i + n - 1 - j] x[j]``, the output is the slice ``[n - 1, n - 1 + m)`` of the
linear convolution ``seed * x``, reduced mod 2 (docs/references.md §3: the product as an FFT or NTT
convolution mod 2). Two exact methods compute it:

- FFT: a real float64 FFT convolution. Each convolution value is an integer in ``[0, n]``; the
  float64 result is rounded to the nearest integer before the reduction mod 2. Rounding is exact when
  the floating-point error stays below 1/2. The error of an FFT convolution of length ``L`` is of
  order ``u * log2(L) * ||seed||_2 * ||x||_2`` (u = 2^-53; the FFT error analysis in Higham,
  *Accuracy and Stability of Numerical Algorithms*, 2nd ed., ch. 24); with 0/1 inputs that is at most
  ``u * log2(L) * sqrt((n + m) * n)``: about 3e-9 for n = 1e6, m = 5e5, eight orders of magnitude
  below 1/2. As a guard, every call also measures the distance of each value to the nearest integer
  and falls back to the exact bit-packed method if any exceeds 1/4: an exceeded error budget would
  show up as such fractional parts long before results round to the wrong integer wholesale.
  Products longer than ``MAX_FFT_POINTS`` are cut into tiles, each a Toeplitz product of its own (the
  seed's slice along the tile's diagonals) computed the same way, and XORed: exact, in bounded memory.
- Bit-packed rows: for small ``m`` each output bit is the parity of (window of the seed AND reversed
  ``x``), computed on packed 64-bit words. Its cost grows like ``m * n / 64``, the FFT's like
  ``(n + m) log(n + m)``; :func:`toeplitz_hash` picks the cheaper one with a cost model measured on the
  project's 2-core machine (see ``_prefer_packed``).
"""

from __future__ import annotations

import math

import numpy as np
import scipy.fft as sfft

from .errors import ConfigError

__all__ = ["toeplitz_hash", "toeplitz_hash_reference"]

# Measured on the shared 2-core build machine (numpy 2.4, scipy 1.17), medians of 5 runs:
# bit-packed rows cost about 3 us + 11.5 ps per input bit per output bit, plus ~2.3 ns per input bit
# for packing; the three real FFTs of length L cost about 3 ns * L * log2(L). The crossover is near
# m = 300 for n = 3e4 and m = 4000 for n = 1e6.
_PACKED_ROW_FIXED_S = 3e-6
_PACKED_ROW_PER_BIT_S = 1.15e-11
_PACKED_SETUP_PER_BIT_S = 2.3e-9
_FFT_PER_POINT_LOG_S = 3e-9

MAX_FFT_POINTS = 1 << 24
"""Largest FFT the hash runs at once (about 32 bytes a point at the peak: some 540 MB); larger products
are cut into tiles (``_hash_fft``)."""

# The FFT path guards its rounding: a value farther than this from an integer means the float64
# error budget was exceeded, and the exact packed method is used instead.
_MAX_ROUNDING_DISTANCE = 0.25


def _as_bits(name: str, bits: np.ndarray) -> np.ndarray:
    """Validate a 1-D array of 0/1 values (bool or integer dtype) and return it as uint8."""
    arr = np.asarray(bits)
    if arr.ndim != 1:
        raise ConfigError(name, f"must be a 1-D bit array, got shape {arr.shape}")
    if arr.dtype == np.bool_:
        return arr.view(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ConfigError(name, f"must have a bool or integer dtype, got {arr.dtype}")
    if arr.size and (int(arr.max()) > 1 or int(arr.min()) < 0):
        raise ConfigError(name, "values must be 0 or 1")
    return arr.astype(np.uint8, copy=False)


def _validate(seed: np.ndarray, x: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray, int]:
    if isinstance(m, bool) or not isinstance(m, int | np.integer):
        raise ConfigError("m", f"must be an integer, got {type(m).__name__}")
    m = int(m)
    if m < 1:
        raise ConfigError("m", f"must be >= 1, got {m}")
    x_bits = _as_bits("x", x)
    n = x_bits.size
    if n < 1:
        raise ConfigError("x", "must hold at least one bit")
    seed_bits = _as_bits("seed", seed)
    if seed_bits.size != n + m - 1:
        raise ConfigError(
            "seed", f"must hold n + m - 1 = {n + m - 1} bits for n = {n}, m = {m}, got {seed_bits.size}"
        )
    return seed_bits, x_bits, m


def toeplitz_hash(seed: np.ndarray, x: np.ndarray, m: int) -> np.ndarray:
    """Return ``y = T x mod 2`` (uint8, length m) with ``T[i, j] = seed[i - j + n - 1]``, ``n = len(x)``.

    ``seed`` must hold ``n + m - 1`` bits; bits are bool or integer arrays of 0/1.
    Raises :class:`ConfigError` on a wrong length, shape, dtype or value. The method (FFT convolution
    or bit-packed rows) is chosen by cost; both are exact (see the module docstring).
    """
    seed_bits, x_bits, m = _validate(seed, x, m)
    n = x_bits.size
    if _prefer_packed(n, m):
        return _hash_packed(seed_bits, x_bits, m)
    return _hash_fft(seed_bits, x_bits, m, MAX_FFT_POINTS)


def toeplitz_hash_reference(seed: np.ndarray, x: np.ndarray, m: int) -> np.ndarray:
    """Plain reference for tests: build T explicitly from its definition and multiply mod 2.

    Uses O(m n) memory: for test-sized inputs only.
    """
    seed_bits, x_bits, m = _validate(seed, x, m)
    n = x_bits.size
    rows = np.arange(m)[:, None]
    cols = np.arange(n)[None, :]
    matrix: np.ndarray = seed_bits[rows - cols + n - 1].astype(np.int64)
    return ((matrix @ x_bits.astype(np.int64)) % 2).astype(np.uint8)


def _prefer_packed(n: int, m: int) -> bool:
    """True when the bit-packed row method is expected to beat the FFT (measured cost model)."""
    packed = _PACKED_SETUP_PER_BIT_S * n + m * (_PACKED_ROW_FIXED_S + _PACKED_ROW_PER_BIT_S * n)
    length = n + m - 1
    fft = _FFT_PER_POINT_LOG_S * length * math.log2(max(length, 2))
    return packed < fft


def _hash_fft(seed: np.ndarray, x: np.ndarray, m: int, max_points: int = MAX_FFT_POINTS) -> np.ndarray:
    """Exact Toeplitz product by FFT convolution, in tiles of at most `max_points` transform points.

    An FFT convolution of L points needs about 32 bytes a point at its peak (the float64 input, the first
    spectrum, the second and pocketfft's scratch copy), so one transform over a 1e10-pulse round's key
    would hold about a gigabyte. Instead T is cut into tiles of `rows` x `cols`: each tile is itself a
    Toeplitz matrix, whose seed is the slice of the seed along its diagonals, and y is the XOR of every
    tile's exact product with its slice of x. Each tile is exact (``_conv_tile``), so the XOR is exact.
    Tiles take all m rows at once when m fits in half the budget, so a typical round needs a few tiles,
    not a grid of them.
    """
    n = x.size
    if n + m - 1 <= max_points:
        return _conv_tile(seed, x, m)
    rows = min(m, max_points // 2)
    cols = max_points - rows
    out = np.zeros(m, dtype=np.uint8)
    for j0 in range(0, n, cols):
        block = x[j0 : j0 + cols]
        b = block.size
        for i0 in range(0, m, rows):
            mr = min(rows, m - i0)
            # T[i0 + a, j0 + c] = seed[i0 - j0 + n - 1 + a - c]: the tile's own seed, in the same convention.
            start = i0 - j0 + n - b
            out[i0 : i0 + mr] ^= _conv_tile(seed[start : start + b + mr - 1], block, mr)
    return out


def _conv_tile(seed: np.ndarray, x: np.ndarray, m: int) -> np.ndarray:
    """Exact Toeplitz product through one real FFT convolution of length >= n + m - 1.

    A circular convolution of length L >= n + m - 1 leaves indices n - 1 .. n + m - 2 free of
    wrap-around: the full linear convolution has length 2n + m - 2, and an index t >= n - 1 could only
    alias with t + L >= 2n + m - 2, which is past its end. One float64 buffer is reused for both inputs
    and every array is dropped as soon as it is spent, so the peak is one buffer, two spectra and the
    transform's scratch.
    """
    n = x.size
    length = sfft.next_fast_len(n + m - 1, real=True)
    buf = np.zeros(length, dtype=np.float64)
    buf[: seed.size] = seed
    # numpy's pocketfft, not scipy's: it holds one scratch copy beside its output where scipy's holds two
    # (measured at 2^24 points: 2 x 8L bytes over the input against 3 x 8L), and ran 0.42 s against 0.76.
    spectrum = np.fft.rfft(buf)
    buf[: seed.size] = 0.0
    buf[:n] = x
    spectrum *= np.fft.rfft(buf)
    del buf
    conv = np.fft.irfft(spectrum, length)
    del spectrum
    window = conv[n - 1 : n - 1 + m]
    rounded = np.rint(window)
    window -= rounded  # the distance of each value to its integer, in place
    if m and max(float(window.max()), -float(window.min())) > _MAX_ROUNDING_DISTANCE:
        return _hash_packed(seed, x, m)
    del conv, window
    return np.fmod(rounded, 2.0).astype(np.uint8)


def _hash_packed(seed: np.ndarray, x: np.ndarray, m: int) -> np.ndarray:
    """Exact Toeplitz product, one output bit at a time on packed 64-bit words.

    ``y[i] = parity(sum_k seed[i + k] * xr[k])`` with ``xr = x[::-1]``: the window of the seed starting
    at bit i, ANDed with the reversed input. The seed is packed at the 8 bit offsets so that the window
    of row i starts on a byte boundary of copy ``i % 8``.
    """
    n = x.size
    words = (n + 63) // 64
    x_packed = np.zeros(words * 8, dtype=np.uint8)
    x_packed[: (n + 7) // 8] = np.packbits(x[::-1])
    x_words = x_packed.view(np.uint64)
    span = words * 8 + (m - 1) // 8 + 1
    shifted = []
    for offset in range(8):
        packed = np.packbits(seed[offset:])[:span]
        buf = np.zeros(span, dtype=np.uint8)
        buf[: packed.size] = packed
        shifted.append(buf)
    out = np.empty(m, dtype=np.uint8)
    for i in range(m):
        start = i >> 3
        window = shifted[i & 7][start : start + words * 8].view(np.uint64)
        folded = int(np.bitwise_xor.reduce(window & x_words))
        out[i] = folded.bit_count() & 1
    return out
