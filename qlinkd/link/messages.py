"""Link-control and quantum-channel messages: the events ``qlinkd`` exchanges besides qcore's
distillation messages. Each validates itself on construction, so a frame that decodes into one of these
already satisfies its invariants (``wire.py`` wraps the failures into ``FrameError``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import get_args

import numpy as np

from qlinkmed.qcore import messages as qm
from qlinkmed.qcore.constants import FACILITY_ID_PATTERN, is_facility_id
from qlinkmed.qcore.params import E91Security
from qlinkmed.qcore.security import DEFAULT_EPS_COR, DEFAULT_EPS_SEC
from qlinkmed.qlinkd.errors import FrameError, StoreError
from qlinkmed.qlinkd.pool.values import KeyNotice, LinkState

PROTOCOLS = ("bb84", "e91")
SOURCES = ("single-photon", "wcp")
ROLES = ("alice", "bob")
CONFIRMATION_BYTES = 16
"""Length of ``KeyStored.confirmation``, a truncated HMAC-SHA256 (``rounds.key_confirmation``)."""
DIGEST_HEX = 64
"""Length of an audit-log digest: SHA-256 in hex (``ops/audit.py``)."""
_HEX = frozenset("0123456789abcdef")


def _name(value: str, what: str) -> None:
    if not is_facility_id(value):
        raise FrameError(f"{what}: {value[:80]!r} is not a facility name ({FACILITY_ID_PATTERN.pattern})")


def _choice(value: str, allowed: tuple[str, ...], what: str) -> None:
    if value not in allowed:
        raise FrameError(f"{what}: {value[:40]!r} is not one of {', '.join(allowed)}")


def _levels(values: np.ndarray, levels: int, what: str) -> None:
    if values.ndim != 1:
        raise FrameError(f"{what}: expected a flat array")
    if values.size and int(values.max()) >= levels:
        raise FrameError(f"{what}: entries must lie in 0..{levels - 1}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Hello(LinkState):
    """The first frame either end sends: its durable ``LinkState`` (the fields and checks it inherits,
    what the pools reconcile with) and the link parameters both ends must share."""

    facility: str
    peer: str
    protocol: str
    source: str
    pulses_per_round: int
    eps_sec: float = DEFAULT_EPS_SEC
    eps_cor: float = DEFAULT_EPS_COR
    e91_security: str = E91Security.BBM92.value
    decoy_intensities: tuple[float, ...] = ()
    """A wcp link's decoy intensities (signal, weak decoy, vacuum-like); empty otherwise."""
    decoy_probabilities: tuple[float, ...] = ()
    """Their probabilities; empty otherwise."""
    decoy_p_x: float = 0.0
    """The key-basis probability p_X of a wcp link; 0 otherwise."""
    rounds_in_flight: int = 0
    """The window of rounds open at once (0 from a peer that predates it: refused, named)."""
    cascade: str = ""
    """Cascade's schedule ("" from a peer that predates it: refused, named)."""

    def __post_init__(self) -> None:
        _name(self.facility, "hello.facility")
        _name(self.peer, "hello.peer")
        _choice(self.protocol, PROTOCOLS, "hello.protocol")
        _choice(self.source, SOURCES, "hello.source")
        try:
            # Named, not super(): slots=True rebuilds the class, which breaks zero-argument super().
            LinkState.__post_init__(self)
        except StoreError as exc:
            raise FrameError(f"hello.{exc.field}: {exc.message}") from None
        if self.last_committed >= self.next_round or self.pending_round >= self.next_round:
            raise FrameError("hello: a committed or pending round lies beyond next_round")


