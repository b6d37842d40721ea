"""Parameter estimation on hand-made sift plans: the decoy counts per class, the E91 length's need for a
CHSH bound, and the abort rule (Tomamichel et al. 2012: the OBSERVED test error against the tolerance,
the statistical deviation in the length only)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from qlinkmed.qcore.auth import ROUND_AUTH_BITS
from qlinkmed.qcore.errors import AbortReason, LocalProtocolError, RoundAborted
from qlinkmed.qcore.estimation import (
    DecoyCounts,
    Statistics,
    final_key_length,
    judge_statistics,
    measure_statistics,
)
from qlinkmed.qcore.finite_bb84 import tomamichel_length
from qlinkmed.qcore.params import DecoySource, DistillConfig, E91Security, ProtocolKind
from qlinkmed.qcore.sifting import SiftPlan


def _mask(n: int, positions: np.ndarray) -> np.ndarray:
    mask = np.zeros(n, dtype=bool)
    mask[positions] = True
    return mask


def _plan(intensities: np.ndarray, key: np.ndarray, test: np.ndarray) -> SiftPlan:
    n = intensities.size
    zeros = np.zeros(n, dtype=np.uint8)
    return SiftPlan(
        pulses=np.ones(n, dtype=bool),
        alice_settings=zeros,
        bob_settings=zeros,
        intensities=intensities,
        key_candidates=_mask(n, key),
        sample=np.zeros(key.size, dtype=bool),
        test=_mask(n, test),
        key=_mask(n, key),
    )


def test_decoy_counts_are_per_intensity_class() -> None:
    # Twelve coincidences: key at the even positions, test at the odd ones.
    classes = np.array([0, 1, 2, 0, 0, 1, 2, 2, 0, 2, 1, 0], dtype=np.uint8)
    key, test = np.arange(0, 12, 2), np.arange(1, 12, 2)  # test classes: 1, 0, 1, 2, 2, 0
    alice = np.zeros(test.size, dtype=np.uint8)
    bob = np.array([1, 0, 1, 1, 0, 0], dtype=np.uint8)  # wrong at test classes 1, 1, 2
    config = DistillConfig(decoy=DecoySource())
    stats = measure_statistics(config, _plan(classes, key, test).summary(), alice, bob)
    # key classes: 0, 2, 0, 2, 0, 1
    assert stats.decoy == DecoyCounts(
        key_basis_detections=(3, 1, 2), test_basis_detections=(2, 2, 2), test_basis_errors=(0, 2, 1)
    )
    assert (stats.errors, stats.sample_bits, stats.raw_key_bits) == (3, 6, 6)


def test_e91_key_length_without_a_chsh_bound_is_refused() -> None:
    config = DistillConfig(protocol=ProtocolKind.E91, e91_security=E91Security.DEVICE_INDEPENDENT)
    counts = Statistics(raw_key_bits=100_000, sample_bits=30_000, errors=600, qber=0.02, qber_upper=0.03)
    with pytest.raises(LocalProtocolError, match="CHSH"):
        final_key_length(config, counts, 500)
    assert final_key_length(config, dataclasses.replace(counts, chsh_s=2.75, chsh_lower=2.7), 500) > 0


# ---- the abort rule ---------------------------------------------------------------------------------
def _bb84_round(n: int, k: int, errors: int) -> tuple[DistillConfig, SiftPlan, Statistics]:
    """A single-photon BB84 round of n key bits and k test bits, `errors` of them wrong, measured by
    measure_statistics (so qber_upper is the estimator's own Q + mu)."""
    config = DistillConfig()
    candidates = np.ones(n + k, dtype=bool)
    sample = np.zeros(n + k, dtype=bool)
    sample[n:] = True
    plan = SiftPlan(
        pulses=candidates,
        alice_settings=np.zeros(n + k, dtype=np.uint8),
        bob_settings=np.zeros(n + k, dtype=np.uint8),
        intensities=np.zeros(0, dtype=np.uint8),
        key_candidates=candidates,
        sample=sample,
        test=sample,
        key=~sample,
    )
    alice = np.zeros(k, dtype=np.uint8)
    bob = alice.copy()
    bob[:errors] = 1
    return config, plan, measure_statistics(config, plan.summary(), alice, bob)


def _expected_length(config: DistillConfig, stats: Statistics) -> int:
    # The early judgement's leak: the configured reconciliation inefficiency times n h(Q).
    q = stats.qber
    h = -q * np.log2(q) - (1 - q) * np.log2(1 - q)
    leak = config.ec_efficiency_estimate * stats.raw_key_bits * float(h)
    return tomamichel_length(
        stats.raw_key_bits, stats.sample_bits, q, leak, config.eps_sec, config.eps_cor
    ).length


def test_observed_qber_below_the_tolerance_is_not_aborted_when_only_q_plus_mu_is_above() -> None:
    # 90 km, 1e7 pulses: about 6,000 key bits and 2,500 test bits at 3.5 %; Q + mu is about 15 %.
    config, plan, stats = _bb84_round(6_000, 2_500, 88)
    assert stats.qber == pytest.approx(0.0352) and stats.qber < config.qber_tolerance
    assert stats.qber_upper > 0.15 > config.qber_tolerance
    judge_statistics(config, plan.summary(), stats)  # no abort: the deviation only shortens the key
    length = _expected_length(config, stats)
    assert length > ROUND_AUTH_BITS
    assert (
        final_key_length(config, stats, 1_400)
        == tomamichel_length(6_000, 2_500, stats.qber, 1_400, config.eps_sec, config.eps_cor).length
    )


def test_a_round_too_small_for_its_bound_ends_on_its_length_not_on_the_qber() -> None:
    config, plan, stats = _bb84_round(1_500, 600, 21)
    assert stats.qber < config.qber_tolerance < stats.qber_upper
    with pytest.raises(RoundAborted) as caught:
        judge_statistics(config, plan.summary(), stats)
    assert caught.value.reason is AbortReason.FINITE_KEY_EMPTY
    assert caught.value.measured == float(_expected_length(config, stats))
    assert caught.value.threshold == float(ROUND_AUTH_BITS)


def test_observed_qber_above_the_tolerance_aborts_and_reports_the_observed_value() -> None:
    config, plan, stats = _bb84_round(200_000, 50_000, 5_600)  # 11.2 %, a large round: mu is small
    assert stats.qber > config.qber_tolerance
    with pytest.raises(RoundAborted) as caught:
        judge_statistics(config, plan.summary(), stats)
    assert caught.value.reason is AbortReason.QBER_ABOVE_THRESHOLD
    assert (caught.value.measured, caught.value.threshold) == (stats.qber, config.qber_tolerance)
    assert "observed QBER 0.1120 > tolerance 0.11" in caught.value.detail


def test_e91_is_judged_on_its_observed_qber_too() -> None:
    # E91 keeps its CHSH test and its device-independent length; only the plain QBER rule changed.
    config = DistillConfig(protocol=ProtocolKind.E91)
    sifted = _plan(np.zeros(0, dtype=np.uint8), np.arange(0), np.arange(0)).summary()
    stats = Statistics(
        raw_key_bits=100_000,
        sample_bits=30_000,
        errors=600,
        qber=0.02,
        qber_upper=0.12,
        chsh_s=2.75,
        chsh_lower=2.7,
    )
    judge_statistics(config, sifted, stats)  # Q + mu = 12 % > 11 %, but the observed 2 % is judged
    above = dataclasses.replace(stats, errors=3_600, qber=0.12, qber_upper=0.13)
    with pytest.raises(RoundAborted) as caught:
        judge_statistics(config, sifted, above)
    assert caught.value.reason is AbortReason.QBER_ABOVE_THRESHOLD and caught.value.measured == 0.12
