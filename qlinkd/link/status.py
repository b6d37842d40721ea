"""What the local API shows of one link (``GET /v1/status``, one entry of ``links``), as immutable values
with their JSON form. Standard library only: the client parses the daemon's answer into these same types,
and importing them must not pull in numpy or the protocol."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, TypeVar

from qlinkmed.qlinkd.errors import StatusFormatError

T = TypeVar("T")


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceStatus:
    """The decoy source of a bb84-decoy link, as status and each round's record name it."""

    intensities: tuple[float, ...]
    """Mean photon numbers of the signal, weak decoy and vacuum-like classes."""
    probabilities: tuple[float, ...]
    """The probability of each class per pulse."""
    p_x: float
    """Probability of the key basis X, for Alice and Bob."""

    def to_json(self) -> dict[str, Any]:
        return {
            "intensities": list(self.intensities),
            "probabilities": list(self.probabilities),
            "p_x": self.p_x,
        }

    @classmethod
    def from_json(cls, data: object, where: str) -> SourceStatus | None:
        if data is None:
            return None
        d = _object(data, where)
        return cls(
            intensities=_numbers(d, "intensities", where),
            probabilities=_numbers(d, "probabilities", where),
            p_x=_number(d, "p_x", where),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class RoundRecord:
    """The last round of a link as status and the audit log report it."""

    round: int
    established: bool
    reason: str
    """The abort reason's name in lower case, ``none`` for an established round."""
    detail: str
    """Why it ended (at most 300 characters); empty for an established round."""
    duration_s: float
    qber: float | None
    qber_upper: float | None
    chsh_s: float | None
    chsh_lower: float | None
    """Lower confidence bound on S (E91); the interval is S +- (S - chsh_lower)."""
    raw_key_bits: int
    leaked_ec_bits: int
    final_key_bits: int
    """Key bits the pool gained from the round (0 unless established)."""
    round_trips: int
    eps_sec: float
    """The secrecy parameter the round's key length was computed with."""
    eps_cor: float
    """The correctness parameter (it fixes the verification hash's size)."""
    eps: float
    """eps_sec + eps_cor: the round's key is eps-secure (composable)."""
    protocol: str
    """bb84, bb84-decoy or e91 (empty when read from a daemon that predates it)."""
    decoy: SourceStatus | None
    """The decoy source the round ran with (bb84-decoy); None otherwise."""

    def to_json(self) -> dict[str, Any]:
        return {**_fields(self), "decoy": None if self.decoy is None else self.decoy.to_json()}

    @classmethod
    def from_json(cls, data: object, where: str = "last_round") -> RoundRecord:
        d = _object(data, where)
        return cls(
            round=_get(d, "round", int, where),
            established=_get(d, "established", bool, where),
            reason=_get(d, "reason", str, where),
            detail=_get(d, "detail", str, where),
            duration_s=_number(d, "duration_s", where),
            qber=_optional_number(d, "qber", where),
            qber_upper=_optional_number(d, "qber_upper", where),
            chsh_s=_optional_number(d, "chsh_s", where),
            chsh_lower=_optional_number(d, "chsh_lower", where),
            raw_key_bits=_get(d, "raw_key_bits", int, where),
            leaked_ec_bits=_get(d, "leaked_ec_bits", int, where),
            final_key_bits=_get(d, "final_key_bits", int, where),
            round_trips=_get(d, "round_trips", int, where),
            eps_sec=_number(d, "eps_sec", where),
            eps_cor=_number(d, "eps_cor", where),
            eps=_number(d, "eps", where),
            # A daemon that predates these fields names neither: empty, not refused.
            protocol=_get(d, "protocol", str, where) if "protocol" in d else "",
            decoy=SourceStatus.from_json(d.get("decoy"), f"{where}.decoy"),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class RoundCounts:
    established: int = 0
    aborted: int = 0

    def to_json(self) -> dict[str, Any]:
        return _fields(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class LatchedAlarm:
    """An alarm as it stays raised until an operator acknowledges it (``qlink alarm ack``), whatever the
    link does meanwhile: an established round clears the current condition, never this."""

    reason: str
    """The abort reason that first raised it (lower case)."""
    raised_at: str
    """When it was first raised (RFC 3339, UTC)."""
    round: int
    """The round that first raised it."""
    count: int
    """Alarming rounds since it was raised (1 at first)."""
    last_reason: str
    """The most recent alarming round's reason."""
    last_raised_at: str
    """When the most recent alarming round ended."""

    def to_json(self) -> dict[str, Any]:
        return _fields(self)

    @classmethod
    def from_json(cls, data: object, where: str = "alarm_latched") -> LatchedAlarm | None:
        if data is None:
            return None
        d = _object(data, where)
        return cls(
            reason=_get(d, "reason", str, where),
            raised_at=_get(d, "raised_at", str, where),
            round=_get(d, "round", int, where),
            count=_get(d, "count", int, where),
            last_reason=_get(d, "last_reason", str, where),
            last_raised_at=_get(d, "last_raised_at", str, where),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkStatus:
    """One link's health: ``PeerLink.statistics()``, and what ``qlink status`` reads back."""

    peer: str
    role: str
    """``alice`` or ``bob``."""
    protocol: str
    eps_sec: float
    """Secrecy parameter of the link's rounds (``[[peer]] eps_sec``)."""
    eps_cor: float
    """Correctness parameter of the link's rounds (``[[peer]] eps_cor``)."""
    eps: float
    """eps_sec + eps_cor: every key the link distils is eps-secure (composable)."""
    connected: bool
    """The classical connection to the peer is up."""
    channel_connected: bool
    """This end's connection to the quantum-channel service is up."""
    state: str
    """The link machine's state in lower case, ``disconnected`` without a connection."""
    pool_bits: int
    pool_bits_owned: int
    """The part of the pool this facility may hand out as master."""
    auth_reserve_bits: int
    low_watermark_bits: int
    high_watermark_bits: int
    rounds_paused: bool
    """Alice paused rounds at the high watermark (until the pool drops below the low one)."""
    last_committed_round: int
    rounds: RoundCounts
    last_round: RoundRecord | None
    alarm: str | None
    """The current condition: the abort reason of the last alarming round, until an established round
    clears it; None when clear. The latched alarm (``alarm_latched``) outlasts it."""
    auth_starved: bool
    """The authentication key cannot pay for another round: key generation is halted."""
    decoy: SourceStatus | None = None
    """The link's decoy source (protocol bb84-decoy); None for single photons or E91."""
    rounds_in_flight: int = 0
    """Rounds open on the link now."""
    rounds_window: int = 1
    """Rounds the link keeps open at once (``[[peer]] rounds_in_flight``)."""
    down_since: str | None = None
    """While the classical connection is down (a partition, the peer stopped, or never yet up): since
    when, ISO 8601 UTC; None while it is up."""
    down_reason: str | None = None
    """Why it went down (the last connection's end), None while up or before the first connection."""
    alarm_latched: LatchedAlarm | None = None
    """The alarm raised and not yet acknowledged (it survives restarts); None when none is raised."""

    def to_json(self) -> dict[str, Any]:
        # The nested values replace their entries in place: the keys keep the declared order.
        return {
            **_fields(self),
            "rounds": self.rounds.to_json(),
            "last_round": None if self.last_round is None else self.last_round.to_json(),
            "decoy": None if self.decoy is None else self.decoy.to_json(),
            "alarm_latched": None if self.alarm_latched is None else self.alarm_latched.to_json(),
        }

    @classmethod
    def from_json(cls, data: object) -> LinkStatus:
        """Parse one entry of the status answer's ``links``; StatusFormatError names what is wrong."""
        d = _object(data, "link")
        rounds = _object(d.get("rounds"), "rounds")
        last = d.get("last_round")
        alarm = d.get("alarm")
        if alarm is not None and not isinstance(alarm, str):
            raise StatusFormatError("alarm", f"expected text or null, got {type(alarm).__name__}")
        return cls(
            peer=_get(d, "peer", str),
            role=_get(d, "role", str),
            protocol=_get(d, "protocol", str),
            eps_sec=_number(d, "eps_sec"),
            eps_cor=_number(d, "eps_cor"),
            eps=_number(d, "eps"),
            connected=_get(d, "connected", bool),
            channel_connected=_get(d, "channel_connected", bool),
            state=_get(d, "state", str),
            pool_bits=_get(d, "pool_bits", int),
            pool_bits_owned=_get(d, "pool_bits_owned", int),
            auth_reserve_bits=_get(d, "auth_reserve_bits", int),
            low_watermark_bits=_get(d, "low_watermark_bits", int),
            high_watermark_bits=_get(d, "high_watermark_bits", int),
            rounds_paused=_get(d, "rounds_paused", bool),
            last_committed_round=_get(d, "last_committed_round", int),
            rounds=RoundCounts(
                established=_get(rounds, "established", int, "rounds"),
                aborted=_get(rounds, "aborted", int, "rounds"),
            ),
            last_round=None if last is None else RoundRecord.from_json(last),
            alarm=alarm,
            auth_starved=_get(d, "auth_starved", bool),
            decoy=SourceStatus.from_json(d.get("decoy"), "decoy"),
            rounds_in_flight=_get(d, "rounds_in_flight", int),
            rounds_window=_get(d, "rounds_window", int),
            down_since=_optional_text(d, "down_since"),
            down_reason=_optional_text(d, "down_reason"),
            # A daemon that predates latching names none.
            alarm_latched=LatchedAlarm.from_json(d.get("alarm_latched")),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class DataSession:
    """The last data-plane session with a peer whose traffic keys were derived (either direction)."""

    role: str
    """``sender`` (we dialled) or ``receiver``."""
    pq_hybrid: bool
    """An ML-KEM-768 secret was mixed into its traffic keys."""
    kem: str | None
    """``ML-KEM-768`` with the hybrid, None without."""
    opened_at: str
    """When its keys were derived (RFC 3339, UTC)."""

    def to_json(self) -> dict[str, Any]:
        return _fields(self)

    @classmethod
    def from_json(cls, data: object, where: str) -> DataSession:
        d = _object(data, where)
        kem = d.get("kem")
        if kem is not None and not isinstance(kem, str):
            raise StatusFormatError(f"{where}.kem", f"expected text or null, got {type(kem).__name__}")
        return cls(
            role=_get(d, "role", str, where),
            pq_hybrid=_get(d, "pq_hybrid", bool, where),
            kem=kem,
            opened_at=_get(d, "opened_at", str, where),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class DataPeerStatus:
    """The data plane's view of one peer (``GET /v1/status``, one entry of ``data_plane.peers``)."""

    peer: str
    pq_hybrid: bool
    """The configured ``pq_hybrid``: every session with this peer must mix in ML-KEM-768."""
    last_session: DataSession | None
    """None until a session's keys are derived (since the daemon started)."""
    key_source: str = "emulated"
    """Where the peer's session keys come from: ``emulated`` (this daemon's QKD link and pool) or
    ``etsi014`` (an external ETSI GS QKD 014 KME)."""

    def to_json(self) -> dict[str, Any]:
        last = self.last_session
        return {**_fields(self), "last_session": None if last is None else last.to_json()}

    @classmethod
    def from_json(cls, data: object) -> DataPeerStatus:
        d = _object(data, "data_plane.peers[]")
        peer = _get(d, "peer", str)
        last = d.get("last_session")
        return cls(
            peer=peer,
            pq_hybrid=_get(d, "pq_hybrid", bool, peer),
            last_session=None if last is None else DataSession.from_json(last, f"{peer}.last_session"),
            # A daemon that predates external key sources names none: its keys are its own link's.
            key_source=_get(d, "key_source", str, peer) if "key_source" in d else "emulated",
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class RefusedStatus:
    """An outgoing transfer the peer refused or that could not be delivered: it will not be retried."""

    transfer_id: str
    at: str
    """When it was given up (RFC 3339, UTC)."""
    reason: str

    def to_json(self) -> dict[str, Any]:
        return _fields(self)

    @classmethod
    def from_json(cls, data: object, where: str) -> RefusedStatus:
        d = _object(data, where)
        return cls(
            transfer_id=_get(d, "transfer_id", str, where),
            at=_get(d, "at", str, where),
            reason=_get(d, "reason", str, where),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueStatus:
    """The data plane's queues with one peer (``GET /v1/status``, one entry of ``data_plane.queues``)."""

    peer: str
    queued: int
    """Transfers waiting to be delivered to the peer."""
    queued_bytes: int
    oldest_queued_age_s: float | None
    """Age of the oldest queued transfer; None for an empty queue."""
    stuck: int
    """Queued transfers older than ``stuck_after_s``."""
    stuck_after_s: float
    sender: str
    """What the peer's sender is doing, or why it cannot deliver (the last connection error)."""
    failing_since: str | None
    """Since when the sender has failed to reach or keep a session with the peer (RFC 3339, UTC); None
    while it succeeds."""
    refused: int
    """Outgoing transfers refused or undeliverable in the last ``refused_window_s``."""
    refused_window_s: float
    refused_recent: tuple[RefusedStatus, ...]
    """The newest of those, with the reason each was refused."""
    unfetched: int
    """Transfers from the peer delivered here and not yet fetched."""
    oldest_unfetched_age_s: float | None

    def to_json(self) -> dict[str, Any]:
        return {**_fields(self), "refused_recent": [r.to_json() for r in self.refused_recent]}

    @classmethod
    def from_json(cls, data: object) -> QueueStatus:
        d = _object(data, "data_plane.queues[]")
        where = _get(d, "peer", str)
        recent = d.get("refused_recent")
        if not isinstance(recent, list):
            raise StatusFormatError(f"{where}.refused_recent", "expected a list")
        return cls(
            peer=where,
            queued=_get(d, "queued", int, where),
            queued_bytes=_get(d, "queued_bytes", int, where),
            oldest_queued_age_s=_optional_number(d, "oldest_queued_age_s", where),
            stuck=_get(d, "stuck", int, where),
            stuck_after_s=_number(d, "stuck_after_s", where),
            sender=_get(d, "sender", str, where),
            failing_since=_optional_text(d, "failing_since"),
            refused=_get(d, "refused", int, where),
            refused_window_s=_number(d, "refused_window_s", where),
            refused_recent=tuple(
                RefusedStatus.from_json(r, f"{where}.refused_recent[{i}]") for i, r in enumerate(recent)
            ),
            unfetched=_get(d, "unfetched", int, where),
            oldest_unfetched_age_s=_optional_number(d, "oldest_unfetched_age_s", where),
        )


def _numbers(d: Mapping[str, Any], name: str, where: str) -> tuple[float, ...]:
    values = d.get(name)
    if not isinstance(values, list) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in values
    ):
        raise StatusFormatError(f"{where}.{name}", "expected an array of numbers")
    return tuple(float(v) for v in values)


def _fields(
    value: SourceStatus
    | RoundRecord
    | RoundCounts
    | LinkStatus
    | DataSession
    | DataPeerStatus
    | LatchedAlarm
    | RefusedStatus
    | QueueStatus,
) -> dict[str, Any]:
    """A status value's fields by name, in the order declared (the order of the JSON keys)."""
    return {f.name: getattr(value, f.name) for f in fields(value)}


def _object(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise StatusFormatError(where, f"expected an object, got {type(value).__name__}")
    return value


def _get(d: Mapping[str, Any], name: str, kind: type[T], where: str = "") -> T:
    field = f"{where}.{name}" if where else name
    if name not in d:
        raise StatusFormatError(field, "missing")
    value = d[name]
    # JSON has no separate booleans and integers in Python's eyes (bool is an int): keep them apart.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise StatusFormatError(field, f"expected {kind.__name__}, got {type(value).__name__}")
    return value


def _optional_text(d: Mapping[str, Any], name: str) -> str | None:
    value = d.get(name)
    if value is not None and not isinstance(value, str):
        raise StatusFormatError(name, f"expected text or null, got {type(value).__name__}")
    return value


def _number(d: Mapping[str, Any], name: str, where: str = "") -> float:
    value = _optional_number(d, name, where)
    if value is None:
        raise StatusFormatError(f"{where}.{name}" if where else name, "expected a number, got null")
    return value


def _optional_number(d: Mapping[str, Any], name: str, where: str = "") -> float | None:
    field = f"{where}.{name}" if where else name
    if name not in d:
        raise StatusFormatError(field, "missing")
    value = d[name]
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise StatusFormatError(field, f"expected a number, got {type(value).__name__}")
    return float(value)
