"""Statistical tests of an image cipher on 8-bit images.

NPCR and UACI follow Wu, Noonan and Agaian, "NPCR and UACI randomness tests for image encryption" (JSAT
2011): the critical values come from their formulas (F = 255, alpha = 0.05), which give NPCR > 99.5893 %
and UACI in [33.3730, 33.5541] % at 512x512 (99.5693 % and [33.2824, 33.6447] % at 256x256). A value far
from the ideal in either direction fails. The histogram chi-square has 255 degrees of freedom and passes
below 293.25 (alpha = 0.05); entropy by the asymptotically equivalent G-test (`entropy_critical`). Adjacent-
pixel correlation uses every adjacent pair, not a random sample, so the figures are reproducible; it is
judged by a two-sided test of zero correlation (`correlation_critical`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from ..errors import ConfigError

ALPHA = 0.05
CHI2_CRITICAL_255 = 293.25
"""Chi-square critical value, 255 degrees of freedom, alpha = 0.05."""
_F = 255  # largest 8-bit pixel value


def _as_u8(a: np.ndarray) -> np.ndarray:
    if a.dtype != np.uint8:
        raise ConfigError("image", f"metrics take uint8 images, not {a.dtype}")
    return a


def npcr(c1: np.ndarray, c2: np.ndarray) -> float:
    """Number of pixels change rate, in percent."""
    _as_u8(c1), _as_u8(c2)
    if c1.shape != c2.shape:
        raise ConfigError("image", "shapes differ")
    return float(np.count_nonzero(c1 != c2)) * 100.0 / c1.size


def uaci(c1: np.ndarray, c2: np.ndarray) -> float:
    """Unified average changing intensity, in percent."""
    _as_u8(c1), _as_u8(c2)
    if c1.shape != c2.shape:
        raise ConfigError("image", "shapes differ")
    diff = np.abs(c1.astype(np.int16) - c2.astype(np.int16))
    return float(diff.sum(dtype=np.int64)) * 100.0 / (_F * c1.size)


def npcr_critical(pixels: int, alpha: float = ALPHA) -> float:
    """Wu et al. NPCR critical value N*_alpha (percent) for an image of `pixels` pixels."""
    z = NormalDist().inv_cdf(1.0 - alpha)  # upper alpha quantile, 1.645 at alpha = 0.05
    return float((_F - z * (_F / pixels) ** 0.5) / (_F + 1) * 100.0)


def uaci_interval(pixels: int, alpha: float = ALPHA) -> tuple[float, float]:
    """Wu et al. UACI acceptance interval (percent) for an image of `pixels` pixels."""
    mu = (_F + 2) / (3 * _F + 3)
    var = (_F + 2) * (_F * _F + 2 * _F + 3) / (18 * (_F + 1) ** 2 * pixels * _F)
    z = NormalDist().inv_cdf(alpha / 2)
    return ((mu + z * var**0.5) * 100.0, (mu - z * var**0.5) * 100.0)


def entropy_critical(pixels: int) -> float:
    """Lowest entropy (bits) a uniform 8-bit image of `pixels` pixels shows at alpha = 0.05.

    The G-test: G = 2 N ln2 (8 - H) is the likelihood-ratio statistic of the histogram against the uniform
    distribution and, like the chi-square, follows chi-square with 255 degrees of freedom. So H passes
    above 8 - 293.25 / (2 N ln2): 7.99919 at 512x512, 7.99677 at 256x256.
    """
    return 8.0 - CHI2_CRITICAL_255 / (2.0 * pixels * math.log(2.0))


def entropy(image: np.ndarray) -> float:
    """Shannon entropy of the pixel histogram, bits per pixel (ideal 8)."""
    counts = np.bincount(_as_u8(image).reshape(-1), minlength=256)
    p = counts[counts > 0] / image.size
    return float(-(p * np.log2(p)).sum())


def chi_square(image: np.ndarray) -> float:
    """Histogram chi-square against the uniform distribution (255 degrees of freedom)."""
    counts = np.bincount(_as_u8(image).reshape(-1), minlength=256).astype(np.float64)
    expected = image.size / 256.0
    return float(((counts - expected) ** 2).sum() / expected)


def correlations(image: np.ndarray) -> dict[str, float]:
    """Pearson correlation of horizontally, vertically and diagonally adjacent pixels (all pairs).

    NaN where it is undefined: fewer than two pairs, or one side of the pairs constant.
    """
    a = _as_u8(image).astype(np.float64)
    if a.ndim != 2:
        raise ConfigError("image", "correlations take one 2-D channel")
    pairs = {
        "horizontal": (a[:, :-1], a[:, 1:]),
        "vertical": (a[:-1, :], a[1:, :]),
        "diagonal": (a[:-1, :-1], a[1:, 1:]),
    }
    return {name: _pearson(x.reshape(-1), y.reshape(-1)) for name, (x, y) in pairs.items()}


def correlation_critical(pairs: int, alpha: float = ALPHA) -> float:
    """Largest |r| of `pairs` adjacent pairs that passes a two-sided test of zero correlation at `alpha`.

    For independent pixels the sample correlation of adjacent pairs is ~ N(0, 1/pairs) (Bartlett), so
    the bound is z_(1 - alpha/2) / sqrt(pairs): 0.0038 at 512x512, 0.0077 at 256x256. The customary
    |r| < 0.01 is looser on large images and fails small random ones (1/sqrt(600) ~ 0.04).
    """
    return NormalDist().inv_cdf(1.0 - alpha / 2) / math.sqrt(pairs)


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(np.corrcoef(x, y)[0, 1])


@dataclass(frozen=True, slots=True, kw_only=True)
class Sensitivity:
    """NPCR/UACI of two cipher images and the Wu et al. verdicts."""

    npcr: float
    """Percent of differing pixels."""
    uaci: float
    """Mean absolute difference, percent of 255."""
    npcr_pass: bool
    """NPCR above the critical value."""
    uaci_pass: bool
    """UACI inside the acceptance interval."""


def sensitivity(c1: np.ndarray, c2: np.ndarray, alpha: float = ALPHA) -> Sensitivity:
    """Judge two cipher channels (uint8, same shape) by the Wu et al. tests."""
    n, u = npcr(c1, c2), uaci(c1, c2)
    lo, hi = uaci_interval(c1.size, alpha)
    return Sensitivity(npcr=n, uaci=u, npcr_pass=n > npcr_critical(c1.size, alpha), uaci_pass=lo <= u <= hi)


def flip_key_bit(key: bytes, bit: int = 0) -> bytes:
    """`key` with one bit flipped (bit 0 = least significant bit of the first byte)."""
    b = bytearray(key)
    b[bit // 8] ^= 1 << (bit % 8)
    return bytes(b)


def change_one_pixel(image: np.ndarray, index: tuple[int, ...] | None = None) -> np.ndarray:
    """A copy of `image` with one pixel (the centre by default) changed by +1 modulo the dtype's range."""
    out = image.copy()
    idx = index if index is not None else (image.shape[0] // 2, image.shape[1] // 2) + (0,) * (image.ndim - 2)
    out[idx] = out[idx] + 1 if out[idx] != np.iinfo(out.dtype).max else 0
    return out


EncryptFn = Callable[[np.ndarray, bytes, bytes], np.ndarray]
"""Encrypts (image, key, nonce) to a cipher array of the image's shape (crop padding first if any)."""


def key_sensitivity(image: np.ndarray, key: bytes, nonce: bytes, encrypt: EncryptFn) -> Sensitivity:
    """Encrypt with `key` and with `key` with one bit flipped, same nonce; compare (all channels)."""
    return sensitivity(encrypt(image, key, nonce), encrypt(image, flip_key_bit(key), nonce))


def plaintext_sensitivity(image: np.ndarray, key: bytes, nonce: bytes, encrypt: EncryptFn) -> Sensitivity:
    """Encrypt the image and a one-pixel change of it under the SAME key and nonce; compare.

    Reusing the nonce is the hard case: qlink's cipher still diffuses because the image's tag is mixed into
    the key derivation (docs/references.md §8 pitfall 1). With a fresh nonce per image it passes trivially.
    """
    return sensitivity(encrypt(image, key, nonce), encrypt(change_one_pixel(image), key, nonce))
