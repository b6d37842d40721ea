"""Finite-key lengths: Tomamichel et al. 2012 (BB84), Lim et al. 2014 (decoy BB84), and E91/CHSH.

Every function returns a frozen dataclass holding its inputs, every intermediate term and the
final length ``length`` (an int, never negative). Formulas are cited per function; the notation is
that of docs/references.md §2. Default security parameters: eps_sec = eps_cor = 1e-10 (docs/references.md §2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import ConfigError
from .theory import binary_entropy, di_rate

__all__ = [
    "ChshBound",
    "E91KeyResult",
    "FiniteKeyResult",
    "Lim2014Result",
    "OptimalSplit",
    "TomamichelRatePoint",
    "chsh_lower_bound",
    "e91_length",
    "lim2014_length",
    "tomamichel_length",
    "tomamichel_optimized_rate",
    "tomamichel_predicted_fraction",
]

DEFAULT_EPS_SEC = 1e-10
DEFAULT_EPS_COR = 1e-10


def _check_eps(name: str, eps: float) -> None:
    if not 0.0 < eps < 1.0:
        raise ConfigError(name, f"must be in (0, 1), got {eps}")


def _check_count(name: str, value: int, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ConfigError(name, f"must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _floor_nonnegative(raw: float) -> int:
    return max(0, math.floor(raw)) if math.isfinite(raw) else 0


# --------------------------------------------------------------------------- Tomamichel 2012


@dataclass(frozen=True, slots=True, kw_only=True)
class FiniteKeyResult:
    """Inputs, intermediate terms and length of the Tomamichel et al. bound."""

    n: int
    """Raw key bits (X basis) entering privacy amplification."""
    k: int
    """Test bits used for parameter estimation (Z basis)."""
    q_test: float
    """Error rate observed on the k test bits (used as Q_tol)."""
    leak_ec: float
    """Bits disclosed by error correction."""
    eps_sec: float
    """Secrecy parameter."""
    eps_cor: float
    """Correctness parameter."""
    mu: float
    """Statistical deviation sqrt((n+k)/(n k) (k+1)/k ln(4/eps_sec)); inf when n = 0 or k = 0."""
    qber_upper: float
    """q_test + mu: the error rate bound on the key bits."""
    pa_penalty: float
    """log2(2 / (eps_sec^2 eps_cor)), bits."""
    raw_length: float
    """n (1 - h(q_test + mu)) - leak_ec - pa_penalty before rounding (-inf if q_test + mu >= 1/2)."""
    length: int
    """floor(raw_length) clipped at 0; 0 whenever q_test + mu >= 1/2."""


def _tomamichel_mu(n: np.ndarray | float, k: np.ndarray | float, eps_sec: float) -> np.ndarray:
    n_a = np.asarray(n, dtype=np.float64)
    k_a = np.asarray(k, dtype=np.float64)
    return np.sqrt((n_a + k_a) / (n_a * k_a) * (k_a + 1.0) / k_a * math.log(4.0 / eps_sec))


def _deviation(n: int, k: int, eps_sec: float) -> float:
    """Tomamichel's mu for counts; infinite when there is no key or no test bit (nothing to bound)."""
    return float(_tomamichel_mu(n, k, eps_sec)) if n > 0 and k > 0 else math.inf


def _pa_penalty(eps_sec: float, eps_cor: float) -> float:
    return math.log2(2.0) - 2.0 * math.log2(eps_sec) - math.log2(eps_cor)


