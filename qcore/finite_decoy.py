"""Decoy-state finite-key length: Lim, Curty, Walenta, Xu, Zbinden, PRA 89, 022307 (2014).

Every function returns a frozen dataclass holding its inputs, every intermediate term and the
final length ``length`` (an int, never negative). The notation is that of docs/references.md §2.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import ConfigError
from .finite_terms import (
    DEFAULT_EPS_COR,
    DEFAULT_EPS_SEC,
    check_count,
    check_eps,
    floor_nonnegative,
    verification_hash_bits,
)
from .theory import binary_entropy

__all__ = ["Lim2014Result", "lim2014_length"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Lim2014Result:
    """Inputs, every bound of Lim et al. 2014 Eqs. (1)-(5), and the key length."""

    intensities: tuple[float, ...]
    """(mu_1, mu_2, mu_3) with mu_1 > mu_2 + mu_3 and mu_2 > mu_3 >= 0."""
    probabilities: tuple[float, ...]
    """(p_mu1, p_mu2, p_mu3), summing to 1."""
    n_x: tuple[int, ...]
    """Detections per intensity in the key basis X."""
    n_z: tuple[int, ...]
    """Detections per intensity in the test basis Z."""
    m_z: tuple[int, ...]
    """Bit errors per intensity in Z."""
    leak_ec: float
    """Bits disclosed by error correction (lambda_EC)."""
    eps_sec: float
    """Secrecy parameter (21 error terms of eps_sec / 21 each)."""
    eps_cor: float
    """Correctness parameter."""
    tau0: float
    """Probability that Alice sends a vacuum, sum_k p_k e^-k."""
    tau1: float
    """Probability that Alice sends one photon, sum_k p_k k e^-k."""
    n_x_minus: tuple[float, ...]
    """Hoeffding bounds e^k/p_k (n_X,k - sqrt(n_X/2 ln(21/eps_sec)))."""
    n_x_plus: tuple[float, ...]
    """Hoeffding bounds e^k/p_k (n_X,k + sqrt(n_X/2 ln(21/eps_sec)))."""
    n_z_minus: tuple[float, ...]
    """Same as n_x_minus for the Z basis."""
    n_z_plus: tuple[float, ...]
    """Same as n_x_plus for the Z basis."""
    m_z_minus: tuple[float, ...]
    """e^k/p_k (m_Z,k - sqrt(m_Z/2 ln(21/eps_sec)))."""
    m_z_plus: tuple[float, ...]
    """e^k/p_k (m_Z,k + sqrt(m_Z/2 ln(21/eps_sec)))."""
    s_x0: float
    """Lower bound on vacuum events in the raw key, Eq. (2), clipped at 0."""
    s_x1: float
    """Lower bound on single-photon events in the raw key, Eq. (3) (raw, may be negative)."""
    s_z0: float
    """Eq. (2) with Z statistics, clipped at 0."""
    s_z1: float
    """Eq. (3) with Z statistics (raw, may be negative)."""
    v_z1: float
    """Upper bound on single-photon bit errors in Z, Eq. (4), clipped at 0."""
    gamma: float
    """Random-sampling term gamma(eps_sec, v_Z1/s_Z1, s_Z1, s_X1) of Eq. (5); NaN if s_X1 or s_Z1 <= 0."""
    phi_x: float
    """Upper bound on the single-photon phase error rate, Eq. (5), uncapped (>= 1/2: no key).

    NaN when s_X1 <= 0 or s_Z1 <= 0: no single-photon event is certified, so no phase error rate
    exists to bound (the failure is the decoy bound's, not an excess of errors).
    """
    pa_penalty: float
    """6 log2(21/eps_sec) + 1 + t bits: Eq. (1)'s log2(2/eps_cor) with its log2(1/eps_cor), the
    verification hash, counted at the t = ceil(log2(1/eps_cor)) bits really sent."""
    raw_length: float
    """s_X0 + s_X1 (1 - h(phi_X)) - leak_ec - pa_penalty (-inf in an invalid regime)."""
    length: int
    """floor(raw_length) clipped at 0; 0 when s_X1 <= 0, s_Z1 <= 0 or phi_X >= 1/2."""


def _lim_gamma(a: float, b: float, c: float, d: float) -> float:
    """gamma(a, b, c, d) = sqrt((c+d)(1-b)b/(c d ln 2) log2((c+d)/(c d (1-b) b) 21^2/a^2)), Lim 2014.

    Returns 0 for b = 0 (the limit of x log(1/x)) and when the logarithm is not positive.
    """
    if b <= 0.0 or b >= 1.0:
        return 0.0
    spread = (c + d) * (1.0 - b) * b / (c * d * math.log(2.0))
    log_term = math.log2((c + d) / (c * d * (1.0 - b) * b) * 21.0**2 / a**2)
    return math.sqrt(spread * log_term) if log_term > 0.0 else 0.0


def _hoeffding(
    counts: Sequence[int], mus: Sequence[float], ps: Sequence[float], delta: float
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    minus = tuple(math.exp(mu) / p * (c - delta) for c, mu, p in zip(counts, mus, ps, strict=True))
    plus = tuple(math.exp(mu) / p * (c + delta) for c, mu, p in zip(counts, mus, ps, strict=True))
    return minus, plus


def _vacuum_bound(
    mus: Sequence[float], tau0: float, minus: tuple[float, ...], plus: tuple[float, ...]
) -> float:
    """Eq. (2): s_0 >= tau_0 (mu_2 n^-_mu3 - mu_3 n^+_mu2) / (mu_2 - mu_3)."""
    _, mu2, mu3 = mus
    return tau0 * (mu2 * minus[2] - mu3 * plus[1]) / (mu2 - mu3)


def _single_photon_bound(
    mus: Sequence[float],
    *,
    tau0: float,
    tau1: float,
    s0: float,
    minus: tuple[float, ...],
    plus: tuple[float, ...],
) -> float:
    """Eq. (3): s_1 >= tau_1 mu_1 [n^-_mu2 - n^+_mu3 - (mu_2^2 - mu_3^2)/mu_1^2 (n^+_mu1 - s_0/tau_0)]
    / (mu_1 (mu_2 - mu_3) - mu_2^2 + mu_3^2)."""
    mu1, mu2, mu3 = mus
    numerator = minus[1] - plus[2] - (mu2**2 - mu3**2) / mu1**2 * (plus[0] - s0 / tau0)
    return tau1 * mu1 * numerator / (mu1 * (mu2 - mu3) - mu2**2 + mu3**2)


def lim2014_length(
    *,
    intensities: Sequence[float],
    probabilities: Sequence[float],
    n_x: Sequence[int],
    n_z: Sequence[int],
    m_z: Sequence[int],
    leak_ec: float,
    eps_sec: float = DEFAULT_EPS_SEC,
    eps_cor: float = DEFAULT_EPS_COR,
) -> Lim2014Result:
    """Decoy-state finite key of Lim, Curty, Walenta, Xu, Zbinden, PRA 89, 022307 (2014), Eqs. (1)-(5).

    l = floor(s_X0 + s_X1 (1 - h(phi_X)) - lambda_EC - 6 log2(21/eps_sec) - log2(2/eps_cor))  (1)
    s_X0 >= tau_0 (mu_2 n^-_X,mu3 - mu_3 n^+_X,mu2) / (mu_2 - mu_3)                              (2)
    s_X1 >= tau_1 mu_1 [n^-_X,mu2 - n^+_X,mu3 - (mu_2^2 - mu_3^2)/mu_1^2 (n^+_X,mu1 - s_X0/tau_0)]
            / (mu_1 (mu_2 - mu_3) - mu_2^2 + mu_3^2)                                              (3)
    v_Z1 <= tau_1 (m^+_Z,mu2 - m^-_Z,mu3) / (mu_2 - mu_3)                                        (4)
    phi_X <= v_Z1/s_Z1 + gamma(eps_sec, v_Z1/s_Z1, s_Z1, s_X1)                                     (5)
    with tau_n = sum_k e^-k k^n p_k / n!, n^+-_X,k = e^k/p_k (n_X,k +- sqrt(n_X/2 ln(21/eps_sec))),
    m^+-_Z,k likewise with m_Z = sum_k m_Z,k, and s_Z0, s_Z1 from (2)-(3) with Z counts.
    The log2(1/eps_cor) inside Eq. (1)'s log2(2/eps_cor) is the verification hash: it is charged at the
    ceil(log2(1/eps_cor)) bits the hash really has (34 at 1e-10, :func:`finite_terms.verification_hash_bits`).
    Counts are given per intensity in the order of ``intensities``. Lower bounds on counts are
    clipped at 0 (a count is never negative, and a larger valid s_X0 only raises Eq. (3)). Invalid
    regimes give length 0: s_X1 <= 0 or s_Z1 <= 0 (no single-photon contribution can be certified,
    e.g. under a photon-number-splitting attack; phi_X and gamma are then NaN) or phi_X >= 1/2.
    """
    mus = tuple(float(v) for v in intensities)
    ps = tuple(float(v) for v in probabilities)
    if len(mus) != 3 or len(ps) != 3:
        raise ConfigError("intensities", "need exactly three intensities and three probabilities")
    mu1, mu2, mu3 = mus
    if not (mu2 > mu3 >= 0.0 and mu1 > mu2 + mu3):
        raise ConfigError("intensities", f"need mu1 > mu2 + mu3 and mu2 > mu3 >= 0, got {mus}")
    if any(not p > 0.0 for p in ps) or abs(sum(ps) - 1.0) > 1e-9:
        raise ConfigError("probabilities", f"must be positive and sum to 1, got {ps}")
    counts = {}
    for name, values in (("n_x", n_x), ("n_z", n_z), ("m_z", m_z)):
        if len(values) != 3:
            raise ConfigError(name, "need one count per intensity (3)")
        counts[name] = tuple(check_count(name, v) for v in values)
    if any(m > n for m, n in zip(counts["m_z"], counts["n_z"], strict=True)):
        raise ConfigError("m_z", "cannot exceed the detections n_z of the same intensity")
    if not leak_ec >= 0.0:
        raise ConfigError("leak_ec", f"must be >= 0, got {leak_ec}")
    check_eps("eps_sec", eps_sec)
    check_eps("eps_cor", eps_cor)

    ln_term = math.log(21.0 / eps_sec)
    tau0 = sum(p * math.exp(-mu) for mu, p in zip(mus, ps, strict=True))
    tau1 = sum(p * math.exp(-mu) * mu for mu, p in zip(mus, ps, strict=True))
    nx_minus, nx_plus = _hoeffding(counts["n_x"], mus, ps, math.sqrt(sum(counts["n_x"]) / 2 * ln_term))
    nz_minus, nz_plus = _hoeffding(counts["n_z"], mus, ps, math.sqrt(sum(counts["n_z"]) / 2 * ln_term))
    mz_minus, mz_plus = _hoeffding(counts["m_z"], mus, ps, math.sqrt(sum(counts["m_z"]) / 2 * ln_term))

    s_x0 = max(0.0, _vacuum_bound(mus, tau0, nx_minus, nx_plus))
    s_z0 = max(0.0, _vacuum_bound(mus, tau0, nz_minus, nz_plus))
    s_x1 = _single_photon_bound(mus, tau0=tau0, tau1=tau1, s0=s_x0, minus=nx_minus, plus=nx_plus)
    s_z1 = _single_photon_bound(mus, tau0=tau0, tau1=tau1, s0=s_z0, minus=nz_minus, plus=nz_plus)
    v_z1 = max(0.0, tau1 * (mz_plus[1] - mz_minus[2]) / (mu2 - mu3))
    penalty = 6.0 * math.log2(21.0 / eps_sec) + 1.0 + verification_hash_bits(eps_cor)

    gamma = math.nan
    phi_x = math.nan
    raw = -math.inf
    if s_x1 > 0.0 and s_z1 > 0.0:
        ratio = v_z1 / s_z1
        gamma = _lim_gamma(eps_sec, ratio, s_z1, s_x1)
        phi_x = ratio + gamma
        if phi_x < 0.5:
            raw = s_x0 + s_x1 * (1.0 - float(binary_entropy(phi_x))) - leak_ec - penalty
    return Lim2014Result(
        intensities=mus,
        probabilities=ps,
        n_x=counts["n_x"],
        n_z=counts["n_z"],
        m_z=counts["m_z"],
        leak_ec=leak_ec,
        eps_sec=eps_sec,
        eps_cor=eps_cor,
        tau0=tau0,
        tau1=tau1,
        n_x_minus=nx_minus,
        n_x_plus=nx_plus,
        n_z_minus=nz_minus,
        n_z_plus=nz_plus,
        m_z_minus=mz_minus,
        m_z_plus=mz_plus,
        s_x0=s_x0,
        s_x1=s_x1,
        s_z0=s_z0,
        s_z1=s_z1,
        v_z1=v_z1,
        gamma=gamma,
        phi_x=phi_x,
        pa_penalty=penalty,
        raw_length=raw,
        length=floor_nonnegative(raw),
    )
