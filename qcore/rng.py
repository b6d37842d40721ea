"""Bulk draws from a passed-in numpy generator for the emulated physics: uniform bits and Bernoulli masks.

Only the quantum-channel emulator and the measurement backends use these (photon losses, detector clicks,
dark counts, an emulated eavesdropper). The parties' own choices and published seeds never come from a
numpy generator in the daemon: they are drawn through :mod:`qlinkmed.qcore.randomness`.
"""

from __future__ import annotations

import numpy as np


def random_bits(rng: np.random.Generator, n: int) -> np.ndarray:
    """n uniform bits as uint8, drawn as bytes and unpacked (several times faster than integers())."""
    raw = np.frombuffer(rng.bytes((n + 7) // 8), dtype=np.uint8)
    return np.unpackbits(raw, count=n)


def bernoulli(rng: np.random.Generator, p: float, n: int) -> np.ndarray:
    """Boolean mask with each entry True with probability p."""
    if p <= 0.0:
        return np.zeros(n, dtype=bool)
    if p >= 1.0:
        return np.ones(n, dtype=bool)
    if p >= 1e-3:
        # float32 uniforms resolve 2^-24: a relative bias below 1e-4 at p >= 1e-3, at half the cost.
        return rng.random(n, dtype=np.float32) < np.float32(p)
    return _sparse_bernoulli(rng, p, n)


def _sparse_bernoulli(rng: np.random.Generator, p: float, n: int) -> np.ndarray:
    # Rare events (dark counts near 1e-7): draw the hit count, then the places.
    mask = np.zeros(n, dtype=bool)
    hits = rng.binomial(n, p)
    if hits:
        mask[rng.choice(n, size=hits, replace=False)] = True
    return mask