def tomamichel_length(
    n: int,
    k: int,
    q_test: float,
    leak_ec: float,
    eps_sec: float = DEFAULT_EPS_SEC,
    eps_cor: float = DEFAULT_EPS_COR,
) -> FiniteKeyResult:
    """Secret key length of Tomamichel, Lim, Gisin, Renner, Nat. Commun. 3, 634 (2012), Eq. (2).

    l = floor(n (1 - h(Q_tol + mu)) - leak_EC - log2(2 / (eps_sec^2 eps_cor))),
    mu = sqrt((n + k)/(n k) * (k + 1)/k * ln(4/eps_sec)), preparation quality q = 1 (BB84 qubits),
    with the observed test error rate in place of Q_tol (the protocol aborts above Q_tol, so a key
    length computed from the observed rate is the length for Q_tol = q_test). The log2 term is
    written as in docs/references.md §2; one transcription of the paper drops the square on eps_sec, which
    would only make the key 33 bits (at 1e-10) longer, so the squared form is the safe one.
    Length 0 when q_test + mu >= 1/2. An empty block (n = 0) or an empty test sample (k = 0) is
    accepted and gives mu = inf and length 0: no data, no key.
    """
    n = _check_count("n", n)
    k = _check_count("k", k)
    if not 0.0 <= q_test <= 1.0:
        raise ConfigError("q_test", f"must be in [0, 1], got {q_test}")
    if not leak_ec >= 0.0:
        raise ConfigError("leak_ec", f"must be >= 0, got {leak_ec}")
    _check_eps("eps_sec", eps_sec)
    _check_eps("eps_cor", eps_cor)
    mu = _deviation(n, k, eps_sec)
    upper = q_test + mu
    penalty = _pa_penalty(eps_sec, eps_cor)
    raw = -math.inf if upper >= 0.5 else n * (1.0 - float(binary_entropy(upper))) - leak_ec - penalty
    return FiniteKeyResult(
        n=n,
        k=k,
        q_test=q_test,
        leak_ec=leak_ec,
        eps_sec=eps_sec,
        eps_cor=eps_cor,
        mu=mu,
        qber_upper=upper,
        pa_penalty=penalty,
        raw_length=raw,
        length=_floor_nonnegative(raw),
    )


def _tomamichel_raw(
    n: np.ndarray, k: np.ndarray, q: np.ndarray | float, leak: np.ndarray, *, eps_sec: float, eps_cor: float
) -> np.ndarray:
    """Vectorised raw length; -inf where q + mu >= 1/2."""
    upper = np.asarray(q) + _tomamichel_mu(n, k, eps_sec)
    ok = upper < 0.5
    h = np.asarray(binary_entropy(np.where(ok, upper, 0.25)))
    raw = n * (1.0 - h) - leak - _pa_penalty(eps_sec, eps_cor)
    return np.where(ok, raw, -np.inf)


@dataclass(frozen=True, slots=True, kw_only=True)
class OptimalSplit:
    """Best split of N sifted bits into n key bits and k test bits (:func:`tomamichel_predicted_fraction`)."""

    n_sifted: int
    """N = n + k."""
    k: int
    """Optimal number of test bits."""
    fraction: float
    """length / N: secret bits per sifted bit."""
    result: FiniteKeyResult
    """The Tomamichel evaluation at the optimal split."""


def tomamichel_predicted_fraction(
    n_sifted: int,
    qber: float,
    f: float = 1.16,
    eps_sec: float = DEFAULT_EPS_SEC,
    eps_cor: float = DEFAULT_EPS_COR,
) -> OptimalSplit:
    """Theory prediction for a block of N sifted bits: choose k to maximise the Tomamichel length.

    The block is split into n = N - k key bits and k test bits; the test error rate is taken equal
    to the channel QBER (expected-value prediction, no robustness margin) and error correction leaks
    ``f n h(qber)`` bits. k is searched on a logarithmic grid and then refined over every integer
    around the best grid point (the length is a smooth, single-peaked function of k).
    When no split yields a key, the k with the least negative raw length is returned, with length 0.
    """
    n_sifted = _check_count("n_sifted", n_sifted, 2)
    if not 0.0 <= qber <= 0.5:
        raise ConfigError("qber", f"must be in [0, 0.5], got {qber}")
    if not f >= 1.0:
        raise ConfigError("f", f"reconciliation inefficiency must be >= 1, got {f}")
    _check_eps("eps_sec", eps_sec)
    _check_eps("eps_cor", eps_cor)
    h_q = float(binary_entropy(qber))

    def raw_for(ks: np.ndarray) -> np.ndarray:
        ns = n_sifted - ks
        return _tomamichel_raw(ns, ks, qber, f * ns * h_q, eps_sec=eps_sec, eps_cor=eps_cor)

    grid = np.unique(np.geomspace(1, n_sifted - 1, num=min(n_sifted - 1, 2000)).astype(np.int64))
    best = int(grid[int(np.argmax(raw_for(grid.astype(np.float64))))])
    index = int(np.searchsorted(grid, best))
    low = int(grid[max(index - 1, 0)])
    high = int(grid[min(index + 1, grid.size - 1)])
    dense = np.arange(low, high + 1, dtype=np.int64)
    raws = raw_for(dense.astype(np.float64))
    best_k = int(dense[int(np.argmax(raws))]) if np.isfinite(raws).any() else 1
    result = tomamichel_length(
        n_sifted - best_k, best_k, qber, f * (n_sifted - best_k) * h_q, eps_sec=eps_sec, eps_cor=eps_cor
    )
    return OptimalSplit(n_sifted=n_sifted, k=best_k, fraction=result.length / n_sifted, result=result)


