"""The receiving end of a data-plane session as a sans-IO state machine (its peer: ``send_machine``).

``ReceiverMachine`` takes the typed messages of ``events`` that the sender sends (the shell, ``receiver``,
opens and decodes each frame; ``wire`` is the one protobuf conversion) and its shell's actions (the
keys are here, this point is durable, this transfer is stored), and returns the message to send or an event
saying what the shell must do. It checks who opened the session, which messages may come when, and that
every chunk is exactly the next expected; it does no IO (no asyncio, files, database or clock), so
``tests/qlinkd/dataplane/test_dataplane_machine.py`` runs it in memory against a ``SenderMachine``.

Two layers of state: the session's phase (``ReceivePhase``) and, for every transfer in the session, its
stage (``ReceiveStage``). Every input passes the session table, and an input about a transfer then the
transfer table; a pair in neither ends the session, with a ``Rejected`` (the sender broke the protocol) or
a ``SessionMisuse`` (our own shell did). A closed machine refuses everything.

The session, as the receiver sees it::

    Open -> [Accept] -> (fetch the keys) -> Ready,
    then per transfer: Offer -> Position -> Chunk... (Ack...) -> answer
                   or: EhrMessage (one-time-pad frame)       -> answer

where the answer is Delivered or Refused. The sender may announce pad keys (``PadKey``) at any time once
the session is open.

With the post-quantum hybrid (``hybrid``: ``pq_hybrid`` is on for the peer here) the Open must carry an
ML-KEM-768 encapsulation key, and the shell answers with a plain Accept (the ciphertext) before the Ready;
without it, the Open must carry none. Either mismatch ends the session (reason ``pq_hybrid_mismatch``):
the two ends' settings must agree, and neither falls back.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, auto
from typing import NoReturn

from qlinkmed.qlinkd.dataplane.events import (
    Accept,
    Ack,
    Chunk,
    DataMessage,
    Delivered,
    EhrMessage,
    Offer,
    Open,
    PadKey,
    Position,
    Ready,
    Refused,
    TransferState,
)
from qlinkmed.qlinkd.dataplane.manifest import Manifest, TransferKind, advance_past_complete
from qlinkmed.qlinkd.dataplane.tables import SessionRules
from qlinkmed.qlinkd.errors import Rejected, SessionMisuse, TransferError

REFUSAL_REASON_CHARS = 500
"""A refusal's reason is cut to this length on the wire."""


class ReceivePhase(Enum):
    EXPECT_OPEN = auto()
    """Waiting for the sender's Open."""
    AWAIT_ENCAPSULATION = auto()
    """Hybrid sessions only: encapsulating to the Open's ML-KEM key; then Accept."""
    AWAIT_KEY = auto()
    """Fetching the QKD keys the Open named; then Ready."""
    OPEN = auto()
    """Transfers flow."""
    CLOSED = auto()


class ReceiveStage(Enum):
    IDLE = auto()
    """Not being received in this session (never offered here, or answered)."""
    OFFERED = auto()
    """Offered; the inbox says where the sender starts."""
    RECEIVING = auto()
    """Chunks to come, exactly in order."""
    FINISHING = auto()
    """Every byte here (or the whole EHR message): made durable, acknowledged, stored, then answered."""


class ReceiveInput(Enum):
    # from the sender
    OPEN = auto()
    HYBRID_OPEN = auto()
    """An Open carrying an ML-KEM-768 encapsulation key."""
    OFFER = auto()
    CHUNK = auto()
    EHR = auto()
    PAD = auto()
    # from our shell
    ACCEPT = auto()
    KEYED = auto()
    POSITION = auto()
    ALL_RECEIVED = auto()
    ACK = auto()
    DELIVERED = auto()
    REFUSED = auto()


_RECEIVE_PEER_INPUTS: dict[type[DataMessage], ReceiveInput] = {
    Offer: ReceiveInput.OFFER,
    Chunk: ReceiveInput.CHUNK,
    EhrMessage: ReceiveInput.EHR,
    PadKey: ReceiveInput.PAD,
}

