"""Parameter estimation on hand-made sift plans: the decoy counts per class, and the E91 length's need for
a CHSH bound."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from qlinkmed.qcore.errors import LocalProtocolError
from qlinkmed.qcore.estimation import DecoyCounts, Statistics, final_key_length, measure_statistics
from qlinkmed.qcore.params import DecoySource, DistillConfig, E91Security, ProtocolKind
from qlinkmed.qcore.sifting import SiftPlan


def _plan(intensities: np.ndarray, key: np.ndarray, test: np.ndarray) -> SiftPlan:
    n = intensities.size
    zeros = np.zeros(n, dtype=np.uint8)
    return SiftPlan(
        pulses=np.arange(n),
        alice_settings=zeros,
        bob_settings=zeros,
        intensities=intensities,
        key_candidates=key,
        sample=np.zeros(key.size, dtype=bool),
        test=test,
        key=key,
    )


def test_decoy_counts_are_per_intensity_class() -> None:
    # Twelve coincidences: key at the even positions, test at the odd ones.
    classes = np.array([0, 1, 2, 0, 0, 1, 2, 2, 0, 2, 1, 0], dtype=np.uint8)
    key, test = np.arange(0, 12, 2), np.arange(1, 12, 2)  # test classes: 1, 0, 1, 2, 2, 0
    alice = np.zeros(test.size, dtype=np.uint8)
    bob = np.array([1, 0, 1, 1, 0, 0], dtype=np.uint8)  # wrong at test classes 1, 1, 2
    config = DistillConfig(decoy=DecoySource())
    stats = measure_statistics(config, _plan(classes, key, test), alice, bob)
    # key classes: 0, 2, 0, 2, 0, 1
    assert stats.decoy == DecoyCounts(
        key_basis_detections=(3, 1, 2), test_basis_detections=(2, 2, 2), test_basis_errors=(0, 2, 1)
    )
    assert (stats.errors, stats.sample_bits, stats.raw_key_bits) == (3, 6, 6)


def test_e91_key_length_without_a_chsh_bound_is_refused() -> None:
    config = DistillConfig(protocol=ProtocolKind.E91, e91_security=E91Security.DEVICE_INDEPENDENT)
    plan = _plan(np.zeros(0, dtype=np.uint8), np.arange(0), np.arange(0))
    counts = Statistics(raw_key_bits=100_000, sample_bits=30_000, errors=600, qber=0.02, qber_upper=0.03)
    with pytest.raises(LocalProtocolError, match="CHSH"):
        final_key_length(config, plan, counts, 500)
    assert final_key_length(config, plan, dataclasses.replace(counts, chsh_s=2.75, chsh_lower=2.7), 500) > 0
