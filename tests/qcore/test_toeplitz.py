"""Toeplitz hashing: exactness against the definition, linearity, a custom vector, input checks."""

from __future__ import annotations

import hashlib
import tracemalloc

import numpy as np
import pytest

from qlinkmed.qcore import toeplitz
from qlinkmed.qcore.errors import ConfigError
from qlinkmed.qcore.toeplitz import (
    _hash_fft,
    _hash_packed,
    _prefer_packed,
    toeplitz_hash,
    toeplitz_hash_reference,
)


def _bits(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 2, size=n, dtype=np.uint8)


def _all_methods(seed: np.ndarray, x: np.ndarray, m: int) -> list[np.ndarray]:
    return [toeplitz_hash(seed, x, m), _hash_fft(seed, x, m), _hash_packed(seed, x, m)]


# Includes m = 1, n = 1, m > n, and lengths around the 8- and 64-bit packing boundaries.
EDGE_SHAPES = [(1, 1), (1, 7), (7, 1), (2, 3), (3, 2), (8, 8), (63, 1), (64, 64), (65, 130), (129, 3)]


@pytest.mark.parametrize(("n", "m"), EDGE_SHAPES)
def test_edge_shapes_match_reference(n: int, m: int) -> None:
    rng = np.random.default_rng(n * 1000 + m)
    for _ in range(5):
        seed, x = _bits(rng, n + m - 1), _bits(rng, n)
        expected = toeplitz_hash_reference(seed, x, m)
        for got in _all_methods(seed, x, m):
            assert got.dtype == np.uint8
            np.testing.assert_array_equal(got, expected)


def test_many_random_small_shapes_match_reference() -> None:
    rng = np.random.default_rng(7)
    for _ in range(300):
        n = int(rng.integers(1, 300))
        m = int(rng.integers(1, 300))
        seed, x = _bits(rng, n + m - 1), _bits(rng, n)
        expected = toeplitz_hash_reference(seed, x, m)
        for got in _all_methods(seed, x, m):
            np.testing.assert_array_equal(got, expected)


def test_reference_is_the_documented_matrix() -> None:
    # T[i, j] = seed[i - j + n - 1]: with a one-hot x = e_j the hash is column j of T.
    rng = np.random.default_rng(3)
    n, m = 6, 4
    seed = _bits(rng, n + m - 1)
    for j in range(n):
        x = np.zeros(n, dtype=np.uint8)
        x[j] = 1
        column = np.array([seed[i - j + n - 1] for i in range(m)], dtype=np.uint8)
        np.testing.assert_array_equal(toeplitz_hash_reference(seed, x, m), column)
        np.testing.assert_array_equal(toeplitz_hash(seed, x, m), column)


def test_hand_computed_vector() -> None:
    # n = 4, m = 3, seed s0..s5 = 1 0 1 1 0 0. Rows of T (T[i, j] = s[i - j + 3]):
    #   row 0: s3 s2 s1 s0 = 1 1 0 1
    #   row 1: s4 s3 s2 s1 = 0 1 1 0
    #   row 2: s5 s4 s3 s2 = 0 0 1 1
    # x = 1 0 1 1 gives (1+0+0+1, 0+0+1+0, 0+0+1+1) mod 2 = (0, 1, 0).
    seed = np.array([1, 0, 1, 1, 0, 0], dtype=np.uint8)
    x = np.array([1, 0, 1, 1], dtype=np.uint8)
    for got in _all_methods(seed, x, 3):
        np.testing.assert_array_equal(got, [0, 1, 0])


