"""Sifting: which detections become key, which are disclosed for estimation, which are discarded.

Both ends call ``plan_sifting`` with the same public information (Bob's detections and bases, Alice's
coincidence marks, bases, decoy classes and sample choice), so they agree on every position without
sending any of them twice.

Position roles per protocol:
- BB84, single-photon source: matching bases are key candidates; Alice discloses a random sample of them
  (Tomamichel et al. 2012 style estimation), the rest is the raw key.
- BB84, decoy states (Lim et al. 2014): matching bases in basis 0 are the raw key; every matching basis-1
  detection is disclosed to bound the phase error.
- E91 (BBM92 design, docs/references.md §2): matching conjugate settings X-X (0, 0) and Z-Z (pi/4, pi/4)
  are key candidates, sampled as for BB84; the four CHSH setting pairs, Alice's {X, Z} against Bob's
  {W, V}, are disclosed in full; the rest (Alice X or Z against Bob Z or X) is discarded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import LocalProtocolError, RemoteProtocolError
from .params import ProtocolKind
from .randomness import RandomSource

# E91 setting indices (qcore.channel.ALICE_ANGLES8 / BOB_ANGLES8): Alice 0, 1 = X (0), Z (pi/4);
# Bob 0, 1, 2, 3 = X (0), Z (pi/4), W (pi/8), V (3pi/8).
E91_KEY_SETTINGS = ((0, 0), (1, 1))
E91_CHSH_SETTINGS = ((0, 2), (0, 3), (1, 2), (1, 3))
"""CHSH terms in the order of S = E(X,W) - E(X,V) + E(Z,W) + E(Z,V)."""
E91_CHSH_SIGNS = (1, -1, 1, 1)

KEY_BASIS = 0
TEST_BASIS = 1


@dataclass(frozen=True, slots=True)
class SiftPlan:
    """Every role as a boolean mask, so a round costs a few bytes per detection, not an int64 index each
    (at 1e10 pulses the indices alone were 40 bytes per detection at each end). Indexing a record with a
    mask keeps the pulses in the order sent, which is the order every message lists them in."""

    pulses: np.ndarray
    """Over the round's pulses: the coincidences (the pulses both ends registered)."""
    alice_settings: np.ndarray
    bob_settings: np.ndarray
    intensities: np.ndarray
    """Decoy class per coincidence (empty without decoys)."""
    key_candidates: np.ndarray
    """Over the coincidences: the key candidates."""
    sample: np.ndarray
    """Over the key candidates: those disclosed for the QBER estimate."""
    test: np.ndarray
    """Over the coincidences: every disclosed position; test bits travel in this order."""
    key: np.ndarray
    """Over the coincidences: the raw key."""

    def __post_init__(self) -> None:
        coincidences = int(np.count_nonzero(self.pulses))
        for name in ("pulses", "key_candidates", "sample", "test", "key"):
            if getattr(self, name).dtype != np.bool_:
                raise LocalProtocolError(f"SiftPlan.{name} must be a boolean mask")
        for name in ("alice_settings", "bob_settings", "key_candidates", "test", "key"):
            if getattr(self, name).size != coincidences:
                raise LocalProtocolError(f"SiftPlan.{name} must cover the {coincidences} coincidences")
        if self.sample.size != self.sifted_bits:
            raise LocalProtocolError(f"SiftPlan.sample must cover the {self.sifted_bits} key candidates")

    @property
    def sifted_bits(self) -> int:
        return int(np.count_nonzero(self.key_candidates))

    def summary(self) -> SiftSummary:
        """What estimation reads of this plan."""
        test = self.test
        return SiftSummary(
            sifted_bits=self.sifted_bits,
            raw_key_bits=self.raw_key_bits,
            key_classes=_class_counts(self.intensities[self.key]) if self.intensities.size else (0, 0, 0),
            in_sample=self.key_candidates[test],
            alice_settings=self.alice_settings[test],
            bob_settings=self.bob_settings[test],
            intensities=self.intensities[test] if self.intensities.size else self.intensities,
        )

    @property
    def raw_key_bits(self) -> int:
        return int(np.count_nonzero(self.key))

    @property
    def test_bits(self) -> int:
        return int(np.count_nonzero(self.test))


@dataclass(frozen=True, slots=True, kw_only=True)
class SiftSummary:
    """What estimation reads of a plan: counts, and the roles of the disclosed positions only. Once each
    end has taken its test bits and raw key out of its records, this is all it keeps of the sifting, and
    the plan's masks (bytes per detection) are freed before Cascade needs the memory."""

    sifted_bits: int
    """Key candidates."""
    raw_key_bits: int
    key_classes: tuple[int, int, int]
    """Decoy class counts over the raw key (zeros without decoys)."""
    in_sample: np.ndarray
    """Over the disclosed positions, in order: the sampled key candidates (bool)."""
    alice_settings: np.ndarray
    """Over the disclosed positions."""
    bob_settings: np.ndarray
    """Over the disclosed positions."""
    intensities: np.ndarray
    """Over the disclosed positions (empty without decoys)."""

    @property
    def test_bits(self) -> int:
        return int(self.in_sample.size)


