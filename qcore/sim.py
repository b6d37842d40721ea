"""One simulated QKD round end to end: emulate the channel, run both parties' sessions through the pair
harness, and report what a QKD researcher wants to see beside the theory for the same parameters.

Pure: the caller passes the seed and measures the time.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qlinkmed.qcore.params import DecoySource, DistillConfig, E91Security, ProtocolKind, SourceKind

from . import channel_model, theory
from .auth import AuthKeyStore
from .backends import get_backend
from .channel import (
    E91_ALICE_PROBABILITIES,
    E91_BOB_PROBABILITIES,
    Eavesdropper,
    choose_bb84_bases,
    choose_e91_settings,
    emulate_bb84,
    emulate_e91,
    prepare_bb84,
)
from .channel_events import emulate_bb84_events, emulate_e91_events
from .channel_model import ChannelModel
from .decoy_optimiser import expected_decoy_length, optimise
from .errors import AbortReason, ConfigError, LocalProtocolError
from .finite_bb84 import tomamichel_length
from .finite_e91 import FAIR_SAMPLING_NOTE
from .harness import run_pair
from .randomness import PartyRandomness
from .round_state import RoundOutcome
from .security import DEFAULT_EPS_COR, DEFAULT_EPS_SEC, check_eps
from .session import AliceSession, BobSession

PRESHARED_KEY_BYTES = 512
PER_PULSE_LIMIT = 200_000_000
"""Pulses the per-pulse paths accept in one round (28 bytes a pulse: about 5.6 GB at the limit)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SimConfig:
    protocol: ProtocolKind = ProtocolKind.BB84
    """bb84 or e91."""
    qubits: int = 1_000_000
    """Pulses (BB84) or entangled pairs (E91) sent in the round."""
    channel: ChannelModel = field(default_factory=lambda: ChannelModel(distance_km=10.0))
    """Fibre and detectors."""
    source: SourceKind = SourceKind.SINGLE_PHOTON
    """BB84 source; a weak-coherent-pulse source uses decoy states."""
    decoy: DecoySource | None = None
    """Intensities and class probabilities of the weak-coherent-pulse source; None: the ones
    :func:`decoy_optimiser.optimise` picks for this channel, block size and eps."""
    eve: Eavesdropper = field(default_factory=Eavesdropper)
    """Eavesdropper on the quantum channel."""
    backend: str = "numpy"
    """Measurement backend: numpy or qiskit."""
    seed: int | None = None
    """Seed of every random choice in the run; None draws fresh entropy."""
    sample_fraction: float = 0.3
    """Share of the key candidates disclosed for estimation."""
    per_pulse: bool = False
    """Draw every pulse or pair (the reference path, 28 bytes each) instead of the detected pulses (BB84)
    or the coincidences (E91) only (``channel_events``, memory bounded by the detections). The qiskit
    backend always draws per pulse."""
    e91_security: E91Security = E91Security.BBM92
    """E91 key-length analysis: bbm92 (finite key on the conjugate key bases) or device-independent."""
    eps_sec: float = DEFAULT_EPS_SEC
    """Secrecy parameter of the finite-key bound, in (0, 1)."""
    eps_cor: float = DEFAULT_EPS_COR
    """Correctness parameter, in (0, 1); fixes the verification hash, ceil(log2(1/eps_cor)) bits."""

    def __post_init__(self) -> None:
        if self.qubits <= 0:
            raise ConfigError("qubits", f"must be positive, got {self.qubits}")
        if self.qubits > PER_PULSE_LIMIT and not self.event_driven:
            raise ConfigError(
                "qubits",
                f"{self.qubits} pulses would not fit in memory on the per-pulse path (at most"
                f" {PER_PULSE_LIMIT:.0e}); use the event-driven path or split into rounds",
            )
        if self.protocol is ProtocolKind.E91 and self.source is SourceKind.WCP:
            raise ConfigError("source", "E91 uses an entangled-pair source; --source applies to BB84")
        check_eps("eps_sec", self.eps_sec)
        check_eps("eps_cor", self.eps_cor)

    @property
    def event_driven(self) -> bool:
        """Whether the round draws only the detected pulses (BB84) or the coincidences (E91): the default
        on the numpy backend."""
        return not self.per_pulse and self.backend == "numpy"

    @property
    def decoy_source(self) -> DecoySource:
        """The decoy source the round uses: the explicit one, else the optimised one (cached)."""
        if self.decoy is not None:
            return self.decoy
        return optimise(self.channel, self.qubits, self.eps_sec, self.eps_cor)

    def distill_config(self) -> DistillConfig:
        wcp = self.protocol is ProtocolKind.BB84 and self.source is SourceKind.WCP
        return DistillConfig(
            protocol=self.protocol,
            decoy=self.decoy_source if wcp else None,
            sample_fraction=self.sample_fraction,
            e91_security=self.e91_security,
            eps_sec=self.eps_sec,
            eps_cor=self.eps_cor,
        )


