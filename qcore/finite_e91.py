"""E91: the CHSH value's lower confidence bound and the key length evaluated at it.

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
    pa_penalty,
    tomamichel_deviation,
)
from .theory import binary_entropy, di_rate

__all__ = ["ChshBound", "E91KeyResult", "chsh_eve_information", "chsh_lower_bound", "e91_length"]

FAIR_SAMPLING_NOTE = (
    "assumes fair sampling: S measured on coincidences of lossy detectors, so this is not a "
    "device-independent guarantee (the detection loophole is open below ~83 % arm efficiency)"
)
"""What the device-independent mode must say wherever it reports a key (docs/references.md §2)."""


def chsh_eve_information(s: float) -> float:
    """chi(S) = h((1 + sqrt((S/2)^2 - 1)) / 2): Eve's information per key bit given CHSH value S (Acin et
    al. 2007). S is clipped to [2, 2 sqrt(2)]; one full bit at S <= 2."""
    s_clipped = min(max(s, 2.0), 2.0 * math.sqrt(2.0))
    root = math.sqrt(max((s_clipped / 2.0) ** 2 - 1.0, 0.0))
    return float(binary_entropy((1.0 + root) / 2.0))


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
    n = tuple(check_count("trials", v) for v in trials)
    a = tuple(check_count("agreements", v) for v in agreements)
    s = tuple(int(v) for v in signs)
    if len(n) != 4 or len(a) != 4 or len(s) != 4:
        raise ConfigError("trials", "need exactly four setting pairs (trials, agreements, signs)")
    if any(x not in (1, -1) for x in s):
        raise ConfigError("signs", f"each sign must be +1 or -1, got {s}")
    if any(ai > ni for ai, ni in zip(a, n, strict=True)):
        raise ConfigError("agreements", "cannot exceed trials")
    check_eps("eps", eps)
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
    """di_rate(s_lower, qber_upper), the asymptotic rate per key bit: -inf when s_lower < 2."""
    eve_information: float
    """chi(s_lower), Eve's information per key bit (:func:`chsh_eve_information`)."""
    pa_penalty: float
    """1 + 2 log2(1/eps_sec) + the verification hash's bits (`finite_terms.pa_penalty`)."""
    raw_length: float
    """n (1 - chi(s_lower)) - leak_ec - pa_penalty (-inf when no key is possible)."""
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

    l = floor(n (1 - chi(S_low)) - leak_EC - pa_penalty(eps_sec, eps_cor)), from the rate
    r_DI = 1 - h(Q) - chi(S) of Acin et al., PRL 98, 230501 (2007) (:func:`~qlinkmed.qcore.theory.di_rate`),
    whose h(Q) IS the error-correction cost: with the measured leak leak_EC in its place, error correction
    is paid once (an earlier version subtracted both, paying for error correction twice). S_low is the
    lower confidence bound of :func:`chsh_lower_bound`. The QBER bound Q + mu (mu Tomamichel et al.'s
    sampling deviation) decides only whether the round may key: r_DI(S_low, Q + mu) must be positive.
    The S behind it is measured on coincidences of lossy detectors, so the rate assumes fair sampling
    (:data:`FAIR_SAMPLING_NOTE`).
    This is NOT a complete device-independent finite-key proof: the DI rate is a collective-attack,
    asymptotic (von Neumann entropy) bound, and plugging confidence bounds into it ignores the
    finite-size entropy corrections a full proof (e.g. by entropy accumulation) would subtract. Use it
    as an engineering estimate and abort rule, not as a security certificate.
    Length 0 when S_low <= 2, when q_test + mu >= 1/2, when r_DI(S_low, Q + mu) <= 0, and for n = 0 or
    k = 0.
    """
    n = check_count("n", n)
    k = check_count("k", k)
    if not 0.0 <= q_test <= 1.0:
        raise ConfigError("q_test", f"must be in [0, 1], got {q_test}")
    if math.isnan(s_low):
        raise ConfigError("s_low", "must not be NaN")
    if not leak_ec >= 0.0:
        raise ConfigError("leak_ec", f"must be >= 0, got {leak_ec}")
    check_eps("eps_sec", eps_sec)
    check_eps("eps_cor", eps_cor)
    mu = tomamichel_deviation(n, k, eps_sec)
    upper = q_test + mu
    penalty = pa_penalty(eps_sec, eps_cor)
    rate = float(di_rate(s_low, min(upper, 0.5)))
    eve = chsh_eve_information(s_low)
    raw = -math.inf
    if s_low > 2.0 and upper < 0.5 and rate > 0.0:
        raw = n * (1.0 - eve) - leak_ec - penalty
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
        eve_information=eve,
        pa_penalty=penalty,
        raw_length=raw,
        length=floor_nonnegative(raw),
    )
