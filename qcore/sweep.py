"""The two sweeps QKD users expect, as plain data (the client runs, draws and writes them).

1. Secret key per pulse against fibre length: simulated rounds (single-photon BB84, decoy BB84 with the
   optimised source, E91 keyed by BBM92) at several block sizes, beside the finite-key curves each
   protocol's analysis expects for the same block sizes and the asymptotic lines.
2. QBER (BB84) and CHSH S (E91) against the fraction of pulses an intercept-resend eavesdropper attacks,
   with the theory lines and the abort thresholds.

A distance sweep is a list of :class:`PointSpec`; :func:`run_point` is the pure function a process pool
or a Dask worker runs on each. Memory is estimated here (:func:`estimate_point_bytes`); what the machine
has is the caller's business.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from qlinkmed.qcore.params import DistillConfig, ProtocolKind, SourceKind

from . import channel_model, theory
from .channel import E91_ALICE_PROBABILITIES, E91_BOB_PROBABILITIES, Eavesdropper, EveKind
from .channel_model import ChannelModel
from .decoy_optimiser import expected_decoy_length, optimise
from .errors import ConfigError
from .finite_bb84 import tomamichel_length
from .finite_e91 import chsh_lower_bound
from .security import DEFAULT_EPS_COR, DEFAULT_EPS_SEC
from .sifting import E91_CHSH_SETTINGS, E91_CHSH_SIGNS
from .sim import SimConfig, run_simulation

SWEEP_PROTOCOLS = ("single-photon", "decoy", "e91")
"""What a distance sweep compares: BB84 with an ideal single-photon source, BB84 with the optimised
decoy-state source (weak coherent pulses), and E91 keyed by BBM92."""

E91_MAX_PAIRS = 10_000_000_000
"""Pairs one simulated E91 point may have. E91 runs the event-driven path (qcore.channel_events: memory
follows the coincidences, ~1.1e-2 a pair at 0 km): 1e10 pairs at 0 km is 1.07e8 coincidences, measured
at 165 s and 2.2 GiB peak (estimated 3.6 GiB); 1e11 would need ten times that."""

BYTES_PER_DETECTION = 56
"""Peak memory per detected pulse of a round after the channel (the streamed distillation: sifting
masks, Cascade's pass tables, the transcripts, privacy amplification in FFT tiles): docs/benchmarks.md
measured 1.33 GiB for 32.8 M detections (44 B each with the process's base) and 4.22 GiB for 114 M, so
the estimate leans about 30 % high."""
BYTES_PER_COINCIDENCE = 32
"""The same for an E91 coincidence (event-driven E91, bench/bench_event_sim.py --e91 at 0 km, 2026-12-06):
0.43 GiB for 1.07e7 coincidences at 1e9 pairs and 2.20 GiB for 1.07e8 at 1e10 (22 B each with the base),
so the estimate leans about 60 % high, as BB84's does."""
BASE_BYTES = 400 * 2**20
"""A worker's interpreter, numpy, scipy and the event emulator's chunk buffers."""


_E91_KEY_SHARE = sum(
    pa * pb for pa, pb in zip(E91_ALICE_PROBABILITIES, E91_BOB_PROBABILITIES[:2], strict=True)
)
"""Share of E91 coincidences at matching key settings (Alice's X or Z equal to Bob's)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PointSpec:
    """One simulated round of a distance sweep."""

    protocol: str
    """single-photon, decoy or e91 (:data:`SWEEP_PROTOCOLS`)."""
    distance_km: float
    """Fibre length; E91's source sits in the middle."""
    pulses: int
    """Pulses (BB84) or entangled pairs (E91) of the round."""
    seed: int
    """Seed of every random choice in the round (:func:`point_seed`)."""

    def __post_init__(self) -> None:
        if self.protocol not in SWEEP_PROTOCOLS:
            raise ConfigError("protocol", f"unknown {self.protocol!r}; expected one of {SWEEP_PROTOCOLS}")
        if not (math.isfinite(self.distance_km) and 0.0 <= self.distance_km <= 1000.0):
            raise ConfigError("distances", f"a distance must be in [0, 1000] km, got {self.distance_km}")
        if self.pulses <= 0:
            raise ConfigError("pulses", f"must be positive, got {self.pulses}")
        if self.protocol == "e91" and self.pulses > E91_MAX_PAIRS:
            raise ConfigError(
                "e91_pulses",
                f"{self.pulses:.0e} pairs: at most {E91_MAX_PAIRS:.0e} pairs a point fit in memory (the"
                " event-driven E91 path holds its coincidences, about 1e-2 a pair near 0 km)",
            )
        if self.seed < 0:
            raise ConfigError("seed", f"must be >= 0, got {self.seed}")

    @property
    def label(self) -> str:
        return f"{self.protocol} {self.distance_km:g} km {self.pulses:.0e} pulses"

    def sim_config(self) -> SimConfig:
        """The round `qlink sim bb84|e91` would run for these parameters (its defaults: event-driven BB84,
        the optimised decoy source, BBM92 for E91)."""
        bb84 = self.protocol != "e91"
        return SimConfig(
            protocol=ProtocolKind.BB84 if bb84 else ProtocolKind.E91,
            qubits=self.pulses,
            channel=ChannelModel(distance_km=self.distance_km),
            source=SourceKind.WCP if self.protocol == "decoy" else SourceKind.SINGLE_PHOTON,
            decoy=None,
            seed=self.seed,
        )


def point_seed(seed: int, protocol: str, distance_km: float, pulses: int) -> int:
    """A point's seed from the sweep's seed and the point itself, so that adding, dropping or reordering
    points (or resuming a sweep) leaves every other point's round unchanged."""
    if seed < 0:
        raise ConfigError("seed", f"must be >= 0, got {seed}")
    entropy = [seed, SWEEP_PROTOCOLS.index(protocol), round(distance_km * 1000), pulses]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0] >> 1)