_SESSION_SETUP = (ReceiveInput.OPEN, ReceiveInput.HYBRID_OPEN, ReceiveInput.ACCEPT, ReceiveInput.KEYED)

RECEIVE_SESSION: dict[tuple[ReceivePhase, ReceiveInput], ReceivePhase] = {
    (ReceivePhase.EXPECT_OPEN, ReceiveInput.OPEN): ReceivePhase.AWAIT_KEY,
    (ReceivePhase.EXPECT_OPEN, ReceiveInput.HYBRID_OPEN): ReceivePhase.AWAIT_ENCAPSULATION,
    (ReceivePhase.AWAIT_ENCAPSULATION, ReceiveInput.ACCEPT): ReceivePhase.AWAIT_KEY,
    (ReceivePhase.AWAIT_KEY, ReceiveInput.KEYED): ReceivePhase.OPEN,
    **{(ReceivePhase.OPEN, i): ReceivePhase.OPEN for i in ReceiveInput if i not in _SESSION_SETUP},
}
"""The session's phase: every input it accepts in each phase, and the phase that follows."""

RECEIVE_TRANSFER: dict[tuple[ReceiveStage, ReceiveInput], ReceiveStage] = {
    (ReceiveStage.IDLE, ReceiveInput.OFFER): ReceiveStage.OFFERED,
    (ReceiveStage.IDLE, ReceiveInput.EHR): ReceiveStage.FINISHING,
    (ReceiveStage.OFFERED, ReceiveInput.POSITION): ReceiveStage.RECEIVING,
    (ReceiveStage.RECEIVING, ReceiveInput.CHUNK): ReceiveStage.RECEIVING,
    (ReceiveStage.RECEIVING, ReceiveInput.ACK): ReceiveStage.RECEIVING,
    (ReceiveStage.RECEIVING, ReceiveInput.ALL_RECEIVED): ReceiveStage.FINISHING,
    # The last acknowledgement follows the last chunk; the answer follows the last acknowledgement.
    (ReceiveStage.FINISHING, ReceiveInput.ACK): ReceiveStage.FINISHING,
    (ReceiveStage.FINISHING, ReceiveInput.DELIVERED): ReceiveStage.IDLE,
    (ReceiveStage.FINISHING, ReceiveInput.REFUSED): ReceiveStage.IDLE,
}
"""A transfer's stage in the session: every input about it each stage accepts, and the stage that follows.
OPEN, HYBRID_OPEN, ACCEPT, KEYED and PAD concern the session only."""

RECEIVE_RULES = SessionRules(RECEIVE_SESSION, RECEIVE_TRANSFER, ReceiveStage.IDLE)


@dataclass(frozen=True, slots=True, kw_only=True)
class OfferReceived:
    """A transfer was offered: ask the inbox where it stands and answer with ``position``."""

    manifest: Manifest


@dataclass(frozen=True, slots=True, kw_only=True)
class ChunkReceived:
    """The next bytes of a transfer, exactly where they belong: spool them. `complete`: the last ones."""

    chunk: Chunk
    complete: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class EhrReceived:
    """A whole EHR message: store it (or answer from the records) and ``answer``."""

    manifest: Manifest
    body: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class PadAnnounced:
    """The sender took a pad key: fetch it now, for the range frames that will follow."""

    key_id: str


ReceiverEvent = OfferReceived | ChunkReceived | EhrReceived | PadAnnounced


@dataclass(slots=True)
class _Arrival:
    manifest: Manifest
    stage: ReceiveStage
    index: int = 0
    offset: int = 0
    """Where the next chunk must start: file `index`, `offset` bytes in."""


