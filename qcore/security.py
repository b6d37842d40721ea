"""Security parameters of a round: their defaults, their check, the total eps they give and the size of
the verification hash eps_cor fixes (docs/references.md §2-§3). Standard library only: the daemon's
configuration loader validates with these without loading numpy."""

from __future__ import annotations

import math

from .errors import ConfigError

DEFAULT_EPS_SEC = 1e-10
"""Default secrecy parameter (docs/references.md §2); the deployer may choose another."""
DEFAULT_EPS_COR = 1e-10
"""Default correctness parameter (docs/references.md §2); the deployer may choose another."""


def check_eps(name: str, eps: float) -> None:
    """ConfigError naming `name` unless 0 < eps < 1."""
    if not 0.0 < eps < 1.0:
        raise ConfigError(name, f"must be in (0, 1), got {eps}")


def total_eps(eps_sec: float, eps_cor: float) -> float:
    """eps = eps_sec + eps_cor: a round is eps-secure in the composable sense (docs/references.md §2)."""
    return eps_sec + eps_cor


def verification_hash_bits(eps_cor: float) -> int:
    """ceil(log2(1/eps_cor)): the size of the universal hash both ends compare after reconciliation
    (docs/references.md §3), 34 bits at eps_cor = 1e-10. The finite-key lengths charge the hash at this
    size, the bits that really cross the channel, not at the real-valued log2(1/eps_cor) = 33.2."""
    check_eps("eps_cor", eps_cor)
    return math.ceil(-math.log2(eps_cor))
