"""What the finite-key bounds share: security parameters, Tomamichel's terms, checks and rounding.

Default security parameters: eps_sec = eps_cor = 1e-10 (docs/references.md §2); the protocol is then
eps-secure with eps = eps_sec + eps_cor. Tomamichel et al.'s sampling deviation and privacy-amplification
penalty serve both the BB84 length (:mod:`qlinkmed.qcore.finite_bb84`) and the E91 length
(:mod:`qlinkmed.qcore.finite_e91`). The security parameters' defaults, check and verification hash
size live in :mod:`qlinkmed.qcore.security` (standard library only) and are re-exported here.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import ConfigError
from .security import DEFAULT_EPS_COR, DEFAULT_EPS_SEC, check_eps, total_eps, verification_hash_bits

__all__ = [
    "DEFAULT_EPS_COR",
    "DEFAULT_EPS_SEC",
    "check_count",
    "check_eps",
    "floor_nonnegative",
    "pa_penalty",
    "tomamichel_deviation",
    "tomamichel_mu",
    "total_eps",
    "verification_hash_bits",
]


def check_count(name: str, value: int, minimum: int = 0) -> int:
    """`value` as an int, or ConfigError naming `name` unless it is an integer >= `minimum`."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ConfigError(name, f"must be an integer >= {minimum}, got {value!r}")
    return int(value)


def floor_nonnegative(raw: float) -> int:
    """A raw length rounded down to whole bits, 0 when negative or not finite."""
    return max(0, math.floor(raw)) if math.isfinite(raw) else 0


def tomamichel_mu(n: np.ndarray | float, k: np.ndarray | float, eps_sec: float) -> np.ndarray:
    """mu = sqrt((n + k)/(n k) * (k + 1)/k * ln(4/eps_sec)), Tomamichel et al. 2012, Eq. (2); vectorised."""
    n_a = np.asarray(n, dtype=np.float64)
    k_a = np.asarray(k, dtype=np.float64)
    return np.sqrt((n_a + k_a) / (n_a * k_a) * (k_a + 1.0) / k_a * math.log(4.0 / eps_sec))


def tomamichel_deviation(n: int, k: int, eps_sec: float) -> float:
    """Tomamichel's mu for counts; infinite when there is no key or no test bit (nothing to bound)."""
    return float(tomamichel_mu(n, k, eps_sec)) if n > 0 and k > 0 else math.inf


def pa_penalty(eps_sec: float, eps_cor: float) -> float:
    """log2(2 / eps_sec^2) + t bits, t = :func:`verification_hash_bits`: Tomamichel et al.'s
    log2(2 / (eps_sec^2 eps_cor)), whose log2(1/eps_cor) is the verification hash, with the hash counted
    at the size it is sent (34 bits at 1e-10, not 33.2)."""
    return 1.0 - 2.0 * math.log2(eps_sec) + verification_hash_bits(eps_cor)