def _shake_bits(label: bytes, n: int) -> np.ndarray:
    raw = np.frombuffer(hashlib.shake_256(label).digest((n + 7) // 8), dtype=np.uint8)
    return np.unpackbits(raw, count=n)


def test_custom_vector() -> None:
    # Custom vector. Inputs: the bits (MSB first) of SHAKE-256 of the labels below, so they never
    # depend on a numpy RNG stream. Expected output: computed once outside qcore with Python integers,
    #   y[i] = popcount(int(seed[i:i+n] as a bit string) & int(x[::-1] as a bit string)) & 1,
    # cross-checked against the double loop y[i] = sum_j seed[i - j + n - 1] x[j] mod 2, then packed
    # MSB first; the test pins the weight of y and the SHA-256 of the packed bytes.
    n, m = 1000, 300
    seed = _shake_bits(b"qlink toeplitz vector seed", n + m - 1)
    x = _shake_bits(b"qlink toeplitz vector input", n)
    y = toeplitz_hash(seed, x, m)
    assert int(y.sum()) == 153
    assert hashlib.sha256(np.packbits(y).tobytes()).hexdigest() == (
        "de7b98aeb076481fcd5edfa6aaef57987dcf046474530b3ddea313adc93ed57f"
    )


def test_custom_vector_against_python_integers() -> None:
    # The independent reference used to produce the vector above, kept runnable.
    n, m = 1000, 300
    seed = _shake_bits(b"qlink toeplitz vector seed", n + m - 1)
    x = _shake_bits(b"qlink toeplitz vector input", n)
    x_rev = int("".join(map(str, x[::-1].tolist())), 2)
    seed_str = "".join(map(str, seed.tolist()))
    expected = [bin(int(seed_str[i : i + n], 2) & x_rev).count("1") & 1 for i in range(m)]
    np.testing.assert_array_equal(toeplitz_hash(seed, x, m), expected)


@pytest.mark.parametrize(("n", "m"), [(50, 30), (4000, 2500), (3000, 10)])
def test_linear_in_input_and_in_seed(n: int, m: int) -> None:
    rng = np.random.default_rng(n + m)
    seed, seed2 = _bits(rng, n + m - 1), _bits(rng, n + m - 1)
    x, y = _bits(rng, n), _bits(rng, n)
    np.testing.assert_array_equal(
        toeplitz_hash(seed, x ^ y, m), toeplitz_hash(seed, x, m) ^ toeplitz_hash(seed, y, m)
    )
    np.testing.assert_array_equal(
        toeplitz_hash(seed ^ seed2, x, m), toeplitz_hash(seed, x, m) ^ toeplitz_hash(seed2, x, m)
    )
    assert not toeplitz_hash(seed, np.zeros(n, dtype=np.uint8), m).any()


def test_methods_agree_on_a_medium_block() -> None:
    rng = np.random.default_rng(11)
    n, m = 20_000, 9_000
    seed, x = _bits(rng, n + m - 1), _bits(rng, n)
    np.testing.assert_array_equal(_hash_fft(seed, x, m), _hash_packed(seed, x, m))


def test_large_block_rows_match_packed_rows() -> None:
    # Output row i depends on seed[i : i + n] only, so a few rows at both ends of a privacy
    # amplification sized block can be checked with the exact packed method on a seed slice.
    rng = np.random.default_rng(12)
    n, m, r = 300_000, 150_000, 40
    seed, x = _bits(rng, n + m - 1), _bits(rng, n)
    y = toeplitz_hash(seed, x, m)
    np.testing.assert_array_equal(y[:r], _hash_packed(seed[: n + r - 1], x, r))
    np.testing.assert_array_equal(y[m - r :], _hash_packed(seed[m - r :], x, r))


def test_bool_and_wide_integer_inputs() -> None:
    rng = np.random.default_rng(5)
    seed, x = _bits(rng, 40), _bits(rng, 30)
    expected = toeplitz_hash(seed, x, 11)
    np.testing.assert_array_equal(toeplitz_hash(seed.astype(bool), x.astype(bool), 11), expected)
    np.testing.assert_array_equal(toeplitz_hash(seed.astype(np.int64), x.astype(np.int32), 11), expected)
    np.testing.assert_array_equal(toeplitz_hash(seed.tolist(), x.tolist(), 11), expected)


def test_method_choice_follows_measured_crossover() -> None:
    assert _prefer_packed(1_000_000, 64)
    assert _prefer_packed(30_000, 100)
    assert not _prefer_packed(1_000_000, 500_000)
    assert not _prefer_packed(30_000, 15_000)


@pytest.mark.parametrize(
    ("seed_len", "n", "m", "field"),
    [
        (10, 5, 5, "seed"),  # needs 9
        (8, 5, 5, "seed"),
        (5, 5, 0, "m"),
        (4, 0, 5, "x"),
    ],
)
def test_bad_lengths_raise(seed_len: int, n: int, m: int, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        toeplitz_hash(np.zeros(seed_len, dtype=np.uint8), np.zeros(n, dtype=np.uint8), m)
    assert info.value.field == field
    with pytest.raises(ConfigError):
        toeplitz_hash_reference(np.zeros(seed_len, dtype=np.uint8), np.zeros(n, dtype=np.uint8), m)


def test_bad_values_shapes_and_types_raise() -> None:
    ok_seed, ok_x = np.zeros(9, dtype=np.uint8), np.zeros(5, dtype=np.uint8)
    with pytest.raises(ConfigError, match="0 or 1"):
        toeplitz_hash(np.full(9, 2, dtype=np.uint8), ok_x, 5)
    with pytest.raises(ConfigError, match="0 or 1"):
        toeplitz_hash(ok_seed, -np.ones(5, dtype=np.int64), 5)
    with pytest.raises(ConfigError, match="dtype"):
        toeplitz_hash(ok_seed, ok_x.astype(np.float64), 5)
    with pytest.raises(ConfigError, match="1-D"):
        toeplitz_hash(ok_seed.reshape(3, 3), ok_x, 5)
    with pytest.raises(ConfigError, match="integer"):
        toeplitz_hash(ok_seed, ok_x, 5.0)  # type: ignore[arg-type]  # deliberately a float: the runtime refusal
    with pytest.raises(ConfigError, match="integer"):  # a bool is an int to mypy, not to the runtime check
        toeplitz_hash(np.zeros(5, dtype=np.uint8), ok_x, True)


@pytest.mark.parametrize("max_points", [2, 3, 16, 33, 100])
def test_tiled_fft_matches_reference(max_points: int) -> None:
    # Tiles of every shape: all rows at once (m small), a grid (m large), ragged last rows and columns.
    rng = np.random.default_rng(max_points)
    for n, m in [(1, 1), (5, 1), (1, 5), (40, 3), (3, 40), (97, 61), (200, 150), (64, 64)]:
        seed, x = _bits(rng, n + m - 1), _bits(rng, n)
        np.testing.assert_array_equal(_hash_fft(seed, x, m, max_points), toeplitz_hash_reference(seed, x, m))


def test_large_hash_runs_in_tiles_of_bounded_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    # Privacy amplification of a 1e10-pulse round hashes ~2.6e7 bits: one FFT over all of them held
    # over a gigabyte. The hash must cut it into tiles of at most MAX_FFT_POINTS transform points, and
    # give the same bits as one untiled transform.
    rng = np.random.default_rng(5)
    n, m, points = 1 << 20, 1 << 18, 1 << 16
    seed, x = _bits(rng, n + m - 1), _bits(rng, n)
    whole = _hash_fft(seed, x, m, n + m)
    monkeypatch.setattr(toeplitz, "MAX_FFT_POINTS", points)
    tracemalloc.start()
    try:
        tiled = toeplitz_hash(seed, x, m)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(tiled, whole)
    # One tile's float64 buffer and two spectra (24 bytes a point), the output, and slack; an untiled
    # transform would hold 24 bytes for each of the n + m points, about 30 MB.
    assert peak < 40 * points + m + (1 << 20), peak