@dataclass(frozen=True, slots=True)
class SimResult:
    config: SimConfig
    alice: RoundOutcome
    bob: RoundOutcome
    detected: int
    messages: int
    bytes_exchanged: int
    eve_known_bits: int
    theory: dict[str, Any]

    @property
    def aborted(self) -> bool:
        return not (self.alice.established and self.bob.established)

    @property
    def abort_reason(self) -> AbortReason:
        for outcome in (self.bob, self.alice):
            if outcome.abort_reason not in (AbortReason.NONE, AbortReason.PEER_ABORTED):
                return outcome.abort_reason
        return (
            self.bob.abort_reason
            if self.bob.abort_reason is not AbortReason.NONE
            else self.alice.abort_reason
        )

    def report(self) -> dict[str, Any]:
        """The flat record `qlink sim --json` prints (without the caller's elapsed time)."""
        stats = self.bob.statistics or self.alice.statistics
        n = self.bob.raw_key_bits
        q_actual = self.bob.corrected_bits / n if n else 0.0
        h = float(theory.binary_entropy(q_actual)) if n else 0.0
        reason = self.abort_reason
        e91 = self.config.protocol is ProtocolKind.E91
        security = self.config.distill_config()
        detail = next(
            (o.abort_detail for o in (self.bob, self.alice) if o.abort_reason is reason and o.abort_detail),
            "",
        )
        return {
            "protocol": self.config.protocol.value,
            "backend": self.config.backend,
            "source": self.config.source.value
            if self.config.protocol is ProtocolKind.BB84
            else "entangled-pairs",
            "distance_km": self.config.channel.distance_km,
            "eve": self.config.eve.kind.value,
            "eve_fraction": self.config.eve.fraction if self.config.eve.active else 0.0,
            "seed": self.config.seed,
            "qubits_sent": self.config.qubits,
            "detected": self.detected,
            "sifted_bits": self.bob.sifted_bits,
            "sample_bits": stats.sample_bits if stats else 0,
            "raw_key_bits": n,
            "qber": stats.qber if stats else None,
            "qber_upper": stats.qber_upper if stats else None,
            "chsh_s": stats.chsh_s if stats else None,
            "chsh_lower": stats.chsh_lower if stats else None,
            # The Hoeffding half-width is the same on both sides: S_hat +- (S_hat - S_lower).
            "chsh_upper": (2 * stats.chsh_s - stats.chsh_lower)
            if stats and stats.chsh_s is not None and stats.chsh_lower is not None
            else None,
            "e91_security": self.config.e91_security.value if e91 else None,
            "security_assumption": FAIR_SAMPLING_NOTE
            if e91 and self.config.e91_security is E91Security.DEVICE_INDEPENDENT
            else None,
            "aborted": self.aborted,
            "abort_reason": None if not self.aborted else reason.name.lower(),
            "abort_detail": detail if self.aborted else "",
            "leaked_ec_bits": self.bob.leaked_ec_bits,
            "corrected_bits": self.bob.corrected_bits,
            "ec_efficiency": (self.bob.leaked_ec_bits / (n * h)) if n and h > 0 else None,
            "round_trips": self.bob.round_trips,
            "messages": self.messages,
            "bytes_exchanged": self.bytes_exchanged,
            "pa_output_bits": self.bob.pa_output_bits,
            "auth_cost_bits": self.bob.auth_cost_bits,
            "final_key_bits": self.bob.final_key_bits if not self.aborted else 0,
            "keys_equal": bool(np.array_equal(self.alice.key, self.bob.key)),
            "alice_key_sha256": _key_hash(self.alice.key),
            "bob_key_sha256": _key_hash(self.bob.key),
            "eve_known_bits": self.eve_known_bits,
            "decoy_intensities": list(security.decoy.intensities) if security.decoy else None,
            "decoy_probabilities": list(security.decoy.probabilities) if security.decoy else None,
            "decoy_p_x": security.decoy.p_x if security.decoy else None,
            "decoy_optimised": security.decoy is not None and self.config.decoy is None,
            "eps_sec": security.eps_sec,
            "eps_cor": security.eps_cor,
            "eps": security.eps,
            "verification_bits": security.verification_bits,
            "theory": self.theory,
        }


