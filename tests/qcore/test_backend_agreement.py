"""The numpy and qiskit backends agree statistically on the same channel, end to end through the protocol:
QBER (BB84) and CHSH S (E91), with tolerances from the sample sizes (Z_1E6: two-sided 1e-6)."""

from __future__ import annotations

import math

import pytest

from qlinkmed.qcore.channel_model import ChannelModel
from qlinkmed.qcore.params import ProtocolKind
from qlinkmed.qcore.sim import SimConfig, run_simulation

pytestmark = pytest.mark.qiskit
Z_1E6 = 4.89


def test_bb84_qber_agrees_between_backends() -> None:
    channel = ChannelModel(distance_km=5.0, misalignment=0.03)
    reports = [
        run_simulation(SimConfig(qubits=1_000_000, channel=channel, backend=b, seed=31)).report()
        for b in ("numpy", "qiskit")
    ]
    (q1, k1), (q2, k2) = ((r["qber"], r["sample_bits"]) for r in reports)
    pooled = (q1 * k1 + q2 * k2) / (k1 + k2)
    band = Z_1E6 * math.sqrt(pooled * (1 - pooled) * (1 / k1 + 1 / k2))
    assert abs(q1 - q2) <= band
    assert all(not r["aborted"] for r in reports)


def test_e91_chsh_and_qber_agree_between_backends() -> None:
    channel = ChannelModel(distance_km=0.0, misalignment=0.02)
    results = [
        run_simulation(
            SimConfig(protocol=ProtocolKind.E91, qubits=3_000_000, channel=channel, backend=b, seed=32)
        )
        for b in ("numpy", "qiskit")
    ]
    numpy_stats, qiskit_stats = (r.bob.statistics for r in results)
    assert numpy_stats is not None and qiskit_stats is not None
    assert numpy_stats.chsh_s is not None and qiskit_stats.chsh_s is not None  # E91 measures S
    stats = [numpy_stats, qiskit_stats]
    # Var(S_hat) <= sum over the four correlators of 1/N_ab, about 16/N for N trials in all.
    band_s = Z_1E6 * math.sqrt(sum(16 / s.chsh_trials for s in stats))
    assert abs(numpy_stats.chsh_s - qiskit_stats.chsh_s) <= band_s
    pooled = (numpy_stats.errors + qiskit_stats.errors) / (numpy_stats.sample_bits + qiskit_stats.sample_bits)
    band_q = Z_1E6 * math.sqrt(pooled * (1 - pooled) * sum(1 / s.sample_bits for s in stats))
    assert abs(numpy_stats.qber - qiskit_stats.qber) <= band_q