def _class_counts(classes: np.ndarray) -> tuple[int, int, int]:
    # Not np.bincount: it widens the labels to 8 bytes each first.
    return (
        int(np.count_nonzero(classes == 0)),
        int(np.count_nonzero(classes == 1)),
        int(np.count_nonzero(classes == 2)),
    )


def take(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``values[mask]``, without the copy when the mask keeps everything (an event-driven round: every
    record already covers exactly the detections)."""
    if values.size == mask.size and bool(mask.all()):
        return values
    kept: np.ndarray = values[mask]
    return kept


def key_candidate_mask(
    protocol: ProtocolKind, decoy: bool, alice_settings: np.ndarray, bob_settings: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(key-candidate mask, always-disclosed mask) over the coincidences."""
    if protocol is ProtocolKind.BB84:
        matched = alice_settings == bob_settings
        if decoy:
            return matched & (alice_settings == KEY_BASIS), matched & (alice_settings == TEST_BASIS)
        return matched, np.zeros_like(matched)
    candidates = np.zeros(alice_settings.size, dtype=bool)
    for a, b in E91_KEY_SETTINGS:
        candidates |= (alice_settings == a) & (bob_settings == b)
    disclosed = np.zeros(alice_settings.size, dtype=bool)
    for a, b in E91_CHSH_SETTINGS:
        disclosed |= (alice_settings == a) & (bob_settings == b)
    return candidates, disclosed


def choose_sample(secret: RandomSource, candidates: int, fraction: float) -> np.ndarray:
    """Alice's random sample: a uint8 mask with round(fraction * candidates) entries set, every such
    subset equally likely. A secret choice until it is sent: Eve must not know which pulses are tested."""
    return secret.subset_mask(candidates, round(fraction * candidates))


def coincidence_mask(detected: np.ndarray, coincident: np.ndarray) -> np.ndarray:
    """Over the pulses: those Bob detected (`detected`) that Alice registered too (`coincident`, one
    entry per detection)."""
    if bool(coincident.all()):
        return detected
    pulses = detected.copy()
    pulses[detected] = coincident
    return pulses


def plan_sifting(
    *,
    protocol: ProtocolKind,
    decoy: bool,
    bob_detected: np.ndarray,
    bob_settings_at_detections: np.ndarray,
    coincident: np.ndarray,
    alice_settings: np.ndarray,
    intensities: np.ndarray,
    sample: np.ndarray,
) -> SiftPlan:
    """Derive every position from the public messages. Inconsistent sizes raise RemoteProtocolError."""
    detected = bob_detected.astype(bool, copy=False)
    detections = int(np.count_nonzero(detected))
    if coincident.size != detections:
        raise RemoteProtocolError(
            f"coincidence mask has {coincident.size} entries for {detections} detections"
        )
    coincident_mask = coincident.astype(bool, copy=False)
    pulses = coincidence_mask(detected, coincident_mask)
    coincidences = int(np.count_nonzero(coincident_mask))
    if alice_settings.size != coincidences:
        raise RemoteProtocolError(f"{alice_settings.size} settings for {coincidences} coincidences")
    if decoy and intensities.size != coincidences:
        raise RemoteProtocolError(f"{intensities.size} decoy classes for {coincidences} coincidences")
    if not decoy and intensities.size:
        raise RemoteProtocolError("decoy classes sent without a decoy source")
    bob_settings = take(bob_settings_at_detections, coincident_mask)
    alice_limit, bob_limit = (2, 2) if protocol is ProtocolKind.BB84 else (2, 4)
    if alice_settings.size and int(alice_settings.max()) >= alice_limit:
        raise RemoteProtocolError("setting out of range")
    if bob_settings.size and int(bob_settings.max()) >= bob_limit:
        raise RemoteProtocolError("setting out of range")
    if intensities.size and int(intensities.max()) >= 3:
        raise RemoteProtocolError("decoy class out of range")

    cand_mask, disclosed_mask = key_candidate_mask(protocol, decoy, alice_settings, bob_settings)
    candidates = int(np.count_nonzero(cand_mask))
    if sample.size != candidates:
        raise RemoteProtocolError(f"sample mask has {sample.size} entries for {candidates} candidates")
    sample_mask = sample.astype(bool)
    if decoy and sample_mask.any():
        raise RemoteProtocolError("decoy BB84 samples no key candidates")
    key_mask = cand_mask.copy()
    if sample_mask.any():
        sampled = np.zeros(cand_mask.size, dtype=bool)
        sampled[cand_mask] = sample_mask
        disclosed_mask |= sampled
        key_mask &= ~sampled
    return SiftPlan(
        pulses=pulses,
        alice_settings=alice_settings,
        bob_settings=bob_settings,
        intensities=intensities,
        key_candidates=cand_mask,
        sample=sample_mask,
        test=disclosed_mask,
        key=key_mask,
    )
