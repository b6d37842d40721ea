"""The quantum-channel emulator: what Alice prepares, what the fibre and an eavesdropper do to it, and what
Bob's two threshold detectors record.

The click model (shared with ``channel_model.predict_bb84``, which computes its expectations exactly):
- each photon that reaches Bob is measured by the backend (misalignment is the backend's Pauli-Y flip);
  the detector named by its outcome fires;
- each detector also fires a dark count with probability ``dark_count`` per gate;
- a gate that clicked from signal or dark count is followed, with probability ``afterpulse``, by an
  after-pulse in the next gate on a detector chosen at random (after-pulses do not trigger after-pulses);
- one detector fired: its bit; both fired: a random bit (the squashing convention); none: no detection.

Eavesdroppers act at Alice's side of the fibre and only measure and re-prepare:
- intercept-resend on a fraction of the pulses: measure in a random basis (a fair coin), resend what was
  seen with the same photon number;
- photon-number splitting on a fraction of the pulses: count photons without disturbing them, keep one
  photon of every multi-photon pulse, send the rest to Bob over a lossless line, and block single-photon
  pulses just enough that Bob's gain at the signal intensity looks like the honest fibre's. Where the
  split multi-photon pulses alone give more than the honest gain (beyond ~34 km with the defaults), she
  blocks every single photon and attenuates her line instead. Short of ~13 km (defaults) matching the
  gain forces her to pass more single photons than the fibre would: the single-photon yield rises, the
  decoy estimate sees it and the round keys (more than honestly, yet below the true single-photon bound
  of ``eve_bound``, since Eve learns nothing from single photons). Between the two the yield falls and
  the decoy bound collapses.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from .backends import MeasurementBackend
from .channel_model import ChannelModel
from .errors import ConfigError
from .params import DecoySource, SourceKind
from .randomness import RandomSource
from .rng import bernoulli, random_bits


class EveKind(StrEnum):
    NONE = "none"
    INTERCEPT_RESEND = "intercept-resend"
    PNS = "pns"


@dataclass(frozen=True, slots=True, kw_only=True)
class Eavesdropper:
    kind: EveKind = EveKind.NONE
    """Which attack, if any."""
    fraction: float = 1.0
    """Fraction of the pulses (or pairs) attacked."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction <= 1.0:
            raise ConfigError("eve_fraction", f"must be in [0, 1], got {self.fraction}")

    @property
    def active(self) -> bool:
        return self.kind is not EveKind.NONE and self.fraction > 0.0


@dataclass(frozen=True, slots=True)
class PreparedPulses:
    """Alice's record of a BB84 round: what she sent."""

    bits: np.ndarray
    bases: np.ndarray
    intensity_class: np.ndarray | None
    """Index into DecoySource.intensities per pulse; None for a single-photon source."""


@dataclass(frozen=True, slots=True)
class DetectorClicks:
    """One party's record of what its detectors saw: a click mask, the basis/setting used, the bit."""

    detected: np.ndarray
    bases: np.ndarray
    bits: np.ndarray


@dataclass(frozen=True, slots=True)
class ChannelStats:
    """What the emulator knows and the parties do not (for reports and tests)."""

    pulses: int
    eve_attacked: int = 0
    eve_known_bits: int = 0
    """Pulses whose bit Eve holds a copy of (PNS) or measured in the right basis (intercept-resend)."""
    extra: dict[str, float] = field(default_factory=dict)