def sweep_points(
    distances_km: Sequence[float],
    pulses: Sequence[int],
    protocols: Sequence[str],
    *,
    seed: int,
    e91_pulses: Sequence[int] | None = None,
) -> tuple[list[PointSpec], list[str]]:
    """Every (protocol, pulses, distance) of the grid, and notes on what was left out.

    E91 takes ``e91_pulses`` when given (each must be at most :data:`E91_MAX_PAIRS`, else ConfigError),
    else the entries of ``pulses`` up to that cap; the ones above it are named in a note.
    """
    if not distances_km:
        raise ConfigError("distances", "no distance given")
    if not pulses:
        raise ConfigError("pulses", "no pulse count given")
    if not protocols:
        raise ConfigError("protocols", "no protocol given")
    for protocol in protocols:
        if protocol not in SWEEP_PROTOCOLS:
            known = ",".join(SWEEP_PROTOCOLS)
            raise ConfigError("protocols", f"unknown {protocol!r}; expected some of {known}")
    notes = []
    specs = []
    for protocol in dict.fromkeys(protocols):
        counts = list(dict.fromkeys(pulses))
        if protocol == "e91":
            if e91_pulses is not None:
                counts = list(dict.fromkeys(e91_pulses))
            else:
                dropped = [n for n in counts if n > E91_MAX_PAIRS]
                counts = [n for n in counts if n <= E91_MAX_PAIRS]
                if dropped:
                    notes.append(
                        "e91: no simulated points at "
                        + ", ".join(f"{n:.0e}" for n in dropped)
                        + f" pairs (at most {E91_MAX_PAIRS:.0e} pairs a point fit in memory;"
                        " its finite-key curves are still drawn)"
                    )
        for n in counts:
            for distance in dict.fromkeys(float(d) for d in distances_km):
                specs.append(
                    PointSpec(
                        protocol=protocol,
                        distance_km=distance,
                        pulses=int(n),
                        seed=point_seed(seed, protocol, distance, int(n)),
                    )
                )
    return specs, notes


def _expected_detection_probability(spec: PointSpec) -> float:
    model = ChannelModel(distance_km=spec.distance_km)
    if spec.protocol == "single-photon":
        return float(channel_model.predict_bb84(model, "single-photon").detection_probability)
    if spec.protocol == "decoy":
        source = optimise(model, spec.pulses, DEFAULT_EPS_SEC, DEFAULT_EPS_COR)
        return sum(
            p * float(channel_model.predict_bb84(model, "wcp", mu).detection_probability)
            for mu, p in zip(source.intensities, source.probabilities, strict=True)
        )
    return float(channel_model.predict_e91(model).coincidence_probability)


def estimate_point_bytes(spec: PointSpec) -> int:
    """Peak memory a worker needs for the point: the round grows with the expected detections (BB84) or
    coincidences (E91): both run event-driven, and the records, sifting and distillation hold those only."""
    detections = spec.pulses * _expected_detection_probability(spec)
    per_item = BYTES_PER_COINCIDENCE if spec.protocol == "e91" else BYTES_PER_DETECTION
    return int(BASE_BYTES + per_item * detections)


