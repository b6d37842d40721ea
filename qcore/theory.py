"""Asymptotic key-rate theory: binary entropy, the BB84, device-independent and decoy-state rates.

Every rate here is *asymptotic* (infinitely long keys). Finite-size bounds live in
:mod:`qlinkmed.qcore.finite_bb84`, :mod:`~qlinkmed.qcore.finite_decoy` and
:mod:`~qlinkmed.qcore.finite_e91`; the emulator's channel model and its exact predictions in
:mod:`qlinkmed.qcore.channel_model`. Functions accept floats or numpy arrays and return a float for
scalar input, an array otherwise. Sources for each formula are in docs/references.md §1-2 and
are cited per function.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .constants import CHSH_CLASSICAL_BOUND, TSIRELSON_BOUND
from .errors import ConfigError

__all__ = [
    "DecoyRate",
    "FloatOrArray",
    "binary_entropy",
    "chsh_from_qber",
    "di_rate",
    "ec_rate",
    "float_or_array",
    "gllp_decoy_rate",
    "seed_paper_rate",
    "seed_paper_rate_upper_bound",
    "shor_preskill_rate",
]

FloatOrArray = float | np.ndarray


def float_or_array(values: np.ndarray) -> FloatOrArray:
    """Return a Python float for a 0-d result, the array otherwise."""
    return float(values) if np.ndim(values) == 0 else values


# --------------------------------------------------------------------------- entropies and rates


def binary_entropy(x: FloatOrArray) -> FloatOrArray:
    """Binary entropy h(x) = -x log2 x - (1-x) log2(1-x) (docs/references.md notation), h(0) = h(1) = 0.

    Arguments are clipped to [0, 1] first; NaN stays NaN.
    """
    p = np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0)
    edge = (p <= 0.0) | (p >= 1.0)
    safe = np.where(edge, 0.5, p)
    h = -safe * np.log2(safe) - (1.0 - safe) * np.log2(1.0 - safe)
    return float_or_array(np.where(edge, 0.0, h))


def shor_preskill_rate(q: FloatOrArray) -> FloatOrArray:
    """BB84 asymptotic rate per sifted bit, r = 1 - 2 h(Q) (Shor and Preskill, PRL 85, 441 (2000)).

    Returned raw: negative above Q ~ 11.0 %, where no key can be distilled. Callers that need a key
    length clip with ``max(0, r)``.
    """
    return float_or_array(1.0 - 2.0 * np.asarray(binary_entropy(q)))


def ec_rate(q: FloatOrArray, f: float) -> FloatOrArray:
    """BB84 asymptotic rate with real error correction, r = 1 - h(Q) - f h(Q).

    f >= 1 is the reconciliation inefficiency (leaked bits / (n h(Q))), Elkouss et al.,
    arXiv:0901.2140; zero near Q = 9.8 % for f = 1.16. Returned raw (may be negative).
    """
    if not f >= 1.0:
        raise ConfigError("f", f"reconciliation inefficiency must be >= 1 (Shannon limit), got {f}")
    h = np.asarray(binary_entropy(q))
    return float_or_array(1.0 - h - f * h)


def seed_paper_rate_upper_bound(p_s: FloatOrArray, e: FloatOrArray) -> FloatOrArray:
    """UPPER BOUND only, not a secure rate: R = P_s [1 - h(e)] as given by seed paper 002.

    This is the error-corrected rate with *no privacy amplification*: it ignores everything Eve may
    know, only reaches zero at e = 50 %, and must be reported beside the secure rates
    (:func:`shor_preskill_rate`, :func:`ec_rate`, :func:`gllp_decoy_rate`), never instead of them
    (docs/references.md §2). ``p_s`` is the sifted detection probability per pulse.
    """
    return float_or_array(np.asarray(p_s, dtype=np.float64) * (1.0 - np.asarray(binary_entropy(e))))


seed_paper_rate = seed_paper_rate_upper_bound
"""Alias kept for the existing call sites (``qcore/sim.py``); prefer the name that says upper bound."""


def chsh_from_qber(q: FloatOrArray) -> FloatOrArray:
    """Singlet CHSH value at depolarising QBER Q: S = 2 sqrt(2) (1 - 2Q) (docs/references.md §2)."""
    return float_or_array(TSIRELSON_BOUND * (1.0 - 2.0 * np.asarray(q, dtype=np.float64)))


def di_rate(s: FloatOrArray, q: FloatOrArray) -> FloatOrArray:
    """Device-independent rate, r = 1 - h(Q) - h((1 + sqrt((S/2)^2 - 1)) / 2).

    Acin, Brunner, Gisin, Massar, Pironio, Scarani, PRL 98, 230501 (2007): the CHSH bound on Eve's
    information for collective attacks, as written in docs/references.md §2. S is clipped to [2, 2 sqrt(2)]:
    above Tsirelson's bound (a statistical fluctuation) Eve's information is zero; at S = 2 it is one
    bit and the rate is -h(Q) <= 0. Below S = 2 there is no Bell violation and no device-independent
    key at all: the function returns ``-inf`` there, so any "rate > 0" test fails and the value
    cannot be mistaken for a small rate. Zero near Q = 7.1 % for S = 2 sqrt(2)(1 - 2Q).
    """
    s_arr = np.asarray(s, dtype=np.float64)
    s_clipped = np.clip(s_arr, CHSH_CLASSICAL_BOUND, TSIRELSON_BOUND)
    root = np.sqrt(np.maximum((s_clipped / 2.0) ** 2 - 1.0, 0.0))
    eve = np.asarray(binary_entropy((1.0 + root) / 2.0))
    rate = 1.0 - np.asarray(binary_entropy(q)) - eve
    return float_or_array(np.where(s_arr < 2.0, -np.inf, rate))


# --------------------------------------------------------------------------- decoy states (GLLP)


@dataclass(frozen=True, slots=True, kw_only=True)
class DecoyRate:
    """Result of :func:`gllp_decoy_rate`; fields are floats or arrays like the inputs."""

    rate: FloatOrArray
    """Asymptotic key rate per pulse, q {-Q_mu f h(E_mu) + Q_1 [1 - h(e_1)]}; raw, may be negative."""
    y1_lower: FloatOrArray
    """Lower bound on the single-photon yield Y_1 (may be <= 0 when the data admit no single photons)."""
    e1_upper: FloatOrArray
    """Upper bound on the single-photon error rate e_1, capped at 1/2 (1/2 when Y_1 has no bound)."""
    q1_lower: FloatOrArray
    """Lower bound on the single-photon gain Q_1 = mu e^-mu Y_1 (clipped at 0)."""


def gllp_decoy_rate(
    *,
    q_mu: FloatOrArray,
    e_mu: FloatOrArray,
    q_nu: FloatOrArray,
    e_nu: FloatOrArray,
    y0: FloatOrArray,
    mu: float,
    nu: float,
    f: float = 1.16,
    q: float = 0.5,
    e0: float = 0.5,
) -> DecoyRate:
    """Asymptotic vacuum + weak decoy rate per pulse (GLLP with Ma, Qi, Zhao, Lo, PRA 72, 012326 (2005)).

    R >= q {-Q_mu f h(E_mu) + Q_1 [1 - h(e_1)]}                                 (Ma 2005, Eq. 1)
    Y_1 >= mu/(mu nu - nu^2) [Q_nu e^nu - Q_mu e^mu nu^2/mu^2 - (mu^2 - nu^2)/mu^2 Y_0]  (Eq. 34)
    e_1 <= (E_nu Q_nu e^nu - e_0 Y_0) / (Y_1 nu)                                 (Eq. 37)
    Q_1 = mu e^-mu Y_1; the bounds as written in docs/references.md §2.

    ``q_mu, e_mu`` are the observed gain and QBER of the signal (mean photon number ``mu``),
    ``q_nu, e_nu`` those of the weak decoy ``nu``, ``y0`` the vacuum yield, ``e0`` its error rate
    (1/2 for random dark counts), ``f`` the reconciliation inefficiency and ``q`` the sifting factor
    (1/2 for BB84 with equal bases). The rate is returned raw; when Y_1's bound is not positive the
    single-photon term is dropped (Q_1 = 0) and the rate is negative.
    """
    if not 0.0 < nu < mu:
        raise ConfigError("nu", f"need 0 < nu < mu, got mu = {mu}, nu = {nu}")
    if not f >= 1.0:
        raise ConfigError("f", f"reconciliation inefficiency must be >= 1, got {f}")
    if not 0.0 < q <= 1.0:
        raise ConfigError("q", f"sifting factor must be in (0, 1], got {q}")
    q_mu_a = np.asarray(q_mu, dtype=np.float64)
    q_nu_a = np.asarray(q_nu, dtype=np.float64)
    y0_a = np.asarray(y0, dtype=np.float64)
    y1 = (mu / (mu * nu - nu**2)) * (
        q_nu_a * math.exp(nu) - q_mu_a * math.exp(mu) * nu**2 / mu**2 - (mu**2 - nu**2) / mu**2 * y0_a
    )
    informative = y1 > 0.0
    safe_y1 = np.where(informative, y1, 1.0)
    e1 = (np.asarray(e_nu, dtype=np.float64) * q_nu_a * math.exp(nu) - e0 * y0_a) / (safe_y1 * nu)
    e1 = np.where(informative, np.clip(e1, 0.0, 0.5), 0.5)
    q1 = np.where(informative, mu * math.exp(-mu) * y1, 0.0)
    rate = q * (-q_mu_a * f * np.asarray(binary_entropy(e_mu)) + q1 * (1.0 - np.asarray(binary_entropy(e1))))
    return DecoyRate(
        rate=float_or_array(rate),
        y1_lower=float_or_array(y1),
        e1_upper=float_or_array(e1),
        q1_lower=float_or_array(q1),
    )
