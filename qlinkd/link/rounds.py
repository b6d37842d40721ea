"""One round of the link, apart from when it may start or end (``machine.py`` decides that): what an end
keeps for a round, the quantum-channel submission that opens it, the distillation session built from the
channel's answer, and the key it yields with the proof that an end holds that key."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.hmac import HMAC

from qlinkmed.qcore.auth import AuthKeyStore
from qlinkmed.qcore.channel import PreparedPulses, choose_bb84_bases, choose_e91_settings, prepare_bb84
from qlinkmed.qcore.params import ProtocolKind
from qlinkmed.qcore.randomness import PartyRandomness
from qlinkmed.qcore.session import AliceSession, BobSession
from qlinkmed.qlinkd.link import messages as lm
from qlinkmed.qlinkd.link.events import LinkConfig
from qlinkmed.qlinkd.link.states import Role, RoundState


@dataclass(slots=True)
class Round:
    round_id: int
    started_at: float
    state: RoundState = RoundState.AWAIT_CHANNEL
    deadline: float | None = None
    """When the round is given up for making no progress (None: it waits for an earlier round)."""
    prepared: PreparedPulses | None = None
    """Alice's BB84 pulses (bits, bases, decoy classes), kept until the channel confirms them."""
    settings: np.ndarray | None = None
    """This end's analyser settings (BB84 Bob, either E91 party), kept until the detection record."""
    session: AliceSession | BobSession | None = None
    held: lm.Distill | None = None
    """Bob's first message when it overtook Alice's own channel result."""
    stored: bool = False
    peer_stored: bool = False
    key: bytes = field(default=b"", repr=False)
    auth_refill: bytes = field(default=b"", repr=False)
    """What the round pays back into the authentication store when it commits."""
    store_requested: bool = False
    """StorePending went out for the key (its turn came)."""


def open_round(
    config: LinkConfig, round_id: int, now: float, randomness: PartyRandomness
) -> tuple[Round, lm.ChannelSubmission]:
    """A new round and what this end submits to the quantum channel for it: this end's secret choices
    (Alice's BB84 bits, bases and decoy classes, or analyser settings), drawn from its secret source."""
    n = config.pulses_per_round
    rnd = Round(round_id=round_id, started_at=now)
    decoy = config.distill.decoy
    if config.protocol is ProtocolKind.BB84 and config.role is Role.ALICE:
        rnd.prepared = prepare_bb84(n, source=config.source, decoy=decoy, secret=randomness.secret)
        pulses = rnd.prepared
        return rnd, lm.PulseTrain(
            bits=pulses.bits,
            bases=pulses.bases,
            intensities=pulses.intensity_class,
            # The channel emulates the intensities Alice's source emits: the link's agreed source.
            mu=None if decoy is None else decoy.intensities,
        )
    if config.protocol is ProtocolKind.BB84:
        # Bob's bases follow the link's key-basis bias p_X (one fair bit a pulse without decoys).
        rnd.settings = choose_bb84_bases(n, secret=randomness.secret, decoy=decoy)
    else:
        rnd.settings = choose_e91_settings(n, secret=randomness.secret, bob=config.role is Role.BOB)
    return rnd, lm.AnalyserSettings(settings=rnd.settings)


def make_session(
    config: LinkConfig,
    rnd: Round,
    answer: lm.WireMessage,
    *,
    auth: AuthKeyStore,
    randomness: PartyRandomness,
) -> AliceSession | BobSession:
    """The round's distillation session from the quantum channel's `answer` to our submission; an answer
    that does not fit the submission raises ValueError."""
    n = config.pulses_per_round
    if config.role is Role.ALICE and config.protocol is ProtocolKind.BB84:
        if not isinstance(answer, lm.PulsesSent) or answer.count != n:
            raise ValueError(f"expected confirmation of {n} pulses sent, got {type(answer).__name__}")
        pulses = rnd.prepared
        if pulses is None:
            raise ValueError("no pulses prepared")
        # Alice sent every pulse: she knows each one's bit and basis.
        bits, settings, detected = pulses.bits, pulses.bases, np.ones(n, dtype=bool)
        intensities = pulses.intensity_class
    else:
        if not isinstance(answer, lm.DetectionRecord) or answer.detected.size != n:
            raise ValueError(f"expected a detection record of {n} gates, got {type(answer).__name__}")
        if rnd.settings is None:
            raise ValueError("no analyser settings chosen")
        settings, intensities = rnd.settings, None
        bits = np.zeros(n, dtype=np.uint8)
        detected = answer.detected.astype(bool)
        bits[detected] = answer.bits
        if config.role is Role.BOB:
            return BobSession(
                config.distill,
                round_id=rnd.round_id,
                bits=bits,
                settings=settings,
                detected=detected,
                auth=auth,
                randomness=randomness,
            )
    return AliceSession(
        config.distill,
        bits=bits,
        settings=settings,
        detected=detected,
        intensities=intensities,
        auth=auth,
        randomness=randomness,
    )


def key_confirmation(key: bytes, round_id: int, sender: str) -> bytes:
    """Proof that `sender` holds the round's key: HMAC-SHA256 keyed with the key itself. Whoever forges a
    KeyStored without the key (a man in the middle with stolen TLS certificates) cannot make an end
    commit a round its peer does not hold."""
    mac = HMAC(key, hashes.SHA256())
    mac.update(b"qlink key confirmation v1\x00" + sender.encode() + b"\x00" + round_id.to_bytes(8, "big"))
    return mac.finalize()[: lm.CONFIRMATION_BYTES]


def whole_bytes(bits: np.ndarray) -> bytes:
    """The key as stored: the pool holds whole bytes, so the last `bits.size % 8` bits (fewer than 8)
    are not kept. Round figures count ``8 * len(key)``, what the pool actually gained."""
    whole = bits.size - bits.size % 8
    return np.packbits(bits[:whole]).tobytes()
