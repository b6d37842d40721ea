"""The two sweeps QKD users expect, as plain data (the client draws and writes them).

1. Secret key per pulse against fibre length: simulated rounds (single-photon BB84, decoy BB84) beside
   the asymptotic theory curves and the finite-key prediction for the same block size.
2. QBER (BB84) and CHSH S (E91) against the fraction of pulses an intercept-resend eavesdropper attacks,
   with the theory lines and the abort thresholds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qlinkmed.qcore.params import DistillConfig, ProtocolKind, SourceKind

from . import channel_model, theory
from .channel import Eavesdropper, EveKind
from .channel_model import ChannelModel
from .finite_bb84 import tomamichel_length
from .sim import SimConfig, run_simulation


@dataclass(frozen=True, slots=True)
class DistancePoint:
    source: str
    distance_km: float
    pulses: int
    qber: float | None
    final_key_bits: int
    key_per_pulse: float
    aborted: bool
    abort_reason: str


@dataclass(frozen=True, slots=True)
class EvePoint:
    protocol: str
    eve_fraction: float
    qber: float | None
    qber_upper: float | None
    chsh_s: float | None
    chsh_lower: float | None
    aborted: bool
    abort_reason: str


@dataclass(frozen=True, slots=True)
class TheoryCurves:
    distances_km: np.ndarray
    single_photon_asymptotic: np.ndarray
    decoy_asymptotic: np.ndarray
    single_photon_finite: np.ndarray
    """Finite-key bits per pulse (Tomamichel 2012) for the simulated block size."""


def distance_sweep(
    distances_km: list[float], *, qubits: dict[SourceKind, int], seed: int
) -> list[DistancePoint]:
    """Simulated rounds at each distance, one per source; `qubits` gives each source's block size (the
    decoy bound of Lim et al. needs blocks about a hundred times larger than single photons do)."""
    points = []
    for i, distance in enumerate(distances_km):
        for j, (source, pulses) in enumerate(qubits.items()):
            result = run_simulation(
                SimConfig(
                    qubits=pulses,
                    channel=ChannelModel(distance_km=distance),
                    source=source,
                    seed=seed * 1000 + i * 10 + j,
                )
            )
            r = result.report()
            points.append(
                DistancePoint(
                    source=source.value,
                    distance_km=distance,
                    pulses=pulses,
                    qber=r["qber"],
                    final_key_bits=r["final_key_bits"],
                    key_per_pulse=r["final_key_bits"] / pulses,
                    aborted=r["aborted"],
                    abort_reason=r["abort_reason"] or "",
                )
            )
    return points


def theory_curves(distances_km: np.ndarray, *, qubits: int) -> TheoryCurves:
    distill = DistillConfig()
    curves = channel_model.secret_key_rate_curves(distances_km, f=distill.ec_efficiency_estimate)
    finite = np.zeros(distances_km.size)
    for i, (gain, q) in enumerate(
        zip(
            np.atleast_1d(curves.single_photon.detection_probability),
            np.atleast_1d(curves.single_photon.qber),
            strict=True,
        )
    ):
        sifted = qubits * float(gain) / 2
        k = round(distill.sample_fraction * sifted)
        n = round(sifted) - k
        if n <= 0 or k <= 0:
            continue
        leak = distill.ec_efficiency_estimate * n * float(theory.binary_entropy(float(q)))
        finite[i] = tomamichel_length(n, k, float(q), leak, distill.eps_sec, distill.eps_cor).length / qubits
    return TheoryCurves(
        distances_km=distances_km,
        single_photon_asymptotic=np.asarray(curves.single_photon_rate),
        decoy_asymptotic=np.asarray(curves.decoy_rate),
        single_photon_finite=finite,
    )


def eve_sweep(
    fractions: list[float], *, qubits: int, e91_pairs: int, seed: int, distance_km: float = 10.0
) -> list[EvePoint]:
    points = []
    for i, fraction in enumerate(fractions):
        for j, protocol in enumerate((ProtocolKind.BB84, ProtocolKind.E91)):
            result = run_simulation(
                SimConfig(
                    protocol=protocol,
                    qubits=qubits if protocol is ProtocolKind.BB84 else e91_pairs,
                    channel=ChannelModel(distance_km=distance_km),
                    eve=Eavesdropper(kind=EveKind.INTERCEPT_RESEND, fraction=fraction),
                    seed=seed * 1000 + i * 10 + j,
                )
            )
            r = result.report()
            points.append(
                EvePoint(
                    protocol=protocol.value,
                    eve_fraction=fraction,
                    qber=r["qber"],
                    qber_upper=r["qber_upper"],
                    chsh_s=r["chsh_s"],
                    chsh_lower=r["chsh_lower"],
                    aborted=r["aborted"],
                    abort_reason=r["abort_reason"] or "",
                )
            )
    return points


def eve_theory(fractions: np.ndarray, *, distance_km: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    """Expected BB84 QBER and E91 S when Eve intercepts a fraction p: she measures in the wrong basis
    half the time and then errs half the time, so Q = Q0 + (p/4)(1 - 2 Q0); for E91 her measurement
    halves the correlators she touches, so S = S0 (1 - p/2)."""
    model = ChannelModel(distance_km=distance_km)
    q0 = float(channel_model.predict_bb84(model, "single-photon").qber)
    s0 = float(channel_model.predict_e91(model).chsh)
    return q0 + fractions / 4 * (1 - 2 * q0), s0 * (1 - fractions / 2)
