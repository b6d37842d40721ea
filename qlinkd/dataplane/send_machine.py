"""The sending end of a data-plane session as a sans-IO state machine (its peer: ``receive_machine``).

``SenderMachine`` takes the typed messages of ``events`` that the receiver sends (the shell, ``sender``,
opens and decodes each frame; ``wire`` is the one protobuf conversion) and its shell's actions (offer
this transfer, here are the next bytes, announce this pad key), and returns the message to send or an
event saying what the shell must do. It decides what may be sent next and judges every answer; it does no
IO (no asyncio, files, database or clock), so ``tests/qlinkd/dataplane/test_dataplane_machine.py`` runs
it in memory against a ``ReceiverMachine``.

Two layers of state: the session's phase (``SendPhase``) and, for every transfer in the session, its stage
(``SendStage``). Every input passes the session table, and an input about a transfer then the transfer
table; a pair in neither ends the session, with a ``SessionClosed`` (the receiver broke the protocol) or a
``SessionMisuse`` (our own shell did). A closed machine refuses everything.

The session, as the sender sees it::

    Open -> [Accept] -> Ready,
    then per transfer: Offer -> Position -> Chunk... -> (Ack...) -> Delivered | Refused
                   or: EhrMessage (one-time-pad frame)         -> Delivered | Refused

The sender may announce pad keys (``PadKey``) at any time once the session is open, and may start an EHR
message while a study streams (EHR messages overtake studies between chunks).

With the post-quantum hybrid the Open carries an ML-KEM-768 encapsulation key and the receiver's plain
Accept (its ciphertext) must come before the sealed Ready; without it, an Accept ends the session. A
receiver's plain refusal ends it in either case. The two ends' ``pq_hybrid`` settings must agree: neither
falls back.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from enum import Enum, auto
from typing import NoReturn

from qlinkmed.qlinkd.dataplane.events import (
    DATA_VERSION,
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
    SessionRefusal,
    TransferState,
)
from qlinkmed.qlinkd.dataplane.manifest import Manifest, TransferKind, advance_past_complete
from qlinkmed.qlinkd.dataplane.tables import SessionRules
from qlinkmed.qlinkd.errors import SessionClosed, SessionMisuse

CHUNK_BYTES = (1 << 20) - 1024
"""File bytes per chunk: a whole chunk message (and its protobuf fields) fits one 1 MiB sealed frame."""
WINDOW_BYTES = 48 << 20
"""Unacknowledged bytes in flight; the receiver acknowledges every SYNC_BYTES (inbox side)."""


class SendPhase(Enum):
    EXPECT_ACCEPT = auto()
    """Hybrid sessions only: the Open is sent; the receiver answers with its ML-KEM ciphertext."""
    EXPECT_READY = auto()
    """The Open is sent; the receiver fetches the key and answers Ready."""
    OPEN = auto()
    """Transfers flow."""
    CLOSED = auto()


class SendStage(Enum):
    IDLE = auto()
    """Not in flight in this session (never offered here, or answered)."""
    EXPECT_POSITION = auto()
    """Offered; the receiver says where to start."""
    STREAMING = auto()
    """Chunks to send, inside the window."""
    EXPECT_OUTCOME = auto()
    """Every byte sent (or the whole EHR message): waiting for Delivered or Refused."""


class SendInput(Enum):
    # from the receiver
    ACCEPT = auto()
    READY = auto()
    POSITION = auto()
    ACK = auto()
    DELIVERED = auto()
    REFUSED = auto()
    # from our shell
    OFFER = auto()
    EHR = auto()
    CHUNK = auto()
    ALL_SENT = auto()
    PAD = auto()


_SEND_PEER_INPUTS: dict[type[DataMessage], SendInput] = {  # sealed; an Accept comes plain
    Ready: SendInput.READY,
    Position: SendInput.POSITION,
    Ack: SendInput.ACK,
    Delivered: SendInput.DELIVERED,
    Refused: SendInput.REFUSED,
}

SEND_SESSION: dict[tuple[SendPhase, SendInput], SendPhase] = {
    (SendPhase.EXPECT_ACCEPT, SendInput.ACCEPT): SendPhase.EXPECT_READY,
    (SendPhase.EXPECT_READY, SendInput.READY): SendPhase.OPEN,
    **{
        (SendPhase.OPEN, i): SendPhase.OPEN for i in SendInput if i not in (SendInput.ACCEPT, SendInput.READY)
    },
}
"""The session's phase: every input it accepts in each phase, and the phase that follows."""