def _all_true(size: int) -> np.ndarray:
    return np.broadcast_to(np.True_, (size,))


def _key_hash(key: np.ndarray) -> str:
    return hashlib.sha256(np.packbits(key).tobytes() + key.size.to_bytes(8, "little")).hexdigest()


def make_sessions(
    config: SimConfig, *, randomness: tuple[PartyRandomness, PartyRandomness] | None = None
) -> tuple[AliceSession, BobSession, int, int]:
    """Emulate the channel and build both sessions; returns (alice, bob, detections, eve_known_bits).

    Detections are Bob's registered clicks; on the event-driven E91 path, which draws the coincidences
    only, they are the coincidences.

    `randomness`: Alice's and Bob's sources, in place of the ones seeded from ``config.seed`` (tests
    that watch what each source is used for).
    """
    master = np.random.SeedSequence(config.seed)
    channel_seq, alice_seq, bob_seq, psk_seq = master.spawn(4)
    # The channel's physics on one generator; each party's choices and published seeds on its own pair of
    # sources (qcore.randomness), made by the party and handed to the channel, as in the daemon.
    channel_rng = np.random.default_rng(channel_seq)
    alice_rand, bob_rand = randomness or (PartyRandomness.seeded(alice_seq), PartyRandomness.seeded(bob_seq))
    psk = np.random.default_rng(psk_seq).bytes(PRESHARED_KEY_BYTES)
    backend = get_backend(config.backend)
    distill = config.distill_config()
    n = config.qubits
    alice_record: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]
    if config.event_driven and config.protocol is ProtocolKind.E91:
        # Only the coincidences are drawn: both records cover exactly those, all registered (a side's
        # clicks without a partner would be announced and discarded by sifting).
        alice_side, seen, stats = emulate_e91_events(
            n,
            model=config.channel,
            eve=config.eve,
            backend=backend,
            rng=channel_rng,
            alice=alice_rand.secret,
            bob=bob_rand.secret,
        )
        alice_record = (alice_side.bits, alice_side.bases, alice_side.detected, None)
    elif config.event_driven:
        sent, seen, stats = emulate_bb84_events(
            n,
            model=config.channel,
            source=config.source,
            decoy=distill.decoy,
            eve=config.eve,
            rng=channel_rng,
            alice=alice_rand.secret,
            bob=bob_rand.secret,
        )
        # Only the detected pulses are drawn: Alice's record covers exactly those, all registered (a
        # read-only broadcast: no byte per detection).
        alice_record = (sent.bits, sent.bases, _all_true(sent.bits.size), sent.intensity_class)
    elif config.protocol is ProtocolKind.BB84:
        prepared = prepare_bb84(n, source=config.source, decoy=distill.decoy, secret=alice_rand.secret)
        sent, seen, stats = emulate_bb84(
            n,
            model=config.channel,
            source=config.source,
            decoy=distill.decoy,
            eve=config.eve,
            backend=backend,
            rng=channel_rng,
            prepared=prepared,
            bob_bases=choose_bb84_bases(n, secret=bob_rand.secret, decoy=distill.decoy),
        )
        # A BB84 sender "registers" every pulse it sends.
        alice_record = (sent.bits, sent.bases, np.ones(n, dtype=bool), sent.intensity_class)
    else:
        alice_side, seen, stats = emulate_e91(
            n,
            model=config.channel,
            eve=config.eve,
            backend=backend,
            rng=channel_rng,
            alice_settings=choose_e91_settings(n, secret=alice_rand.secret, bob=False),
            bob_settings=choose_e91_settings(n, secret=bob_rand.secret, bob=True),
        )
        alice_record = (alice_side.bits, alice_side.bases, alice_side.detected, None)
    bits, settings, detected, intensities = alice_record
    alice = AliceSession(
        distill,
        bits=bits,
        settings=settings,
        detected=detected,
        intensities=intensities,
        auth=AuthKeyStore(psk),
        randomness=alice_rand,
    )
    bob = BobSession(
        distill,
        round_id=1,
        bits=seen.bits,
        settings=seen.bases,
        detected=seen.detected,
        auth=AuthKeyStore(psk),
        randomness=bob_rand,
    )
    return alice, bob, int(np.count_nonzero(seen.detected)), stats.eve_known_bits