def expected_detections(spec: PointSpec) -> float:
    """Detections (BB84) or coincidences (E91) the channel model expects: the point's cost, for ETAs."""
    return spec.pulses * _expected_detection_probability(spec)


@dataclass(frozen=True, slots=True, kw_only=True)
class DistancePoint:
    """A simulated round of a distance sweep, as one CSV row."""

    protocol: str
    """single-photon, decoy or e91."""
    distance_km: float
    """Fibre length."""
    pulses: int
    """Pulses or pairs sent."""
    seed: int
    """The round's seed (rerun it with `qlink sim ... --seed`)."""
    detected: int
    """Bob's detections (E91: his clicks, of which the coincidences with Alice's are a part)."""
    qber: float | None
    """Estimated QBER (None when the round aborted before estimation)."""
    final_key_bits: int
    """Secret key bits (0 when aborted)."""
    key_per_pulse: float
    """final_key_bits / pulses."""
    expected_key_bits: int
    """The finite-key length the analysis expects on the channel model's mean counts."""
    aborted: bool
    """Whether the round ended without a key."""
    abort_reason: str
    """The abort reason's name, '' when keyed."""


def run_point(spec: PointSpec) -> DistancePoint:
    """Simulate one point (pure: a process pool or a Dask worker runs it)."""
    result = run_simulation(spec.sim_config())
    r = result.report()
    return DistancePoint(
        protocol=spec.protocol,
        distance_km=spec.distance_km,
        pulses=spec.pulses,
        seed=spec.seed,
        detected=int(r["detected"]),
        qber=r["qber"],
        final_key_bits=int(r["final_key_bits"]),
        key_per_pulse=r["final_key_bits"] / spec.pulses,
        expected_key_bits=expected_key_bits(spec.protocol, spec.distance_km, spec.pulses),
        aborted=bool(r["aborted"]),
        abort_reason=r["abort_reason"] or "",
    )


def expected_key_bits(
    protocol: str,
    distance_km: float,
    pulses: int,
    *,
    eps_sec: float = DEFAULT_EPS_SEC,
    eps_cor: float = DEFAULT_EPS_COR,
) -> int:
    """The finite-key length each protocol's analysis gives on the channel model's mean counts, as
    ``qcore.sim.predictions`` computes it for a round (any block size: no round is drawn).

    single-photon: Tomamichel 2012 on the sifted half of the detections; decoy: Lim 2014 for the source
    :func:`decoy_optimiser.optimise` picks (:func:`decoy_optimiser.expected_decoy_length`); e91: BBM92,
    Tomamichel 2012 on the coincidences at matching key settings (Alice X/Z 1/2 each, Bob X/Z/W/V
    0.4/0.4/0.1/0.1).
    """
    if protocol not in SWEEP_PROTOCOLS:
        raise ConfigError("protocol", f"unknown {protocol!r}; expected one of {SWEEP_PROTOCOLS}")
    model = ChannelModel(distance_km=distance_km)
    distill = DistillConfig(eps_sec=eps_sec, eps_cor=eps_cor)
    f_ec = distill.ec_efficiency_estimate
    if protocol == "decoy":
        source = optimise(model, pulses, eps_sec, eps_cor)
        return int(
            expected_decoy_length(model, source, pulses, eps_sec=eps_sec, eps_cor=eps_cor, f_ec=f_ec).length
        )
    if protocol == "single-photon":
        bb84 = channel_model.predict_bb84(model, "single-photon")
        sifted = pulses * float(bb84.detection_probability) / 2
        q = float(bb84.qber)
    else:
        e91 = channel_model.predict_e91(model)
        coincidences = pulses * float(e91.coincidence_probability)
        if _expected_chsh_lower(coincidences, float(e91.chsh), eps_sec) <= 2.0:
            return 0  # the round aborts on its CHSH witness (chsh_not_violated) before any length
        sifted = coincidences * _E91_KEY_SHARE
        q = float(e91.qber)
    k = round(distill.sample_fraction * sifted)
    n = round(sifted) - k
    if n <= 0 or k <= 0:
        return 0
    leak = f_ec * n * float(theory.binary_entropy(q))
    return int(tomamichel_length(n, k, q, leak, eps_sec, eps_cor).length)