SEND_TRANSFER: dict[tuple[SendStage, SendInput], SendStage] = {
    (SendStage.IDLE, SendInput.OFFER): SendStage.EXPECT_POSITION,
    (SendStage.IDLE, SendInput.EHR): SendStage.EXPECT_OUTCOME,
    (SendStage.EXPECT_POSITION, SendInput.POSITION): SendStage.STREAMING,
    (SendStage.STREAMING, SendInput.CHUNK): SendStage.STREAMING,
    (SendStage.STREAMING, SendInput.ACK): SendStage.STREAMING,
    (SendStage.STREAMING, SendInput.ALL_SENT): SendStage.EXPECT_OUTCOME,
    # The last acknowledgement arrives after the last chunk left; an EHR message sent whole gets none.
    (SendStage.EXPECT_OUTCOME, SendInput.ACK): SendStage.EXPECT_OUTCOME,
    (SendStage.EXPECT_OUTCOME, SendInput.DELIVERED): SendStage.IDLE,
    (SendStage.EXPECT_OUTCOME, SendInput.REFUSED): SendStage.IDLE,
}
"""A transfer's stage in the session: every input about it each stage accepts, and the stage that follows.
ACCEPT, READY and PAD concern the session only."""

SEND_RULES = SessionRules(SEND_SESSION, SEND_TRANSFER, SendStage.IDLE)


@dataclass(frozen=True, slots=True, kw_only=True)
class Positioned:
    """The receiver said where to start: stream from ``next_chunk`` (or wait for the outcome)."""

    transfer_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Acknowledged:
    """The receiver holds more bytes durably: the window may have opened."""

    transfer_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Answered:
    """The receiver delivered (its Delivered names our manifest) or refused the transfer: record it."""

    transfer_id: str
    delivered: bool
    reason: str | None


SenderEvent = Positioned | Acknowledged | Answered


@dataclass(frozen=True, slots=True)
class ChunkWanted:
    """Where the next chunk of a transfer starts, and at most how many bytes it carries."""

    file_index: int
    offset: int
    max_bytes: int


@dataclass(slots=True)
class _Flight:
    manifest: Manifest
    starts: list[int]
    """Where each file begins in the transfer's bytes, then the total (``Manifest.file_starts``)."""
    stage: SendStage
    index: int = 0
    offset: int = 0
    """The next chunk's place: file `index`, `offset` bytes in."""
    sent: int = 0
    acked: int = 0
    """Bytes of the transfer before the next chunk, and before the receiver's latest acknowledgement."""