@dataclass(frozen=True, slots=True, kw_only=True)
class TomamichelRatePoint:
    """One optimised point of Tomamichel et al.'s Table II, as :func:`tomamichel_optimized_rate` finds it."""

    n: int
    """Raw key block size n (X basis)."""
    qber: float
    """Depolarising channel QBER Q."""
    rate: float
    """Expected secret bits per exchanged (detected) signal, (1 - eps_rob) l / M."""
    k: int
    """Optimal number of test bits."""
    q_tol: float
    """Optimal abort threshold."""
    eps_rob: float
    """Chernoff bound on the honest abort probability, exp(-k D(Q_tol || Q))."""
    p_x: float
    """Probability of the key basis, 1 / (1 + sqrt(k/n)) (Tomamichel et al., Table I)."""
    signals: float
    """M = (sqrt(n) + sqrt(k))^2 detected signals needed on average."""
    length: float
    """Key length l (before flooring) at the optimum."""


def tomamichel_optimized_rate(
    n: int, qber: float, *, xi: float = 1.1, eps_per_bit: float = 1e-14
) -> TomamichelRatePoint:
    """Recompute Tomamichel et al. 2012's optimised expected key rate (their Fig. 1 and Table II).

    Their setting: asymmetric BB84 where both parties pick the key basis X with p_x =
    1/(1 + sqrt(k/n)), so M = (sqrt(n) + sqrt(k))^2 detected signals yield n key and k test bits on
    average; depolarising channel of QBER Q; leak_EC = xi n h(Q_tol) with xi = 1.1; security fixed per
    key bit, eps/l = 1e-14; expected rate r = (1 - eps_rob) l / M maximised over k and Q_tol.
    Choices the paper leaves open, made here: eps_sec = eps_cor = eps/2 (solved self-consistently
    with l), and eps_rob bounded by the Chernoff-Hoeffding bound exp(-k D(Q_tol || Q)) (D the binary
    relative entropy in nats) on the probability that the test error exceeds Q_tol.
    With these choices r = 13.5 %, 31.3 %, 48.1 % at Q = 1 % and n = 1e4, 1e5, 1e6, against the
    published 11.7 %, 30.4 %, 47.8 %: the finite-size penalty 1 - 2h(Q) - r is reproduced within 3 %.
    """
    n = _check_count("n", n, 1)
    if not 0.0 < qber < 0.5:
        raise ConfigError("qber", f"must be in (0, 0.5), got {qber}")
    if not xi >= 1.0:
        raise ConfigError("xi", f"must be >= 1, got {xi}")
    _check_eps("eps_per_bit", eps_per_bit)
    ks = np.unique(np.geomspace(10.0, 100.0 * n, num=600).astype(np.int64)).astype(np.float64)[:, None]
    q_tol = np.linspace(qber, min(qber + 0.1, 0.499), num=801)[None, :]
    leak = xi * n * np.asarray(binary_entropy(q_tol))
    length = np.full(np.broadcast_shapes(ks.shape, q_tol.shape), float(n))
    for _ in range(5):
        eps = np.clip(eps_per_bit * np.maximum(length, 1.0), 1e-300, 0.5)
        length = _tomamichel_raw_eps_array(float(n), ks, q_tol, leak, eps_sec=eps / 2.0, eps_cor=eps / 2.0)
    divergence = q_tol * np.log(q_tol / qber) + (1.0 - q_tol) * np.log((1.0 - q_tol) / (1.0 - qber))
    eps_rob = np.exp(-ks * divergence)
    signals = (math.sqrt(n) + np.sqrt(ks)) ** 2
    rate = np.where(length > 0.0, (1.0 - eps_rob) * np.maximum(length, 0.0) / signals, 0.0)
    i, j = np.unravel_index(int(np.argmax(rate)), rate.shape)
    k_best = float(ks[i, 0])
    return TomamichelRatePoint(
        n=n,
        qber=qber,
        rate=float(rate[i, j]),
        k=int(k_best),
        q_tol=float(q_tol[0, j]),
        eps_rob=float(eps_rob[i, j]),
        p_x=1.0 / (1.0 + math.sqrt(k_best / n)),
        signals=float(signals[i, 0]),
        length=float(length[i, j]),
    )


