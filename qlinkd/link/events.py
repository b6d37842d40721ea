"""What the link machine is configured with and what it hands its caller: ``LinkConfig``, the events
drained with ``LinkConnection.next_event`` and the quantum-channel submissions (``ChannelRequest``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from qlinkmed.qcore.errors import AbortReason, ConfigError
from qlinkmed.qcore.params import DistillConfig, ProtocolKind, SourceKind
from qlinkmed.qcore.round_state import RoundOutcome
from qlinkmed.qlinkd.link import messages as lm
from qlinkmed.qlinkd.link.states import Role
from qlinkmed.qlinkd.pool.values import KeyNotice, LinkState

MAX_ROUNDS_IN_FLIGHT = 32
"""The most rounds a link may hold open at once: the channel service keeps as many unmatched submissions
per link, and Bob refuses round starts beyond the agreed window."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkConfig:
    facility: str
    """This end's facility id."""
    peer: str
    """The other end's facility id."""
    protocol: ProtocolKind = ProtocolKind.BB84
    """BB84 or E91; both ends must agree (checked at hello)."""
    source: SourceKind = SourceKind.SINGLE_PHOTON
    """BB84 source; a weak-coherent-pulse source runs decoy states with ``distill.decoy``."""
    pulses_per_round: int = 1_000_000
    """Pulses (BB84) or pairs (E91) per round."""
    distill: DistillConfig = field(default_factory=DistillConfig)
    """Distillation policy: thresholds, sample fraction, security parameters."""
    round_timeout_s: float = 10.0
    """A round (or a hello) that makes no progress for this long is abandoned."""
    rounds_in_flight: int = 1
    """How many rounds may be open at once (both ends must agree; checked at hello)."""

    def __post_init__(self) -> None:
        if not 1 <= self.rounds_in_flight <= MAX_ROUNDS_IN_FLIGHT:
            raise ConfigError("rounds_in_flight", f"must be in 1..{MAX_ROUNDS_IN_FLIGHT}")
        if (self.source is SourceKind.WCP) != (self.distill.decoy is not None):
            raise ConfigError("source", "a weak-coherent-pulse source goes with a decoy source, and only it")
        if self.source is SourceKind.WCP and self.protocol is not ProtocolKind.BB84:
            raise ConfigError("source", "decoy states apply to BB84 only")

    @property
    def role(self) -> Role:
        # The facility whose id sorts first is Alice on the link: no negotiation, no tie.
        return Role.ALICE if self.facility < self.peer else Role.BOB

    @property
    def alice(self) -> str:
        return min(self.facility, self.peer)

    def owner_of(self, round_id: int) -> str:
        """The end that may hand a round's key out as master keys: Alice odd rounds, Bob even ones."""
        return self.alice if round_id % 2 else max(self.facility, self.peer)


# ---- events for the caller ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class HelloReceived:
    remote: LinkState
    """The peer's durable state: reconcile the pool with it, then call ``hello_done``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RoundStarted:
    round_id: int
    """Persist the round id as used before anything about it leaves this end."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthAdvanced:
    position: int
    """Persist the authentication-key position before sending: a pad must never be used twice."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StorePending:
    round_id: int
    owner: str
    key: bytes
    auth_refill: bytes

    def __repr__(self) -> str:
        return f"StorePending(round_id={self.round_id}, owner={self.owner!r}, key=(hidden))"


@dataclass(frozen=True, slots=True, kw_only=True)
class CommitRound:
    round_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class DiscardRound:
    round_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RoundEnded:
    round_id: int
    outcome: RoundOutcome | None
    """The distillation outcome, None when the round ended before distillation began."""
    reason: AbortReason
    detail: str
    started_at: float
    ended_at: float
    by_peer: bool = False
    """The peer ended the round; `reason` is the cause it reported."""
    key_bits: int = 0
    """Bits of key this end committed from the round (whole bytes of the distilled key; 0 unless
    established): the figure status, metrics and audit report, equal to what the pool gained."""

    @property
    def established(self) -> bool:
        return self.reason is AbortReason.NONE


@dataclass(frozen=True, slots=True, kw_only=True)
class NoticeReceived:
    notice: KeyNotice
    """Persist it (the peer handed these pool bytes out), then call ``notice_stored``: only that
    queues the acknowledgement."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NoticeAcked:
    key_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkClosed:
    reason: str


Event = (
    HelloReceived
    | RoundStarted
    | AuthAdvanced
    | StorePending
    | CommitRound
    | DiscardRound
    | RoundEnded
    | NoticeReceived
    | NoticeAcked
    | LinkClosed
)


@dataclass(frozen=True, slots=True)
class ChannelRequest:
    """A submission for the quantum channel: Alice's pulses, or a party's analyser settings."""

    round_id: int
    message: lm.ChannelSubmission