def run_simulation(config: SimConfig) -> SimResult:
    alice, bob, detected, eve_known = make_sessions(config)
    transcript = run_pair(alice, bob, keep_crossings=False)
    if alice.outcome is None or bob.outcome is None:
        raise LocalProtocolError("round ended without an outcome")  # run_pair always ends both sessions
    if alice.outcome.established and bob.outcome.established:
        alice.auth_store.replenish(np.packbits(alice.outcome.auth_refill).tobytes())
        bob.auth_store.replenish(np.packbits(bob.outcome.auth_refill).tobytes())
    return SimResult(
        config=config,
        alice=alice.outcome,
        bob=bob.outcome,
        detected=detected,
        messages=transcript.messages,
        bytes_exchanged=transcript.bytes_exchanged,
        eve_known_bits=eve_known,
        theory=predictions(config),
    )


def predictions(config: SimConfig) -> dict[str, Any]:
    """Theory for the same parameters: expected detection rate and QBER from the channel model, the
    asymptotic secure rates, the finite-key length for the expected counts, and the seed paper's rate
    labelled as the upper bound it is."""
    model = config.channel
    distill = config.distill_config()
    f_ec = distill.ec_efficiency_estimate
    out: dict[str, Any] = {}
    if config.protocol is ProtocolKind.BB84:
        mu = config.decoy_source.intensities[0]
        bb84 = channel_model.predict_bb84(model, config.source.value, mu=mu)
        gain, q = float(bb84.detection_probability), float(bb84.qber)
        sifted = config.qubits * gain / 2
        out.update(
            expected_detection_probability=gain,
            expected_qber=q,
            expected_sifted_bits=sifted,
            shor_preskill_rate_per_sifted_bit=float(theory.shor_preskill_rate(q)),
            ec_rate_per_sifted_bit=float(theory.ec_rate(q, f_ec)),
            seed_paper_rate_upper_bound_per_pulse=float(theory.seed_paper_rate_upper_bound(gain / 2, q)),
        )
        if config.source is SourceKind.SINGLE_PHOTON:
            k = round(distill.sample_fraction * sifted)
            n = round(sifted) - k
            finite = tomamichel_length(
                n, k, q, f_ec * n * float(theory.binary_entropy(q)), distill.eps_sec, distill.eps_cor
            )
            out.update(
                asymptotic_key_bits=sifted * max(0.0, float(theory.ec_rate(q, f_ec))),
                finite_key_bits=int(finite.length),
            )
        else:
            # Lim 2014 Eq. (1) on the counts the click model expects for these parameters.
            expected = expected_decoy_length(
                model,
                config.decoy_source,
                config.qubits,
                eps_sec=distill.eps_sec,
                eps_cor=distill.eps_cor,
                f_ec=f_ec,
            )
            out["finite_key_bits"] = int(expected.length)
    else:
        e91 = channel_model.predict_e91(model)
        q = float(e91.qber)
        coincidences = config.qubits * float(e91.coincidence_probability)
        # Key pairs: Alice's basis matches Bob's X or Z (sifting.E91_KEY_SETTINGS).
        key_share = sum(
            pa * pb for pa, pb in zip(E91_ALICE_PROBABILITIES, E91_BOB_PROBABILITIES[:2], strict=True)
        )
        sifted = coincidences * key_share
        k = round(distill.sample_fraction * sifted)
        n = round(sifted) - k
        finite = tomamichel_length(
            n, k, q, f_ec * n * float(theory.binary_entropy(q)), distill.eps_sec, distill.eps_cor
        )
        out.update(
            expected_coincidence_probability=float(e91.coincidence_probability),
            expected_qber=q,
            expected_chsh=float(e91.chsh),
            expected_sifted_bits=sifted,
            ec_rate_per_sifted_bit=float(theory.ec_rate(q, f_ec)),
            di_rate_per_key_bit=float(theory.di_rate(float(e91.chsh), q)),
            seed_paper_rate_upper_bound_per_pair=float(
                theory.seed_paper_rate_upper_bound(float(e91.coincidence_probability) * key_share, q)
            ),
        )
        if config.e91_security is E91Security.BBM92:
            out["finite_key_bits"] = int(finite.length)
    out["note"] = (
        "seed_paper_rate is P_s[1-h(e)]: error correction without privacy amplification, an upper bound"
    )
    return out