def _tomamichel_raw_eps_array(
    n: float, k: np.ndarray, q: np.ndarray, leak: np.ndarray, *, eps_sec: np.ndarray, eps_cor: np.ndarray
) -> np.ndarray:
    """Raw Tomamichel length with array-valued security parameters (for the optimiser)."""
    mu = np.sqrt((n + k) / (n * k) * (k + 1.0) / k * np.log(4.0 / eps_sec))
    upper = q + mu
    ok = upper < 0.5
    h = np.asarray(binary_entropy(np.where(ok, upper, 0.25)))
    penalty = 1.0 - 2.0 * np.log2(eps_sec) - np.log2(eps_cor)
    return np.where(ok, n * (1.0 - h) - leak - penalty, -np.inf)


# --------------------------------------------------------------------------- Lim 2014 (decoy)


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
    """6 log2(21/eps_sec) + log2(2/eps_cor), bits."""
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
        counts[name] = tuple(_check_count(name, v) for v in values)
    if any(m > n for m, n in zip(counts["m_z"], counts["n_z"], strict=True)):
        raise ConfigError("m_z", "cannot exceed the detections n_z of the same intensity")
    if not leak_ec >= 0.0:
        raise ConfigError("leak_ec", f"must be >= 0, got {leak_ec}")
    _check_eps("eps_sec", eps_sec)
    _check_eps("eps_cor", eps_cor)

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
    penalty = 6.0 * math.log2(21.0 / eps_sec) + math.log2(2.0 / eps_cor)

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
        length=_floor_nonnegative(raw),
    )


# --------------------------------------------------------------------------- CHSH and E91


@dataclass(frozen=True, slots=True, kw_only=True)
class ChshBound:
    """Estimated CHSH value and its lower confidence bound (:func:`chsh_lower_bound`)."""

    trials: tuple[int, ...]
    """N_ab: rounds with both outcomes recorded, per setting pair."""
    agreements: tuple[int, ...]
    """Rounds with equal outcomes, per setting pair."""
    signs: tuple[int, ...]
    """Sign of each correlator in S, fixed before the data are seen."""
    eps: float
    """Failure probability of the bound."""
    correlators: tuple[float, ...]
    """E_ab = (2 agreements - N_ab) / N_ab."""
    deviations: tuple[float, ...]
    """Hoeffding half-widths t_ab = sqrt(2 ln(4/eps) / N_ab)."""
    s: float
    """The estimate S_hat = sum_ab sign_ab E_ab."""
    s_lower: float
    """S_hat - sum_ab t_ab: S >= s_lower except with probability eps (-inf if a pair has no trials)."""