def _expected_chsh_lower(coincidences: float, s: float, eps: float) -> float:
    """The CHSH lower bound (:func:`finite_e91.chsh_lower_bound`) on the mean counts: every coincidence
    at a CHSH setting pair is disclosed, and each correlator carries a quarter of S with its sign."""
    trials, agreements = [], []
    for (a, b), sign in zip(E91_CHSH_SETTINGS, E91_CHSH_SIGNS, strict=True):
        n = round(coincidences * E91_ALICE_PROBABILITIES[a] * E91_BOB_PROBABILITIES[b])
        trials.append(n)
        agreements.append(round(n * (1.0 + sign * s / 4.0) / 2.0))
    return chsh_lower_bound(trials, agreements, E91_CHSH_SIGNS, eps).s_lower


@dataclass(frozen=True, slots=True, kw_only=True)
class FiniteCurve:
    """Expected finite-key bits per pulse of one protocol at one block size, against distance."""

    protocol: str
    """single-photon, decoy or e91."""
    pulses: int
    """Block size (pulses or pairs)."""
    key_per_pulse: np.ndarray
    """expected_key_bits / pulses at each distance of the curves' grid (0: no key)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TheoryCurves:
    """Asymptotic and finite-key curves on one distance grid."""

    distances_km: np.ndarray
    """The grid, km."""
    asymptotic: dict[str, np.ndarray]
    """Asymptotic key per pulse by protocol: single-photon and e91 with real error correction
    (1 - h - f h on the key-basis detections), decoy by GLLP at fixed mu 0.5, nu 0.1."""
    finite: tuple[FiniteCurve, ...]
    """One curve per protocol and block size."""


def theory_curves(
    distances_km: np.ndarray,
    *,
    pulses: Sequence[int],
    protocols: Sequence[str] = SWEEP_PROTOCOLS,
    decoy_step_km: float = 2.5,
) -> TheoryCurves:
    """Curves for a distance plot. The decoy curve optimises the source at every distance (about 0.1 s
    each), so it is evaluated every ``decoy_step_km`` and interpolated on a log scale in between."""
    grid = np.asarray(distances_km, dtype=np.float64)
    if grid.ndim != 1 or grid.size == 0 or np.any(~np.isfinite(grid)) or np.any(grid < 0.0):
        raise ConfigError("distances_km", "must be a non-empty 1-D array of finite lengths >= 0")
    f_ec = DistillConfig().ec_efficiency_estimate
    curves = channel_model.secret_key_rate_curves(grid, f=f_ec)
    asymptotic: dict[str, np.ndarray] = {}
    if "single-photon" in protocols:
        asymptotic["single-photon"] = np.asarray(curves.single_photon_rate)
    if "decoy" in protocols:
        asymptotic["decoy"] = np.asarray(curves.decoy_rate)
    if "e91" in protocols:
        rates = []
        for d in grid:
            e91 = channel_model.predict_e91(ChannelModel(distance_km=float(d)))
            rate = float(theory.ec_rate(float(e91.qber), f_ec))
            rates.append(max(0.0, float(e91.coincidence_probability) * _E91_KEY_SHARE * rate))
        asymptotic["e91"] = np.asarray(rates)
    finite = []
    for protocol in protocols:
        for n in dict.fromkeys(pulses):
            if protocol == "decoy":
                values = _decoy_curve(grid, n, decoy_step_km)
            else:
                values = np.array([expected_key_bits(protocol, float(d), n) / n for d in grid])
            finite.append(FiniteCurve(protocol=protocol, pulses=n, key_per_pulse=values))
    return TheoryCurves(distances_km=grid, asymptotic=asymptotic, finite=tuple(finite))


def _decoy_curve(grid: np.ndarray, pulses: int, step_km: float) -> np.ndarray:
    """The decoy curve optimised every `step_km` and interpolated in log space (it falls exponentially)
    where both neighbours have key; exact on the coarse points and in the interval where the key ends,
    so the curve's reach is the optimiser's, not the step's."""

    def exact(d: float) -> float:
        return expected_key_bits("decoy", d, pulses) / pulses

    coarse = np.unique(np.append(np.arange(grid.min(), grid.max(), step_km), grid.max()))
    at = np.array([exact(float(d)) for d in coarse])
    idx = np.clip(np.searchsorted(coarse, grid, side="right") - 1, 0, coarse.size - 1)
    nxt = np.clip(idx + 1, 0, coarse.size - 1)
    positive = at > 0
    logs = np.log(np.where(positive, at, 1.0))
    values = np.where(positive[idx] & positive[nxt], np.exp(np.interp(grid, coarse, logs)), 0.0)
    for i, d in enumerate(grid):
        if d in coarse:
            values[i] = at[idx[i]]
        elif positive[idx[i]] != positive[nxt[i]]:
            values[i] = exact(float(d))
    return values


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