def _clicks_to_bits(
    fired0: np.ndarray, fired1: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    detected = fired0 | fired1
    bits = fired1.astype(np.uint8)
    both = fired0 & fired1
    if both.any():
        bits[both] = random_bits(rng, int(both.sum()))
    return detected, bits


def _add_noise_clicks(
    fired0: np.ndarray, fired1: np.ndarray, model: ChannelModel, rng: np.random.Generator
) -> None:
    """Dark counts on both detectors, then after-pulses in the gate after any click. In place."""
    n = fired0.size
    fired0 |= bernoulli(rng, model.dark_count, n)
    fired1 |= bernoulli(rng, model.dark_count, n)
    if model.afterpulse > 0.0:
        clicked = np.flatnonzero(fired0 | fired1)
        source = clicked[bernoulli(rng, model.afterpulse, clicked.size)]
        target = source[source + 1 < n] + 1
        which = random_bits(rng, target.size).astype(bool)
        fired1[target[which]] = True
        fired0[target[~which]] = True


def _fire_from_photons(
    n: int,
    pulse_of_photon: np.ndarray,
    outcomes: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    fired0 = np.zeros(n, dtype=bool)
    fired1 = np.zeros(n, dtype=bool)
    fired0[pulse_of_photon[outcomes == 0]] = True
    fired1[pulse_of_photon[outcomes == 1]] = True
    return fired0, fired1


def _pns_single_photon_block(model: ChannelModel, mu: float, eta_det: float) -> tuple[float, float]:
    """Eve's block probability for single-photon pulses and her line transmittance for the rest,
    chosen so the gain at intensity `mu` matches the honest fibre's."""
    honest_gain = 1.0 - math.exp(-model.transmittance * mu)

    def pns_gain(block: float, line: float) -> float:
        # n >= 2: n - 1 photons through the line then the detector; n == 1: passed unless blocked.
        p1 = mu * math.exp(-mu)
        t = line * eta_det
        # E[1 - (1-t)^(n-1); n >= 2] for Poisson n = sum_{n>=2} P(n) (1 - (1-t)^(n-1))
        p0 = math.exp(-mu)
        multi = (1.0 - p0 - p1) - (math.exp(-mu * t) - p0) / (1.0 - t) + p1 if t < 1.0 else 1.0 - p0 - p1
        single = p1 * (1.0 - block) * t
        return multi + single

    if pns_gain(1.0, 1.0) <= honest_gain:
        p1 = mu * math.exp(-mu)
        block = 1.0 - (honest_gain - pns_gain(1.0, 1.0)) / (p1 * eta_det)
        return min(max(block, 0.0), 1.0), 1.0
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if pns_gain(1.0, mid) > honest_gain:
            hi = mid
        else:
            lo = mid
    return 1.0, lo


def _wcp_decoy(source: SourceKind, decoy: DecoySource | None) -> DecoySource | None:
    """The decoy intensities of a weak-coherent-pulse source (which must have them); None for one photon."""
    if source is not SourceKind.WCP:
        return None
    if decoy is None:
        raise ConfigError("source", "a weak-coherent-pulse source needs decoy intensities")
    return decoy


def emulate_bb84(
    n: int,
    *,
    model: ChannelModel,
    source: SourceKind,
    decoy: DecoySource | None,
    eve: Eavesdropper,
    backend: MeasurementBackend,
    rng: np.random.Generator,
    prepared: PreparedPulses | None = None,
    bob_bases: np.ndarray | None = None,
) -> tuple[PreparedPulses, DetectorClicks, ChannelStats]:
    """Send `n` BB84 pulses through the channel. Bases: 0 rectilinear, 1 diagonal, chosen uniformly.

    The parties make their random choices themselves, from their secret sources, and hand them in:
    Alice's ``prepared`` pulses (from ``prepare_bb84``) and Bob's ``bob_bases``; the emulator then draws
    only the channel's own randomness (losses, clicks, dark counts, Eve) from `rng`. Without them it draws
    everything from `rng` (channel tests that need no parties).
    """
    if prepared is not None:
        n = _check_prepared(prepared, source)
    if n <= 0:
        raise ConfigError("qubits", f"must be positive, got {n}")
    wcp = _wcp_decoy(source, decoy)
    if eve.kind is EveKind.PNS and wcp is None:
        raise ConfigError("eve", "photon-number splitting needs multi-photon pulses (--source wcp)")

    bits = random_bits(rng, n) if prepared is None else prepared.bits
    bases = random_bits(rng, n) if prepared is None else prepared.bases
    bob_bases = random_bits(rng, n) if bob_bases is None else _check_choices(bob_bases, n, 2, "bob_bases")
    eta = model.transmittance
    eta_det = model.detector_efficiency
    stats_attacked = 0
    eve_known = 0

    # State that reaches Bob (possibly re-prepared by Eve), and how many of its photons he detects.
    state_bits = bits
    state_bases = bases
    intensity_class: np.ndarray | None = None
    mus: np.ndarray | None = None  # mean photon number of each pulse from the WCP source
    if wcp is None:
        # Read only by an eavesdropper's branch: an honest round does not pay for n int64 ones.
        photons = np.ones(n, dtype=np.int64) if eve.active else np.zeros(0, dtype=np.int64)
    else:
        intensity_class = (
            rng.choice(3, size=n, p=np.asarray(wcp.probabilities)).astype(np.uint8)
            if prepared is None
            else prepared.intensity_class
        )
        mus = np.asarray(wcp.intensities)[intensity_class]
        # Without an eavesdropper the photon numbers are never drawn (see the thinning below).
        photons = rng.poisson(mus) if eve.active else np.zeros(0, dtype=np.int64)

    attacked = bernoulli(rng, eve.fraction, n) if eve.active else np.zeros(n, dtype=bool)
    line: np.ndarray | None = None  # per-photon survival to a click, where Eve changed it
    if eve.kind is EveKind.INTERCEPT_RESEND and attacked.any():
        hit = attacked & (photons > 0)
        idx = np.flatnonzero(hit)
        eve_bases = random_bits(rng, idx.size)
        seen = backend.measure_photons(bits[idx], bases[idx], eve_bases, 0.0, rng)
        state_bits = bits.copy()
        state_bases = bases.copy()
        state_bits[idx] = seen
        state_bases[idx] = eve_bases
        stats_attacked = idx.size
        eve_known = int(np.count_nonzero(eve_bases == bases[idx]))
    elif eve.kind is EveKind.PNS and wcp is not None and attacked.any():
        block, eve_line = _pns_single_photon_block(model, wcp.intensities[0], eta_det)
        multi = attacked & (photons >= 2)
        single = attacked & (photons == 1)
        photons = photons.copy()
        line = np.full(n, eta)
        photons[multi] -= 1  # Eve keeps one photon of every multi-photon pulse
        line[multi] = eve_line * eta_det
        blocked = single & bernoulli(rng, block, n)
        photons[blocked] = 0
        line[single & ~blocked] = eve_line * eta_det
        stats_attacked = int(np.count_nonzero(multi | single))
        eve_known = int(np.count_nonzero(multi))

    if mus is not None and not eve.active:
        # No eavesdropper on a WCP source: Poisson thinning gives the detected-photon count directly.
        detected_photons = rng.poisson(eta * mus)
    elif wcp is None:
        detected_photons = bernoulli(rng, eta, n)
    else:
        detected_photons = rng.binomial(photons, eta if line is None else line)

    # The pulse of every detected photon, in order: a few percent of the pulses at most, so the
    # repetition runs over those only (the same array as repeating every pulse by its count).
    carrying = np.flatnonzero(detected_photons)
    if detected_photons.dtype == bool:
        pulse_of_photon = carrying
    else:
        pulse_of_photon = np.repeat(carrying, detected_photons[carrying])
    outcomes = backend.measure_photons(
        state_bits[pulse_of_photon],
        state_bases[pulse_of_photon],
        bob_bases[pulse_of_photon],
        model.misalignment,
        rng,
    )
    fired0, fired1 = _fire_from_photons(n, pulse_of_photon, outcomes)
    _add_noise_clicks(fired0, fired1, model, rng)
    detected, bob_bits = _clicks_to_bits(fired0, fired1, rng)
    return (
        PreparedPulses(bits=bits, bases=bases, intensity_class=intensity_class),
        DetectorClicks(detected=detected, bases=bob_bases, bits=bob_bits),
        ChannelStats(pulses=n, eve_attacked=stats_attacked, eve_known_bits=eve_known),
    )


def choose_bb84_bases(n: int, *, secret: RandomSource, decoy: DecoySource | None) -> np.ndarray:
    """One party's bases for `n` pulses: 0 (X, the key basis) with probability p_X of the decoy source.

    An unbiased choice (single photons, p_X = 1/2) draws one bit a pulse, exactly as before biased bases
    existed, so seeded runs keep their transcripts.
    """
    p_x = 0.5 if decoy is None else decoy.p_x
    return secret.bits(n) if p_x == 0.5 else secret.choice((p_x, 1.0 - p_x), n)


def prepare_bb84(
    n: int, *, source: SourceKind, decoy: DecoySource | None, secret: RandomSource
) -> PreparedPulses:
    """Alice's random choices for `n` pulses: bits, bases and (for a decoy source) intensity classes.

    These are her secrets, so they come from her secret source (the OS CSPRNG in the daemon), not from
    the emulator's generator: the emulator only models what the fibre and detectors do with them.
    """
    if n <= 0:
        raise ConfigError("qubits", f"must be positive, got {n}")
    wcp = _wcp_decoy(source, decoy)
    bits = secret.bits(n)
    bases = choose_bb84_bases(n, secret=secret, decoy=wcp)
    intensity_class = secret.choice(wcp.probabilities, n) if wcp is not None else None
    return PreparedPulses(bits=bits, bases=bases, intensity_class=intensity_class)


def _check_choices(values: np.ndarray, n: int, levels: int, name: str) -> np.ndarray:
    values = np.asarray(values)
    if values.shape != (n,):
        raise ConfigError(name, f"needs {n} entries, got shape {values.shape}")
    if values.size and (values.min() < 0 or values.max() >= levels):
        raise ConfigError(name, f"entries must lie in 0..{levels - 1}")
    return values.astype(np.uint8)


def _check_prepared(prepared: PreparedPulses, source: SourceKind) -> int:
    n = int(np.asarray(prepared.bits).size)
    _check_choices(prepared.bits, n, 2, "bits")
    _check_choices(prepared.bases, n, 2, "bases")
    if (prepared.intensity_class is not None) != (source is SourceKind.WCP):
        raise ConfigError("intensities", "decoy classes go with a weak-coherent-pulse source only")
    if prepared.intensity_class is not None:
        _check_choices(prepared.intensity_class, n, 3, "intensities")
    return n


# E91 measurement settings as polarisation angles in units of pi/8 (docs/references.md §2), in the BBM92
# design deployed systems use: Alice measures X (0) or Z (pi/4), two conjugate bases; Bob measures X, Z,
# W (pi/8) or V (3pi/8). Matching X-X and Z-Z give key; Alice's {X, Z} against Bob's {W, V} are the four
# optimal CHSH pairs. Ekert's original tables (Alice 0, pi/8, pi/4; Bob pi/8, pi/4, 3pi/8) key on W and
# Z, which are 22.5 degrees apart, not conjugate, so no BB84-style phase-error bound applies to them.
ALICE_ANGLES8 = np.array([0, 2], dtype=np.int64)
BOB_ANGLES8 = np.array([0, 2, 1, 3], dtype=np.int64)
E91_ALICE_PROBABILITIES = (0.5, 0.5)
"""Alice's setting probabilities: X and Z alike (each basis keys and tests the other's phase error)."""
E91_BOB_PROBABILITIES = (0.4, 0.4, 0.1, 0.1)
"""Bob's setting probabilities for X, Z, W, V. The key bases come 4 times as often as the CHSH settings:
80 % of Bob's choices can key (40 % of coincidences match Alice's basis), and each of the four CHSH pairs
still gets 5 % of the coincidences, about 1e4 at 2e7 pairs and 0 km, where the Hoeffding half-widths
sum to about 0.28, far below the 0.8 between an honest S (about 2.8) and the local bound 2."""


def choose_e91_settings(n: int, *, secret: RandomSource, bob: bool) -> np.ndarray:
    """One party's E91 analyser settings for `n` pairs (uint8 indices into its angle table), drawn from
    its secret source: Eve must not know them before the pairs are measured."""
    return secret.choice(E91_BOB_PROBABILITIES if bob else E91_ALICE_PROBABILITIES, n)


def e91_arm(n: int, model: ChannelModel, eve: Eavesdropper) -> ChannelModel:
    """One arm of an E91 link (the source sits midway: each photon crosses half the fibre), after checking
    the round's pair count and eavesdropper."""
    if n <= 0:
        raise ConfigError("qubits", f"must be positive, got {n}")
    if eve.kind is EveKind.PNS:
        raise ConfigError("eve", "photon-number splitting applies to weak coherent pulses, not to E91 pairs")
    return dataclasses.replace(model, distance_km=model.distance_km / 2)


def emulate_e91(
    n: int,
    *,
    model: ChannelModel,
    eve: Eavesdropper,
    backend: MeasurementBackend,
    rng: np.random.Generator,
    alice_settings: np.ndarray | None = None,
    bob_settings: np.ndarray | None = None,
) -> tuple[DetectorClicks, DetectorClicks, ChannelStats]:
    """Emit `n` entangled pairs from a source midway between the facilities.

    Each photon crosses half the fibre to its own detector pair (same detector model on both sides).
    Settings are indices into ALICE_ANGLES8 (0..1) / BOB_ANGLES8 (0..3), drawn with E91_ALICE_PROBABILITIES
    and E91_BOB_PROBABILITIES from `rng` when not given. Eve (intercept-resend)
    measures Bob's photon at 0 or pi/4 and re-prepares it. The daemon's parties pass their own settings
    in (``alice_settings``, ``bob_settings``, each of length `n`).
    """
    half = e91_arm(n, model, eve)
    eta = half.transmittance
    a_set = (
        rng.choice(ALICE_ANGLES8.size, size=n, p=E91_ALICE_PROBABILITIES).astype(np.uint8)
        if alice_settings is None
        else _check_choices(alice_settings, n, ALICE_ANGLES8.size, "alice_settings")
    )
    b_set = (
        rng.choice(BOB_ANGLES8.size, size=n, p=E91_BOB_PROBABILITIES).astype(np.uint8)
        if bob_settings is None
        else _check_choices(bob_settings, n, BOB_ANGLES8.size, "bob_settings")
    )
    a_sig = bernoulli(rng, eta, n)
    b_sig = bernoulli(rng, eta, n)
    attacked = bernoulli(rng, eve.fraction, n) if eve.active else np.zeros(n, dtype=bool)
    eve_angle = np.where(attacked, 2 * random_bits(rng, n).astype(np.int64), -1)

    # Only pairs with at least one photon detected need measuring; the other outcomes are never seen.
    idx = np.flatnonzero(a_sig | b_sig)
    a_out, b_out, _ = backend.measure_pairs(
        ALICE_ANGLES8[a_set[idx]],
        BOB_ANGLES8[b_set[idx]],
        eve_angle[idx],
        model.misalignment,
        model.misalignment,
        rng,
    )
    sides = []
    for sig, out in ((a_sig, a_out), (b_sig, b_out)):
        fired0 = np.zeros(n, dtype=bool)
        fired1 = np.zeros(n, dtype=bool)
        seen = sig[idx]
        fired0[idx[seen & (out == 0)]] = True
        fired1[idx[seen & (out == 1)]] = True
        _add_noise_clicks(fired0, fired1, half, rng)
        sides.append(_clicks_to_bits(fired0, fired1, rng))
    (a_det, a_bits), (b_det, b_bits) = sides
    return (
        DetectorClicks(detected=a_det, bases=a_set, bits=a_bits),
        DetectorClicks(detected=b_det, bases=b_set, bits=b_bits),
        ChannelStats(pulses=n, eve_attacked=int(attacked.sum())),
    )
