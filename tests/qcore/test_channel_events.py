"""The event-driven BB84 channel (qcore.channel_events) is the per-pulse emulator in distribution.

Each comparison is a two-sample z-test on a count: the per-pulse path and the event-driven path, run with
independent seeds on the same pulse count, give counts X1 and X2 of one kind of detection (per decoy class,
basis agreement and error); under the same distribution X1 - X2 has mean 0 and variance
2 n p (1 - p), with p the pooled rate. Every test below shares one false-alarm budget: k sigma is set by
Bonferroni for all the comparisons in this file, so the whole file fails by chance with probability
below FAMILY_ALPHA. The event path is also checked against the exact model (channel_model.predict_bb84).
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest

from qlinkmed.qcore.backends import get_backend
from qlinkmed.qcore.channel import Eavesdropper, EveKind, emulate_bb84, prepare_bb84
from qlinkmed.qcore.channel_events import emulate_bb84_events
from qlinkmed.qcore.channel_model import ChannelModel, predict_bb84
from qlinkmed.qcore.errors import ConfigError
from qlinkmed.qcore.params import DecoySource, SourceKind
from qlinkmed.qcore.randomness import RandomSource
from qlinkmed.qcore.sim import SimConfig, make_sessions, run_simulation

FAMILY_ALPHA = 1e-4
COMPARISONS = 400
"""An upper bound on the z-tests in this file (cells x configurations + model checks)."""
K_SIGMA = NormalDist().inv_cdf(1 - FAMILY_ALPHA / COMPARISONS / 2)

DECOY = DecoySource()
CASES = {
    "single-10km": (SourceKind.SINGLE_PHOTON, 10.0, Eavesdropper(), 4_000_000),
    "single-10km-ir": (
        SourceKind.SINGLE_PHOTON,
        10.0,
        Eavesdropper(kind=EveKind.INTERCEPT_RESEND),
        4_000_000,
    ),
    "wcp-10km": (SourceKind.WCP, 10.0, Eavesdropper(), 4_000_000),
    "wcp-50km": (SourceKind.WCP, 50.0, Eavesdropper(), 10_000_000),
    "wcp-10km-ir-half": (
        SourceKind.WCP,
        10.0,
        Eavesdropper(kind=EveKind.INTERCEPT_RESEND, fraction=0.5),
        4_000_000,
    ),
    "wcp-10km-pns": (SourceKind.WCP, 10.0, Eavesdropper(kind=EveKind.PNS), 4_000_000),
    "wcp-25km-pns": (SourceKind.WCP, 25.0, Eavesdropper(kind=EveKind.PNS), 10_000_000),
    "wcp-50km-pns": (SourceKind.WCP, 50.0, Eavesdropper(kind=EveKind.PNS), 10_000_000),
}


def _cells(sent_bits, sent_bases, classes, detected, bob_bases, bob_bits) -> np.ndarray:
    """Detections per (class, bases agree, bits differ): a 3 x 2 x 2 table."""
    d = np.flatnonzero(detected)
    k = np.zeros(d.size, dtype=np.int64) if classes is None else classes[d].astype(np.int64)
    agree = (sent_bases[d] == bob_bases[d]).astype(np.int64)
    wrong = (sent_bits[d] != bob_bits[d]).astype(np.int64)
    return np.bincount(k * 4 + agree * 2 + wrong, minlength=12).reshape(3, 2, 2)


def _per_pulse(n, model, source, eve, seed):
    decoy = DECOY if source is SourceKind.WCP else None
    prepared = prepare_bb84(n, source=source, decoy=decoy, secret=RandomSource.seeded(seed + 1))
    sent, seen, stats = emulate_bb84(
        n,
        model=model,
        source=source,
        decoy=decoy,
        eve=eve,
        backend=get_backend("numpy"),
        rng=np.random.default_rng(seed),
        prepared=prepared,
        bob_bases=RandomSource.seeded(seed + 2).bits(n),
    )
    cells = _cells(sent.bits, sent.bases, sent.intensity_class, seen.detected, seen.bases, seen.bits)
    return cells, stats


def _events(n, model, source, eve, seed, chunk=10_000_000):
    decoy = DECOY if source is SourceKind.WCP else None
    sent, seen, stats = emulate_bb84_events(
        n,
        model=model,
        source=source,
        decoy=decoy,
        eve=eve,
        rng=np.random.default_rng(seed),
        alice=RandomSource.seeded(seed + 1),
        bob=RandomSource.seeded(seed + 2),
        chunk=chunk,
    )
    assert seen.detected.all()
    cells = _cells(sent.bits, sent.bases, sent.intensity_class, seen.detected, seen.bases, seen.bits)
    return cells, stats


def _assert_same_rate(x1: int, x2: int, n: int, what: str) -> None:
    p = (x1 + x2) / (2 * n)
    sd = math.sqrt(2 * n * p * (1 - p))
    assert abs(x1 - x2) <= K_SIGMA * sd + 1e-9, f"{what}: {x1} vs {x2} (allowed {K_SIGMA * sd:.1f})"


@pytest.mark.parametrize("case", sorted(CASES))
def test_counts_per_class_basis_and_error_match_the_per_pulse_path(case: str) -> None:
    source, km, eve, n = CASES[case]
    model = ChannelModel(distance_km=km)
    ref, ref_stats = _per_pulse(n, model, source, eve, seed=100)
    ev, ev_stats = _events(n, model, source, eve, seed=200)
    for index in np.ndindex(ref.shape):
        _assert_same_rate(int(ref[index]), int(ev[index]), n, f"{case} cell (class, agree, wrong)={index}")
    _assert_same_rate(int(ref.sum()), int(ev.sum()), n, f"{case} detections")
    # Matched-basis QBER: errors among matched-basis detections, a two-proportion z-test.
    e1, m1 = int(ref[:, 1, 1].sum()), int(ref[:, 1].sum())
    e2, m2 = int(ev[:, 1, 1].sum()), int(ev[:, 1].sum())
    q = (e1 + e2) / (m1 + m2)
    assert abs(e1 / m1 - e2 / m2) <= K_SIGMA * math.sqrt(q * (1 - q) * (1 / m1 + 1 / m2))
    if eve.active:
        _assert_same_rate(ref_stats.eve_attacked, ev_stats.eve_attacked, n, f"{case} attacked")
        _assert_same_rate(ref_stats.eve_known_bits, ev_stats.eve_known_bits, n, f"{case} known to Eve")
    else:
        assert ev_stats.eve_attacked == ev_stats.eve_known_bits == 0


def test_after_pulses_on_clicked_gates_and_across_chunks_match_the_per_pulse_path() -> None:
    # A short, efficient line and frequent after-pulses: an after-pulse often lands on a gate that clicked
    # itself (a double click), and a chunk of 997 pulses puts many clicks on a chunk's last gate.
    model = ChannelModel(distance_km=0.0, detector_efficiency=0.6, afterpulse=0.5, misalignment=0.02)
    n = 400_000
    for source in (SourceKind.SINGLE_PHOTON, SourceKind.WCP):
        ref, _ = _per_pulse(n, model, source, Eavesdropper(), seed=300)
        for chunk in (10_000_000, 997):
            ev, _ = _events(n, model, source, Eavesdropper(), seed=400 + chunk, chunk=chunk)
            for index in np.ndindex(ref.shape):
                _assert_same_rate(int(ref[index]), int(ev[index]), n, f"{source} chunk {chunk} {index}")


@pytest.mark.parametrize("km", [10.0, 50.0])
def test_per_class_gain_and_qber_match_the_exact_model(km: float) -> None:
    model = ChannelModel(distance_km=km)
    n = 20_000_000
    ev, _ = _events(n, model, SourceKind.WCP, Eavesdropper(), seed=500)
    eta = model.transmittance
    q = 1.0 - model.dark_count
    previous = sum(
        p * (1.0 - q * q * math.exp(-eta * mu))
        for mu, p in zip(DECOY.intensities, DECOY.probabilities, strict=True)
    )
    for k, (mu, p) in enumerate(zip(DECOY.intensities, DECOY.probabilities, strict=True)):
        pred = predict_bb84(model, "wcp", mu=mu, previous_click_probability=previous)
        expected = n * p * float(pred.detection_probability)
        count = int(ev[k].sum())
        assert abs(count - expected) <= K_SIGMA * math.sqrt(expected), (k, count, expected)
        matched, errors = int(ev[k, 1].sum()), int(ev[k, 1, 1])
        e = float(pred.qber)
        assert abs(errors - matched * e) <= K_SIGMA * math.sqrt(matched * e * (1 - e)) + 1, (
            k,
            errors,
            matched,
        )


def test_memory_follows_the_detections_not_the_pulses() -> None:
    # 1e10 pulses at 250 km: a few thousand detections. The per-pulse path would need 280 GB.
    model = ChannelModel(distance_km=250.0, dark_count=1e-9)
    sent, seen, stats = _events_big(model)
    assert stats.pulses == 10_000_000_000
    assert sent.bits.size == seen.bits.size < 100_000


def _events_big(model):
    return emulate_bb84_events(
        10_000_000_000,
        model=model,
        source=SourceKind.WCP,
        decoy=DECOY,
        eve=Eavesdropper(),
        rng=np.random.default_rng(7),
        alice=RandomSource.seeded(8),
        bob=RandomSource.seeded(9),
        chunk=2_000_000_000,
    )


def test_the_event_path_takes_more_pulses_than_the_per_pulse_limit() -> None:
    assert SimConfig(qubits=10_000_000_000, source=SourceKind.WCP).event_driven
    with pytest.raises(ConfigError, match="per-pulse"):
        SimConfig(qubits=10_000_000_000, source=SourceKind.WCP, per_pulse=True)
    with pytest.raises(ConfigError, match="per-pulse"):
        SimConfig(qubits=10_000_000_000, backend="qiskit")


def test_sessions_from_the_event_path_cover_the_detections_only() -> None:
    config = SimConfig(qubits=1_000_000, seed=4)
    detected = make_sessions(config)[2]
    reference = make_sessions(SimConfig(qubits=1_000_000, seed=4, per_pulse=True))[2]
    _assert_same_rate(detected, reference, 1_000_000, "detections")


def test_key_lengths_agree_between_the_paths() -> None:
    # Single photons at 10 km: the final key length is a smooth function of the detections and errors, so
    # its spread over seeds bounds how far the two paths' means may differ.
    lengths = {
        per_pulse: [
            run_simulation(
                SimConfig(
                    qubits=1_000_000, channel=ChannelModel(distance_km=10.0), seed=s, per_pulse=per_pulse
                )
            ).report()["final_key_bits"]
            for s in range(4)
        ]
        for per_pulse in (False, True)
    }
    a, b = np.asarray(lengths[False], float), np.asarray(lengths[True], float)
    assert a.min() > 0 and b.min() > 0
    spread = math.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 4) + 1.0
    assert abs(a.mean() - b.mean()) <= K_SIGMA * spread, (a, b)