class SenderMachine:
    """The sending end of one session: it offers transfers, streams their chunks inside the window, sends
    EHR messages whole, and checks every answer against what is in flight."""

    def __init__(
        self,
        *,
        facility: str,
        key_ids: Sequence[str],
        window_bytes: int = WINDOW_BYTES,
        chunk_bytes: int = CHUNK_BYTES,
        mlkem_encapsulation_key: bytes = b"",
    ) -> None:
        """`mlkem_encapsulation_key`: this session's ephemeral ML-KEM-768 key when ``pq_hybrid`` is on
        for the peer; empty without the hybrid."""
        self._open = Open(
            version=DATA_VERSION,
            facility=facility,
            key_ids=tuple(key_ids),
            mlkem_encapsulation_key=mlkem_encapsulation_key,
        )
        self.phase = SendPhase.EXPECT_ACCEPT if self._open.hybrid else SendPhase.EXPECT_READY
        self._window = window_bytes
        self._chunk = chunk_bytes
        self._flights: dict[str, _Flight] = {}

    def opening(self) -> Open:
        """The session's first frame (sent unsealed): our facility, the QKD key IDs and, with the hybrid,
        the encapsulation key."""
        return self._open

    @property
    def hybrid(self) -> bool:
        """The session mixes an ML-KEM-768 secret into its traffic keys."""
        return self._open.hybrid

    def stage(self, transfer_id: str) -> SendStage:
        flight = self._flights.get(transfer_id)
        return SendStage.IDLE if flight is None else flight.stage

    def in_flight(self) -> Collection[str]:
        """The transfers offered or sent and not answered yet."""
        return self._flights.keys()

    # ---- the receiver's messages

    def receive_answer(self, answer: Accept | SessionRefusal) -> bytes:
        """The receiver's plain answer to the Open; returns the ML-KEM ciphertext to decapsulate. A
        refusal, or a ciphertext this end did not ask for, ends the session (SessionClosed)."""
        if isinstance(answer, SessionRefusal):
            self._end(f"the receiver refused the session: {answer.reason}", peer=True)
        if not self.hybrid:
            self._end(
                "the receiver sent an ML-KEM-768 ciphertext, but pq_hybrid is off for it here; "
                "both ends' pq_hybrid must agree",
                peer=True,
            )
        self._move(SendInput.ACCEPT, None, peer=True)
        return answer.mlkem_ciphertext

    def answered_sealed(self) -> None:
        """The receiver's first answer is a sealed frame (the shell then opens it and passes the Ready).
        Before a hybrid session's Accept, that is a receiver that left the hybrid out: the session ends
        rather than fall back to QKD key alone."""
        if self.phase is SendPhase.EXPECT_ACCEPT:
            self._end(
                "the receiver answered without the ML-KEM-768 hybrid (pq_hybrid is off there, or it predates "
                "the hybrid), but pq_hybrid is on for it here; both ends' pq_hybrid must agree",
                peer=True,
            )

    def receive(self, message: DataMessage) -> SenderEvent | None:
        """One authenticated message from the receiver. SessionClosed if it breaks the protocol."""
        what = _SEND_PEER_INPUTS.get(type(message))
        if what is None:
            self._end(f"a receiver does not send {type(message).__name__}", peer=True)
        if isinstance(message, Ready):
            self._move(what, None, peer=True)
            return None
        if isinstance(message, Position):
            return self._on_position(message)
        if isinstance(message, Ack):
            return self._on_ack(message)
        if isinstance(message, Delivered):
            manifest = self._flight(what, message.transfer_id, peer=True).manifest
            if message.manifest_sha256 != manifest.sha256():
                self._end(f"transfer {message.transfer_id}: receiver confirmed another manifest", peer=True)
            return Answered(transfer_id=message.transfer_id, delivered=True, reason=None)
        if isinstance(message, Refused):
            self._move(what, message.transfer_id, peer=True)
            return Answered(transfer_id=message.transfer_id, delivered=False, reason=message.reason)
        raise SessionMisuse(f"no handler for {type(message).__name__}")  # every peer input has one above

    def _on_position(self, message: Position) -> Positioned:
        tid = message.transfer_id
        flight = self._flight(SendInput.POSITION, tid, peer=True)
        files = flight.manifest.files
        if message.state is TransferState.COMPLETE:
            index, offset = len(files), 0
        else:
            index, offset = message.file_index, message.offset
            if index > len(files) or (index < len(files) and offset > files[index].size):
                self._end(f"transfer {tid}: receiver asked to resume at an impossible position", peer=True)
            index, offset = advance_past_complete(flight.manifest, index, offset)
        flight.index, flight.offset = index, offset
        flight.sent = flight.acked = flight.starts[index] + offset
        if index >= len(files):
            self._move(SendInput.ALL_SENT, tid, peer=False)
        return Positioned(transfer_id=tid)

    def _on_ack(self, message: Ack) -> Acknowledged:
        tid = message.transfer_id
        flight = self._flight(SendInput.ACK, tid, peer=True)
        starts = flight.starts
        if message.file_index >= len(starts):
            self._end(f"ack for file {message.file_index} of {len(starts) - 1} files", peer=True)
        position = starts[message.file_index] + message.offset
        if position > flight.sent:
            self._end(f"transfer {tid}: ack at byte {position}, only {flight.sent} were sent", peer=True)
        flight.acked = max(flight.acked, position)
        return Acknowledged(transfer_id=tid)

    # ---- our shell's actions

    def offer(self, manifest: Manifest) -> Offer:
        """Offer a transfer (a study, images, or an EHR message the one-time pad cannot carry)."""
        tid = manifest.transfer_id
        self._move(SendInput.OFFER, tid, peer=False)
        stage = SEND_TRANSFER[SendStage.IDLE, SendInput.OFFER]
        self._flights[tid] = _Flight(manifest, manifest.file_starts(), stage)
        return Offer(transfer_id=tid, manifest=manifest.to_json())

    def ehr(self, manifest: Manifest, body: bytes) -> EhrMessage:
        """An EHR message sent whole (in a one-time-pad frame): it waits for its outcome at once."""
        tid = manifest.transfer_id
        if manifest.kind is not TransferKind.EHR:
            self._end(f"transfer {tid} is a {manifest.kind.value}, not an EHR message", peer=False)
        self._move(SendInput.EHR, tid, peer=False)
        stage = SEND_TRANSFER[SendStage.IDLE, SendInput.EHR]
        self._flights[tid] = _Flight(manifest, manifest.file_starts(), stage)
        return EhrMessage(transfer_id=tid, manifest=manifest.to_json(), body=body)

    def next_chunk(self, transfer_id: str) -> ChunkWanted | None:
        """Where the transfer's next chunk starts; None once every byte is sent."""
        flight = self._flights.get(transfer_id)
        if flight is None or flight.stage is not SendStage.STREAMING:
            return None
        size = flight.manifest.files[flight.index].size
        return ChunkWanted(flight.index, flight.offset, min(self._chunk, size - flight.offset))

    def window_open(self, transfer_id: str) -> bool:
        """True while the receiver has acknowledged enough that another chunk may go."""
        flight = self._flights.get(transfer_id)
        return flight is not None and flight.sent - flight.acked <= self._window

    def chunk(self, transfer_id: str, data: bytes) -> Chunk:
        """The next chunk, carrying `data` (1 to ``next_chunk().max_bytes`` bytes read from where
        ``next_chunk`` said)."""
        flight = self._flight(SendInput.CHUNK, transfer_id, peer=False)
        size = flight.manifest.files[flight.index].size
        if not 0 < len(data) <= min(self._chunk, size - flight.offset):
            self._end(f"a chunk of {len(data)} bytes at {flight.offset} of a {size}-byte file", peer=False)
        if flight.sent - flight.acked > self._window:
            self._end(f"transfer {transfer_id}: chunk sent with the window closed", peer=False)
        message = Chunk(transfer_id=transfer_id, file_index=flight.index, offset=flight.offset, data=data)
        flight.sent += len(data)
        flight.index, flight.offset = advance_past_complete(
            flight.manifest, flight.index, flight.offset + len(data)
        )
        if flight.index >= len(flight.manifest.files):
            self._move(SendInput.ALL_SENT, transfer_id, peer=False)
        return message

    def pad_key(self, key_id: str) -> PadKey:
        """Announce a pad key that later range frames cut from."""
        self._move(SendInput.PAD, None, peer=False)
        return PadKey(key_id=key_id)

    # ---- transitions

    def _move(self, what: SendInput, transfer_id: str | None, *, peer: bool) -> _Flight | None:
        """The one place the state changes: `what` (about `transfer_id`, or the session alone) passes the
        session table, then the transfer table, or the session ends. Returns the transfer's flight, as it
        was before the move if the move answered it; None for a transfer not in flight (the caller of a
        move out of IDLE makes the flight)."""
        self.phase, found = SEND_RULES.move(
            self.phase,
            what,
            transfer_id,
            self._flights,
            peer=peer,
            unknown="which is not in flight",
            end=self._end,
        )
        return found

    def _flight(self, what: SendInput, transfer_id: str, *, peer: bool) -> _Flight:
        """`_move` for an input the table accepts only for a transfer in flight."""
        flight = self._move(what, transfer_id, peer=peer)
        if flight is None:
            self._end(f"{what.name.lower()} moved transfer {transfer_id} out of IDLE", peer=False)
        return flight

    def _end(self, why: str, *, peer: bool) -> NoReturn:
        self.phase = SendPhase.CLOSED
        self._flights.clear()
        raise SessionClosed(why) if peer else SessionMisuse(why)