@dataclass(frozen=True, slots=True, kw_only=True)
class RoundStart:
    pulses: int

    def __post_init__(self) -> None:
        if self.pulses <= 0:
            raise FrameError("round_start.pulses: must be positive")


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyStored:
    confirmation: bytes = field(repr=False)
    """``rounds.key_confirmation`` of the sender: it holds the round's key, not merely says so."""

    def __post_init__(self) -> None:
        if len(self.confirmation) != CONFIRMATION_BYTES:
            raise FrameError(
                f"key_stored.confirmation: {len(self.confirmation)} bytes, expected {CONFIRMATION_BYTES}"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class NoticeAck:
    key_id: str


def _head(seq: int, digest: str, what: str) -> None:
    if digest == "":
        if seq != 0:
            raise FrameError(f"{what}: seq {seq} without a digest")
    elif len(digest) != DIGEST_HEX or not set(digest) <= _HEX:
        raise FrameError(f"{what}: digest must be {DIGEST_HEX} lowercase hex digits or empty")
    elif seq <= 0:
        raise FrameError(f"{what}: a digest needs a positive seq")


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditAnchor:
    """One facility's audit-log head for the other to keep, and the other's head as this one keeps it
    (``anchor.py``). Not a distillation message: the link machine never sees it."""

    seq: int
    """The sender's own head: the seq of its last record (0: no head offered)."""
    digest: str
    """SHA-256 hex of that record's line ("": no head offered)."""
    held_seq: int
    """The receiver's head as the sender last recorded it (0: none yet)."""
    held_digest: str
    """Its digest ("": none yet)."""
    reply: bool
    """An answer to a request: never answered itself."""

    def __post_init__(self) -> None:
        _head(self.seq, self.digest, "audit_anchor")
        _head(self.held_seq, self.held_digest, "audit_anchor.held")


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelHello:
    facility: str
    peer: str
    role: str
    protocol: str

    def __post_init__(self) -> None:
        _name(self.facility, "channel_hello.facility")
        _name(self.peer, "channel_hello.peer")
        _choice(self.role, ROLES, "channel_hello.role")
        _choice(self.protocol, PROTOCOLS, "channel_hello.protocol")
        if self.facility == self.peer:
            raise FrameError("channel_hello: a facility cannot link to itself")


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class PulseTrain:
    bits: np.ndarray = field(repr=False)
    bases: np.ndarray = field(repr=False)
    intensities: np.ndarray | None = field(repr=False)
    """Decoy class (0..2) per pulse; None for a single-photon source."""
    mu: tuple[float, ...] | None = None
    """The mean photon number of each decoy class, as the link's source emits them; None for a
    single-photon source. The channel service checks the values (``broker.py``)."""

    def __post_init__(self) -> None:
        if self.bits.size == 0 or self.bits.size != self.bases.size:
            raise FrameError("pulse_train: bits and bases must be non-empty and of equal length")
        if self.intensities is not None:
            if self.intensities.size != self.bits.size:
                raise FrameError("pulse_train.intensities: one decoy class per pulse")
            _levels(self.intensities, 3, "pulse_train.intensities")
        if (self.mu is None) != (self.intensities is None):
            raise FrameError("pulse_train.mu: decoy intensities go with decoy classes, and only with them")


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class AnalyserSettings:
    settings: np.ndarray = field(repr=False)

    def __post_init__(self) -> None:
        if self.settings.size == 0:
            raise FrameError("analyser_settings: empty")
        # Up to four settings (E91 Bob: X, Z, W, V); the channel's emulator checks each party's own range.
        _levels(self.settings, 4, "analyser_settings.settings")


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class DetectionRecord:
    detected: np.ndarray = field(repr=False)
    """One entry per gate: 1 where a detector clicked."""
    bits: np.ndarray = field(repr=False)
    """The recorded bit at each click, in gate order."""

    def __post_init__(self) -> None:
        if self.bits.size != int(np.count_nonzero(self.detected)):
            raise FrameError("detection_record: one bit per click expected")


@dataclass(frozen=True, slots=True, kw_only=True)
class PulsesSent:
    count: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelError:
    reason: str


Distill = (
    qm.Detections
    | qm.Sifting
    | qm.Estimate
    | qm.ParityRequest
    | qm.ParityReply
    | qm.Verify
    | qm.Amplify
    | qm.AuthTag
    | qm.Abort
)
"""qcore's distillation messages, as they cross the classical channel inside a round."""
DISTILL_TYPES: tuple[type[Distill], ...] = get_args(Distill)
"""The members of ``Distill``, for isinstance (the sessions and the codec return qcore's base type)."""
LinkControl = Hello | RoundStart | KeyStored | KeyNotice | NoticeAck
"""What the link machines exchange around the rounds."""
PeerMessage = Distill | LinkControl
"""Everything one link machine sends the other."""
PeerFrame = PeerMessage | AuditAnchor
"""Everything on the classical connection: the link machines' messages and, beside them, audit anchors."""
ChannelSubmission = PulseTrain | AnalyserSettings
"""What a facility submits to the quantum channel for a round."""
ChannelAnswer = PulsesSent | DetectionRecord | ChannelError
"""What the quantum channel answers a submission with."""
ChannelMessage = ChannelHello | ChannelSubmission | ChannelAnswer
"""Everything on the quantum-channel connection."""
WireMessage = PeerFrame | ChannelMessage
"""Everything the wire codec carries: any frame decodes to one of these (whichever connection it came
from, so a receiver still checks that it belongs there)."""