def chsh_lower_bound(
    trials: Sequence[int],
    agreements: Sequence[int],
    signs: Sequence[int] = (1, -1, 1, 1),
    eps: float = DEFAULT_EPS_SEC,
) -> ChshBound:
    """Estimate S and a one-sided lower confidence bound from the four CHSH setting pairs.

    Order (docs/references.md §2): (X,W), (X,V), (Z,W), (Z,V), combined as S = <XW> - <XV> + <ZW> + <ZV>
    with the default ``signs``; use the signs that make the honest S positive in your outcome
    convention. Per pair, the outcome product of round i is A_i = +1 (agree) or -1 (disagree), and
    E_ab is their mean. Derivation: for N independent variables with values in [-1, 1] (range 2),
    Hoeffding's inequality gives Pr[E_hat - E >= t] <= exp(-2 N t^2 / 2^2) = exp(-N t^2 / 2). Each
    correlator needs one side only (the side that would overstate sign_ab E_ab); setting each of the
    four failure probabilities to eps/4 gives t_ab = sqrt(2 ln(4/eps) / N_ab), and by the union bound
    S >= S_hat - sum_ab t_ab except with probability eps. Because the signs are fixed in advance,
    this also bounds |S| from below. Assumes independent rounds (per round the conditional means may
    differ under an adaptive adversary; Azuma-Hoeffding then gives the same t for the average of the
    conditional correlators). A setting pair without trials has E_ab = 0 and t_ab = inf (no bound).
    """
    n = tuple(_check_count("trials", v) for v in trials)
    a = tuple(_check_count("agreements", v) for v in agreements)
    s = tuple(int(v) for v in signs)
    if len(n) != 4 or len(a) != 4 or len(s) != 4:
        raise ConfigError("trials", "need exactly four setting pairs (trials, agreements, signs)")
    if any(x not in (1, -1) for x in s):
        raise ConfigError("signs", f"each sign must be +1 or -1, got {s}")
    if any(ai > ni for ai, ni in zip(a, n, strict=True)):
        raise ConfigError("agreements", "cannot exceed trials")
    _check_eps("eps", eps)
    correlators = tuple((2.0 * ai - ni) / ni if ni else 0.0 for ai, ni in zip(a, n, strict=True))
    deviations = tuple(math.sqrt(2.0 * math.log(4.0 / eps) / ni) if ni else math.inf for ni in n)
    s_hat = sum(si * ei for si, ei in zip(s, correlators, strict=True))
    return ChshBound(
        trials=n,
        agreements=a,
        signs=s,
        eps=eps,
        correlators=correlators,
        deviations=deviations,
        s=s_hat,
        s_lower=s_hat - sum(deviations),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class E91KeyResult:
    """Inputs, intermediate terms and length of :func:`e91_length`."""

    n: int
    """Raw key bits (matching settings)."""
    k: int
    """Key-setting bits disclosed to estimate the QBER."""
    q_test: float
    """Error rate observed on the k test bits."""
    s_lower: float
    """Lower confidence bound on S (from :func:`chsh_lower_bound`)."""
    leak_ec: float
    """Bits disclosed by error correction."""
    eps_sec: float
    """Secrecy parameter."""
    eps_cor: float
    """Correctness parameter."""
    mu: float
    """Tomamichel's deviation term for (n, k, eps_sec); inf when n = 0 or k = 0."""
    qber_upper: float
    """q_test + mu."""
    rate: float
    """di_rate(s_lower, qber_upper): -inf when s_lower < 2."""
    pa_penalty: float
    """log2(2 / (eps_sec^2 eps_cor)), bits."""
    raw_length: float
    """n * rate - leak_ec - pa_penalty (-inf when no key is possible)."""
    length: int
    """floor(raw_length) clipped at 0; 0 when s_lower <= 2 or qber_upper >= 1/2."""


def e91_length(
    n: int,
    k: int,
    q_test: float,
    s_low: float,
    leak_ec: float,
    eps_sec: float = DEFAULT_EPS_SEC,
    eps_cor: float = DEFAULT_EPS_COR,
) -> E91KeyResult:
    """Key length for E91: the asymptotic device-independent rate evaluated at finite-size bounds.

    l = floor(n * r_DI(S_low, Q + mu) - leak_EC - log2(2 / (eps_sec^2 eps_cor))), with r_DI of Acin
    et al., PRL 98, 230501 (2007) (:func:`~qlinkmed.qcore.theory.di_rate`), S_low the lower confidence
    bound of :func:`chsh_lower_bound` and mu Tomamichel et al.'s sampling deviation.
    This is NOT a complete device-independent finite-key proof: the DI rate is a collective-attack,
    asymptotic (von Neumann entropy) bound, and plugging confidence bounds into it ignores the
    finite-size entropy corrections a full proof (e.g. by entropy accumulation) would subtract. Use it
    as an engineering estimate and abort rule, not as a security certificate.
    Length 0 when S_low <= 2, when q_test + mu >= 1/2, and for n = 0 or k = 0.
    """
    n = _check_count("n", n)
    k = _check_count("k", k)
    if not 0.0 <= q_test <= 1.0:
        raise ConfigError("q_test", f"must be in [0, 1], got {q_test}")
    if math.isnan(s_low):
        raise ConfigError("s_low", "must not be NaN")
    if not leak_ec >= 0.0:
        raise ConfigError("leak_ec", f"must be >= 0, got {leak_ec}")
    _check_eps("eps_sec", eps_sec)
    _check_eps("eps_cor", eps_cor)
    mu = _deviation(n, k, eps_sec)
    upper = q_test + mu
    penalty = _pa_penalty(eps_sec, eps_cor)
    rate = float(di_rate(s_low, min(upper, 0.5)))
    raw = -math.inf
    if s_low > 2.0 and upper < 0.5 and rate > -math.inf:
        raw = n * rate - leak_ec - penalty
    return E91KeyResult(
        n=n,
        k=k,
        q_test=q_test,
        s_lower=s_low,
        leak_ec=leak_ec,
        eps_sec=eps_sec,
        eps_cor=eps_cor,
        mu=mu,
        qber_upper=upper,
        rate=rate,
        pa_penalty=penalty,
        raw_length=raw,
        length=_floor_nonnegative(raw),
    )
