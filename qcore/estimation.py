"""Parameter estimation and the abort rules, computed identically at both ends from the disclosed bits."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qlinkmed.qcore.params import ProtocolKind

from .auth import ROUND_AUTH_BITS
from .constants import CHSH_CLASSICAL_BOUND
from .errors import AbortReason, LocalProtocolError, RoundAborted
from .finite_bb84 import tomamichel_length
from .finite_decoy import Lim2014Result, lim2014_length
from .finite_e91 import ChshBound, chsh_lower_bound, e91_length
from .params import DistillConfig, E91Security
from .sifting import E91_CHSH_SETTINGS, E91_CHSH_SIGNS, SiftSummary
from .theory import binary_entropy, di_rate


@dataclass(frozen=True, slots=True)
class DecoyCounts:
    """Per-intensity counts for the Lim et al. 2014 bound (index = decoy class)."""

    key_basis_detections: tuple[int, int, int]
    test_basis_detections: tuple[int, int, int]
    test_basis_errors: tuple[int, int, int]


@dataclass(frozen=True, slots=True)
class Statistics:
    raw_key_bits: int
    """n: key bits left after disclosure."""
    sample_bits: int
    """k: disclosed bits that estimate the key's error rate."""
    errors: int
    qber: float
    qber_upper: float
    """The finite-size upper bound on the phase error the key length is computed from."""
    chsh_s: float | None = None
    chsh_lower: float | None = None
    chsh_trials: int = 0
    decoy: DecoyCounts | None = None


def _chsh(sifted: SiftSummary, alice: np.ndarray, bob: np.ndarray, eps: float) -> ChshBound:
    trials: list[int] = []
    agreements: list[int] = []
    a_set = sifted.alice_settings
    b_set = sifted.bob_settings
    for a, b in E91_CHSH_SETTINGS:
        sel = (a_set == a) & (b_set == b)
        trials.append(int(sel.sum()))
        agreements.append(int(np.count_nonzero(alice[sel] == bob[sel])))
    return chsh_lower_bound(trials, agreements, E91_CHSH_SIGNS, eps)


def measure_statistics(
    config: DistillConfig, sifted: SiftSummary, alice_test: np.ndarray, bob_test: np.ndarray
) -> Statistics:
    """QBER (and CHSH or decoy counts) from Alice's and Bob's bits at the disclosed positions."""
    n = sifted.raw_key_bits
    # Which disclosed positions are sampled key candidates (E91 also discloses its CHSH positions).
    in_sample = sifted.in_sample
    if config.decoy is not None:
        return _decoy_statistics(config, sifted, alice_test, bob_test)
    k = int(in_sample.sum())
    errors = int(np.count_nonzero(alice_test[in_sample] != bob_test[in_sample]))
    qber = errors / k if k else 0.5
    qber_upper = (
        tomamichel_length(n, k, qber, 0.0, config.eps_sec, config.eps_cor).qber_upper if (n and k) else 0.5
    )
    if config.protocol is ProtocolKind.E91:
        chsh = _chsh(sifted, alice_test, bob_test, config.eps_sec)
        return Statistics(
            raw_key_bits=n,
            sample_bits=k,
            errors=errors,
            qber=qber,
            qber_upper=qber_upper,
            chsh_s=chsh.s,
            chsh_lower=chsh.s_lower,
            chsh_trials=int(sum(chsh.trials)),
        )
    return Statistics(raw_key_bits=n, sample_bits=k, errors=errors, qber=qber, qber_upper=qber_upper)


def _decoy_statistics(
    config: DistillConfig, sifted: SiftSummary, alice_test: np.ndarray, bob_test: np.ndarray
) -> Statistics:
    test_int = sifted.intensities
    wrong = alice_test != bob_test
    counts = DecoyCounts(
        key_basis_detections=sifted.key_classes,
        test_basis_detections=_per_class(test_int),
        test_basis_errors=_per_class(test_int[wrong]),
    )
    k = sifted.test_bits
    errors = int(np.count_nonzero(wrong))
    bound = _lim(config, counts, 0.0)
    return Statistics(
        raw_key_bits=sifted.raw_key_bits,
        sample_bits=k,
        errors=errors,
        qber=errors / k if k else 0.5,
        qber_upper=min(float(bound.phi_x), 0.5) if np.isfinite(bound.phi_x) else 0.5,
        decoy=counts,
    )


def _per_class(classes: np.ndarray) -> tuple[int, int, int]:
    """How many of the labels are decoy class 0, 1 and 2."""
    return (
        int(np.count_nonzero(classes == 0)),
        int(np.count_nonzero(classes == 1)),
        int(np.count_nonzero(classes == 2)),
    )