class ReceiverMachine:
    """The receiving end of one session: it checks who opened it, which messages may come when, that every
    chunk is exactly the next expected, and answers each transfer once."""

    def __init__(self, *, facility: str, peer: str, hybrid: bool = False) -> None:
        """`hybrid`: ``pq_hybrid`` is on for `peer` here, so its Open must offer an ML-KEM-768 key."""
        self.phase = ReceivePhase.EXPECT_OPEN
        self._facility = facility
        self._peer = peer
        self.hybrid = hybrid
        self._arrivals: dict[str, _Arrival] = {}

    def stage(self, transfer_id: str) -> ReceiveStage:
        arrival = self._arrivals.get(transfer_id)
        return ReceiveStage.IDLE if arrival is None else arrival.stage

    # ---- the sender's messages

    def receive_open(self, message: Open) -> tuple[str, ...]:
        """The session's unsealed first frame; returns the key IDs to fetch (then, with the hybrid,
        encapsulate and call ``accept``; then ``keyed``)."""
        self._move(ReceiveInput.HYBRID_OPEN if message.hybrid else ReceiveInput.OPEN, None, peer=True)
        if message.facility != self._peer:
            self._end(f"data open names {message.facility!r}, the certificate {self._peer!r}", "identity")
        if message.hybrid and not self.hybrid:
            self._end(
                f"{self._peer} offered the ML-KEM-768 hybrid, but pq_hybrid is off for it here; "
                "both ends' pq_hybrid must agree",
                "pq_hybrid_mismatch",
            )
        if self.hybrid and not message.hybrid:
            self._end(
                f"{self._peer} opened without the ML-KEM-768 hybrid, but pq_hybrid is on for it here; "
                "both ends' pq_hybrid must agree",
                "pq_hybrid_mismatch",
            )
        return message.key_ids

    def receive(self, message: DataMessage, *, one_time_pad: bool = False) -> ReceiverEvent:
        """One authenticated message from the sender (`one_time_pad`: it came in a one-time-pad frame,
        which carries EHR messages only). Rejected if it breaks the protocol."""
        what = _RECEIVE_PEER_INPUTS.get(type(message))
        if what is None:
            self._end(f"a sender does not send {type(message).__name__}")
        if one_time_pad and not isinstance(message, EhrMessage):
            self._end("a one-time-pad frame carries only EHR messages")
        if isinstance(message, Chunk):
            return self._on_chunk(message)
        if isinstance(message, Offer):
            manifest = self._manifest(message.transfer_id, message.manifest)
            self._move(what, message.transfer_id, peer=True)
            stage = RECEIVE_TRANSFER[ReceiveStage.IDLE, what]
            self._arrivals[message.transfer_id] = _Arrival(manifest, stage)
            return OfferReceived(manifest=manifest)
        if isinstance(message, EhrMessage):
            manifest = self._manifest(message.transfer_id, message.manifest)
            if manifest.kind is not TransferKind.EHR:
                self._end("EHR frame with a manifest of another transfer or kind")
            self._move(what, message.transfer_id, peer=True)
            stage = RECEIVE_TRANSFER[ReceiveStage.IDLE, what]
            self._arrivals[message.transfer_id] = _Arrival(manifest, stage)
            return EhrReceived(manifest=manifest, body=message.body)
        if isinstance(message, PadKey):
            self._move(what, None, peer=True)
            return PadAnnounced(key_id=message.key_id)
        raise SessionMisuse(f"no handler for {type(message).__name__}")  # every peer input has one above

    def _manifest(self, transfer_id: str, data: bytes) -> Manifest:
        try:
            manifest = Manifest.from_json(data)
        except TransferError as exc:
            self._end(exc.message)
        if manifest.transfer_id != transfer_id:
            self._end("offer and manifest name different transfers")
        if manifest.sender != self._peer or manifest.recipient != self._facility:
            self._end(
                f"manifest names {manifest.sender} -> {manifest.recipient}, the connection is "
                f"{self._peer} -> {self._facility}"
            )
        return manifest

    def _on_chunk(self, message: Chunk) -> ChunkReceived:
        tid = message.transfer_id
        arrival = self._arrival(ReceiveInput.CHUNK, tid, peer=True)
        if (message.file_index, message.offset) != (arrival.index, arrival.offset):
            self._end(
                f"chunk at file {message.file_index} offset {message.offset}, expected file "
                f"{arrival.index} offset {arrival.offset}"
            )
        entry = arrival.manifest.files[arrival.index]
        if not message.data or arrival.offset + len(message.data) > entry.size:
            self._end(f"chunk of {len(message.data)} bytes overruns {entry.name}")
        arrival.index, arrival.offset = advance_past_complete(
            arrival.manifest, arrival.index, arrival.offset + len(message.data)
        )
        complete = arrival.index >= len(arrival.manifest.files)
        if complete:
            self._move(ReceiveInput.ALL_RECEIVED, tid, peer=False)
        return ChunkReceived(chunk=message, complete=complete)

    # ---- our shell's actions

    def accept(self, mlkem_ciphertext: bytes) -> Accept:
        """Hybrid sessions: the ciphertext encapsulated to the Open's key, to send plain before Ready."""
        self._move(ReceiveInput.ACCEPT, None, peer=False)
        return Accept(mlkem_ciphertext=mlkem_ciphertext)

    def keyed(self) -> Ready:
        """The session's keys are here and its traffic keys derived: tell the sender to go."""
        self._move(ReceiveInput.KEYED, None, peer=False)
        return Ready()

    def position(self, transfer_id: str, state: TransferState, file_index: int, offset: int) -> Position:
        """Answer an offer with what the inbox holds (durably) of it. If that is every byte, the transfer
        is finishing at once: answer it (already delivered or refused) or store it."""
        arrival = self._arrival(ReceiveInput.POSITION, transfer_id, peer=False)
        files = arrival.manifest.files
        held = (len(files), 0) if state is TransferState.COMPLETE else (file_index, offset)
        arrival.index, arrival.offset = advance_past_complete(arrival.manifest, *held)
        if arrival.index >= len(files):
            self._move(ReceiveInput.ALL_RECEIVED, transfer_id, peer=False)
        return Position(transfer_id=transfer_id, state=state, file_index=file_index, offset=offset)

    def ack(self, transfer_id: str, file_index: int, offset: int) -> Ack:
        """Every byte before (file_index, offset) is durable in the spool and recorded."""
        self._arrival(ReceiveInput.ACK, transfer_id, peer=False)
        return Ack(transfer_id=transfer_id, file_index=file_index, offset=offset)

    def answer(self, transfer_id: str, *, delivered: bool, reason: str | None = None) -> Delivered | Refused:
        """The transfer is delivered (stored at rest and recorded) or refused for good."""
        what = ReceiveInput.DELIVERED if delivered else ReceiveInput.REFUSED
        arrival = self._arrival(what, transfer_id, peer=False)
        if delivered:
            return Delivered(transfer_id=transfer_id, manifest_sha256=arrival.manifest.sha256())
        return Refused(transfer_id=transfer_id, reason=(reason or "refused")[:REFUSAL_REASON_CHARS])

    # ---- transitions

    def _move(self, what: ReceiveInput, transfer_id: str | None, *, peer: bool) -> _Arrival | None:
        """The one place the state changes: `what` (about `transfer_id`, or the session alone) passes the
        session table, then the transfer table, or the session ends. Returns the transfer's arrival, as it
        was before the move if the move answered it; None for a transfer not being received (the caller of
        a move out of IDLE makes the arrival)."""
        self.phase, found = RECEIVE_RULES.move(
            self.phase,
            what,
            transfer_id,
            self._arrivals,
            peer=peer,
            unknown="not offered on this connection",
            end=self._end,
        )
        return found

    def _arrival(self, what: ReceiveInput, transfer_id: str, *, peer: bool) -> _Arrival:
        arrival = self._move(what, transfer_id, peer=peer)
        if arrival is None:
            self._end(f"{what.name.lower()} moved transfer {transfer_id} out of IDLE", peer=False)
        return arrival

    def _end(self, why: str, reason: str = "protocol", *, peer: bool = True) -> NoReturn:
        self.phase = ReceivePhase.CLOSED
        self._arrivals.clear()
        raise Rejected(reason, why) if peer else SessionMisuse(why)