def _lim(config: DistillConfig, counts: DecoyCounts, leak: float) -> Lim2014Result:
    decoy = config.decoy
    if decoy is None:
        raise LocalProtocolError("decoy bound without a decoy source")
    return lim2014_length(
        intensities=decoy.intensities,
        probabilities=decoy.probabilities,
        n_x=counts.key_basis_detections,
        n_z=counts.test_basis_detections,
        m_z=counts.test_basis_errors,
        leak_ec=leak,
        eps_sec=config.eps_sec,
        eps_cor=config.eps_cor,
    )


def _length(config: DistillConfig, stats: Statistics, leak: float) -> int:
    if stats.decoy is not None:
        return int(_lim(config, stats.decoy, leak).length)
    if config.protocol is ProtocolKind.E91 and config.e91_security is E91Security.DEVICE_INDEPENDENT:
        if stats.chsh_lower is None:
            raise LocalProtocolError("E91 key length without a CHSH bound")
        return int(
            e91_length(
                stats.raw_key_bits,
                stats.sample_bits,
                stats.qber,
                stats.chsh_lower,
                leak,
                config.eps_sec,
                config.eps_cor,
            ).length
        )
    # BB84 and E91 keyed as BBM92: two conjugate key bases, so Tomamichel 2012 on the key-basis counts.
    return int(
        tomamichel_length(
            stats.raw_key_bits, stats.sample_bits, stats.qber, leak, config.eps_sec, config.eps_cor
        ).length
    )


def judge_statistics(config: DistillConfig, sifted: SiftSummary, stats: Statistics) -> None:
    """Raise RoundAborted if the statistics forbid a key; return quietly otherwise."""
    if stats.raw_key_bits == 0 or stats.sample_bits == 0:
        raise RoundAborted(
            AbortReason.TOO_FEW_DETECTIONS,
            f"{stats.raw_key_bits} key bits and {stats.sample_bits} test bits",
            measured=float(sifted.sifted_bits),
        )
    s_low = stats.chsh_lower if stats.chsh_lower is not None else float("-inf")
    if config.protocol is ProtocolKind.E91 and s_low <= CHSH_CLASSICAL_BOUND:
        raise RoundAborted(
            AbortReason.CHSH_NOT_VIOLATED,
            f"CHSH S = {stats.chsh_s:.3f}, lower bound {s_low:.3f} <= {CHSH_CLASSICAL_BOUND:g}: "
            "no Bell violation",
            measured=s_low,
            threshold=CHSH_CLASSICAL_BOUND,
        )
    # Tomamichel et al. 2012: the round aborts when the OBSERVED test error exceeds the tolerance; the
    # statistical deviation (qber_upper for single photons and E91, phi_X for decoys) enters only the
    # length below. Aborting on the bound instead would throw away rounds the bound still gives key for
    # (about 25 km of range at 1e7 pulses), and a small round's loose bound reads as a short key, not Eve.
    if stats.qber > config.qber_tolerance:
        raise RoundAborted(
            AbortReason.QBER_ABOVE_THRESHOLD,
            f"observed QBER {stats.qber:.4f} > tolerance {config.qber_tolerance} "
            f"(upper bound {stats.qber_upper:.4f})",
            measured=stats.qber,
            threshold=config.qber_tolerance,
        )
    if config.protocol is ProtocolKind.E91 and config.e91_security is E91Security.DEVICE_INDEPENDENT:
        rate = float(di_rate(s_low, stats.qber_upper))
        if rate <= 0.0:
            raise RoundAborted(
                AbortReason.DI_RATE_NONPOSITIVE,
                f"device-independent rate {rate:.4f} <= 0 at S >= {s_low:.3f}",
                measured=rate,
                threshold=0.0,
            )
    expected_leak = config.ec_efficiency_estimate * stats.raw_key_bits * float(binary_entropy(stats.qber))
    length = _length(config, stats, expected_leak)
    if length <= ROUND_AUTH_BITS:
        reason = AbortReason.DECOY_BOUND_EMPTY if stats.decoy is not None else AbortReason.FINITE_KEY_EMPTY
        raise RoundAborted(
            reason,
            f"expected finite-key length {length} bits does not exceed the authentication cost",
            measured=float(length),
            threshold=float(ROUND_AUTH_BITS),
        )


def final_key_length(config: DistillConfig, stats: Statistics, leak: int) -> int:
    """Privacy-amplification output length with the leakage actually disclosed (the statistics carry
    everything the bound needs, so the sifting plan can be freed once they are measured)."""
    return _length(config, stats, float(leak))
