"""The data-plane session machines without sockets: a sender and a receiver connected in memory (every
message through the one protobuf conversion, ``wire``), a study and EHR messages crossing, resumes,
every (state, input) pair against the transition tables, and replayed, reordered or tampered messages
refused."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections import deque
from collections.abc import Callable

import pytest

from qlinkmed.qlinkd.dataplane import wire as dm
from qlinkmed.qlinkd.dataplane.events import (
    DATA_VERSION,
    MLKEM_CIPHERTEXT_BYTES,
    MLKEM_ENCAPSULATION_KEY_BYTES,
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
from qlinkmed.qlinkd.dataplane.manifest import FileEntry, Manifest, TransferKind
from qlinkmed.qlinkd.dataplane.receive_machine import (
    RECEIVE_SESSION,
    RECEIVE_TRANSFER,
    ChunkReceived,
    EhrReceived,
    OfferReceived,
    PadAnnounced,
    ReceiveInput,
    ReceivePhase,
    ReceiverMachine,
    ReceiveStage,
)
from qlinkmed.qlinkd.dataplane.send_machine import (
    SEND_SESSION,
    SEND_TRANSFER,
    Acknowledged,
    Answered,
    SenderEvent,
    SenderMachine,
    SendInput,
    SendPhase,
    SendStage,
)
from qlinkmed.qlinkd.errors import FrameError, Rejected, SessionClosed, SessionMisuse

A, B = "hospital-a", "hospital-b"
KEY = str(uuid.uuid4())
CHUNK = 1000
WINDOW = 2500


def _manifest(sizes: list[int], kind: TransferKind = TransferKind.STUDY) -> tuple[Manifest, list[bytes]]:
    files = [bytes([i + 1]) * size for i, size in enumerate(sizes)]
    content = "fhir" if kind is TransferKind.EHR else "dicom"
    manifest = Manifest(
        transfer_id=str(uuid.uuid4()),
        sender=A,
        recipient=B,
        kind=kind,
        files=tuple(
            FileEntry(f"f{i}", len(d), hashlib.sha256(d).hexdigest(), content) for i, d in enumerate(files)
        ),
        created=time.time(),
    )
    return manifest, files


def _wire(message: DataMessage) -> DataMessage:
    """What the peer decodes: the message through protobuf and back."""
    return dm.decode_message(dm.encode_message(message))


class Pair:
    """A sender and a receiver machine, each message carried in memory. The receiver's side plays a shell
    with an in-memory inbox: it acknowledges every `sync_bytes` and at the end, and delivers at once."""

    def __init__(self, *, sync_bytes: int = 2000) -> None:
        self.sender = SenderMachine(facility=A, key_ids=[KEY], window_bytes=WINDOW, chunk_bytes=CHUNK)
        self.receiver = ReceiverMachine(facility=B, peer=A)
        self.to_receiver: deque[DataMessage] = deque()
        self.to_sender: deque[DataMessage] = deque()
        self.sender_events: list[SenderEvent] = []
        self.spooled: dict[str, bytearray] = {}
        self.held: dict[str, tuple[TransferState, int, int]] = {}
        """What the receiver's inbox says of a transfer when it is offered (default: nothing)."""
        self.delivered: dict[str, bytes] = {}
        self.pads: list[str] = []
        self.manifests: dict[str, Manifest] = {}
        self._sync_bytes = sync_bytes
        self._unsynced = 0

    def open(self) -> None:
        key_ids = self.receiver.receive_open(self.sender.opening())
        assert key_ids == (KEY,)
        self.to_sender.append(self.receiver.keyed())
        self.flush()
        assert self.sender.phase is SendPhase.OPEN and self.receiver.phase is ReceivePhase.OPEN

    def flush(self) -> None:
        """Carry every message both ways until neither end has anything to say."""
        while self.to_receiver or self.to_sender:
            while self.to_receiver:
                self._at_receiver(_wire(self.to_receiver.popleft()))
            while self.to_sender:
                event = self.sender.receive(_wire(self.to_sender.popleft()))
                if event is not None:
                    self.sender_events.append(event)

    def _at_receiver(self, message: DataMessage) -> None:
        r = self.receiver
        event = r.receive(message)
        if isinstance(event, OfferReceived):
            tid = event.manifest.transfer_id
            state, index, offset = self.held.get(tid, (TransferState.NEW, 0, 0))
            self.to_receiver_reply(r.position(tid, state, index, offset))
            if state is TransferState.COMPLETE:
                self.to_receiver_reply(r.answer(tid, delivered=True))
            elif r.stage(tid) is ReceiveStage.FINISHING:
                self._deliver(event.manifest)
        elif isinstance(event, ChunkReceived):
            c = event.chunk
            self.spooled.setdefault(c.transfer_id, bytearray()).extend(c.data)
            self._unsynced += len(c.data)
            if event.complete or self._unsynced >= self._sync_bytes:
                self._unsynced = 0
                done = len(self.spooled[c.transfer_id])
                self.to_receiver_reply(r.ack(c.transfer_id, *self._place(c.transfer_id, done)))
            if event.complete:
                self._deliver_by_id(c.transfer_id)
        elif isinstance(event, EhrReceived):
            self.delivered[event.manifest.transfer_id] = event.body
            self.to_receiver_reply(r.answer(event.manifest.transfer_id, delivered=True))
        elif isinstance(event, PadAnnounced):
            self.pads.append(event.key_id)

    def to_receiver_reply(self, message: DataMessage) -> None:
        self.to_sender.append(message)

    def offered(self, manifest: Manifest) -> None:
        self.manifests[manifest.transfer_id] = manifest

    def _place(self, tid: str, done: int) -> tuple[int, int]:
        starts = self.manifests[tid].file_starts()
        index = max(i for i, s in enumerate(starts) if s <= done)
        return index, done - starts[index]

    def _deliver_by_id(self, tid: str) -> None:
        self._deliver(self.manifests[tid])

    def _deliver(self, manifest: Manifest) -> None:
        self.delivered[manifest.transfer_id] = bytes(self.spooled.get(manifest.transfer_id, b""))
        self.to_receiver_reply(self.receiver.answer(manifest.transfer_id, delivered=True))

    def send_study(
        self, manifest: Manifest, files: list[bytes], between: Callable[[], None] = lambda: None
    ) -> None:
        """Offer `manifest` and stream it as the sender's shell does: chunk after chunk inside the window,
        the receiver's answers carried whenever the window closes."""
        self.offered(manifest)
        tid = manifest.transfer_id
        self.to_receiver.append(self.sender.offer(manifest))
        self.flush()
        while (wanted := self.sender.next_chunk(tid)) is not None:
            if not self.sender.window_open(tid):
                self.flush()
                continue
            data = files[wanted.file_index][wanted.offset : wanted.offset + wanted.max_bytes]
            self.to_receiver.append(self.sender.chunk(tid, data))
            between()
        self.flush()

    def answers(self) -> dict[str, Answered]:
        return {e.transfer_id: e for e in self.sender_events if isinstance(e, Answered)}


# ---- a pair in memory -----------------------------------------------------------------------------------


def test_a_study_crosses_in_chunks_inside_the_window_and_is_answered_once() -> None:
    pair = Pair()
    pair.open()
    manifest, files = _manifest([0, 2500, 1000, 0, 1])
    pair.send_study(manifest, files)
    tid = manifest.transfer_id
    assert pair.delivered[tid] == b"".join(files)
    assert pair.answers() == {tid: Answered(transfer_id=tid, delivered=True, reason=None)}
    acks = [e for e in pair.sender_events if isinstance(e, Acknowledged)]
    assert len(acks) >= 2  # the window (2500 bytes) forced the sender to wait for acknowledgements
    assert pair.sender.stage(tid) is SendStage.IDLE and pair.receiver.stage(tid) is ReceiveStage.IDLE
    assert pair.sender.in_flight() == set()


def test_ehr_messages_go_whole_and_overtake_a_study_between_chunks() -> None:
    pair = Pair()
    pair.open()
    study, files = _manifest([4000])
    ehr = [_manifest([300], TransferKind.EHR) for _ in range(2)]
    pair.to_receiver.append(pair.sender.pad_key(str(uuid.uuid4())))
    pending = list(ehr)

    def overtake() -> None:
        if pending:
            manifest, (body,) = pending.pop(0)
            pair.to_receiver.append(pair.sender.ehr(manifest, body))

    pair.send_study(study, files, between=overtake)
    assert not pending and len(pair.pads) == 1
    assert pair.delivered[study.transfer_id] == files[0]
    for manifest, (body,) in ehr:
        assert pair.delivered[manifest.transfer_id] == body
    assert set(pair.answers()) == {study.transfer_id, *(m.transfer_id for m, _ in ehr)}
    assert all(a.delivered for a in pair.answers().values())


def test_a_transfer_resumes_where_the_receiver_holds_it_and_a_complete_one_sends_nothing() -> None:
    pair = Pair()
    pair.open()
    manifest, files = _manifest([1500, 1500])
    pair.held[manifest.transfer_id] = (TransferState.PARTIAL, 1, 500)
    pair.spooled[manifest.transfer_id] = bytearray(files[0] + files[1][:500])
    pair.send_study(manifest, files)
    assert pair.delivered[manifest.transfer_id] == b"".join(files)

    done, _ = _manifest([1000])
    pair.held[done.transfer_id] = (TransferState.COMPLETE, 1, 0)
    pair.offered(done)
    pair.to_receiver.append(pair.sender.offer(done))
    pair.flush()
    assert pair.sender.next_chunk(done.transfer_id) is None
    assert done.transfer_id not in pair.spooled
    assert pair.answers()[done.transfer_id].delivered


def test_a_refusal_reaches_the_sender_with_its_reason() -> None:
    pair = Pair()
    pair.open()
    manifest, (body,) = _manifest([10], TransferKind.EHR)
    event = pair.receiver.receive(_wire(pair.sender.ehr(manifest, body)))
    assert event == EhrReceived(manifest=manifest, body=body)
    reply = pair.receiver.answer(manifest.transfer_id, delivered=False, reason="not FHIR " * 100)
    assert isinstance(reply, Refused) and len(reply.reason) == 500
    assert pair.sender.receive(_wire(reply)) == Answered(
        transfer_id=manifest.transfer_id, delivered=False, reason=reply.reason
    )
    assert pair.sender.stage(manifest.transfer_id) is SendStage.IDLE


# ---- every state against every input --------------------------------------------------------------------

EHR, (EHR_BODY,) = _manifest([2 * CHUNK], TransferKind.EHR)
"""One transfer every input can name: two chunks long, and an EHR message (so it can also go whole)."""
TID = EHR.transfer_id


EK = bytes(MLKEM_ENCAPSULATION_KEY_BYTES)
"""Stands for an ML-KEM-768 encapsulation key: the machines check its size, never its content."""
CIPHERTEXT = bytes(MLKEM_CIPHERTEXT_BYTES)


def _sender_in(phase: SendPhase, stage: SendStage, *, hybrid: bool = False) -> SenderMachine:
    """A sender driven by real inputs to `phase`, with the transfer at `stage` (`hybrid`: its session
    offers an ML-KEM key, and passes through EXPECT_ACCEPT)."""
    ek = EK if hybrid else b""
    m = SenderMachine(
        facility=A, key_ids=[KEY], window_bytes=WINDOW, chunk_bytes=CHUNK, mlkem_encapsulation_key=ek
    )
    if phase is SendPhase.EXPECT_ACCEPT:
        return m
    if hybrid:
        m.receive_answer(Accept(mlkem_ciphertext=CIPHERTEXT))
    if phase is SendPhase.EXPECT_READY:
        return m
    m.receive(Ready())
    if stage is SendStage.EXPECT_POSITION:
        m.offer(EHR)
    elif stage is SendStage.STREAMING:
        m.offer(EHR)
        m.receive(Position(transfer_id=TID, state=TransferState.NEW, file_index=0, offset=0))
    elif stage is SendStage.EXPECT_OUTCOME:
        m.ehr(EHR, EHR_BODY)
    if phase is SendPhase.CLOSED:
        with pytest.raises(SessionClosed):
            m.receive(Ready())
    assert (m.phase, m.stage(TID)) == (phase, stage if phase is SendPhase.OPEN else SendStage.IDLE)
    return m


SEND_ACTIONS: dict[SendInput, Callable[[SenderMachine], object]] = {
    SendInput.ACCEPT: lambda m: m.receive_answer(Accept(mlkem_ciphertext=CIPHERTEXT)),
    SendInput.READY: lambda m: m.receive(Ready()),
    SendInput.POSITION: lambda m: m.receive(
        Position(transfer_id=TID, state=TransferState.NEW, file_index=0, offset=0)
    ),
    SendInput.ACK: lambda m: m.receive(Ack(transfer_id=TID, file_index=0, offset=0)),
    SendInput.DELIVERED: lambda m: m.receive(Delivered(transfer_id=TID, manifest_sha256=EHR.sha256())),
    SendInput.REFUSED: lambda m: m.receive(Refused(transfer_id=TID, reason="no")),
    SendInput.OFFER: lambda m: m.offer(EHR),
    SendInput.EHR: lambda m: m.ehr(EHR, EHR_BODY),
    SendInput.CHUNK: lambda m: m.chunk(TID, EHR_BODY[:CHUNK]),
    # Internal: the machine applies it itself after the last chunk, or a position with nothing to send.
    SendInput.ALL_SENT: lambda m: m._move(SendInput.ALL_SENT, TID, peer=False),
    SendInput.PAD: lambda m: m.pad_key(KEY),
}
SEND_FROM_PEER = {
    SendInput.ACCEPT,
    SendInput.READY,
    SendInput.POSITION,
    SendInput.ACK,
    SendInput.DELIVERED,
    SendInput.REFUSED,
}
SEND_SESSION_ONLY = {SendInput.ACCEPT, SendInput.READY, SendInput.PAD}


def test_every_sender_input_has_an_action() -> None:
    assert set(SEND_ACTIONS) == set(SendInput)


@pytest.mark.parametrize("what", list(SendInput), ids=lambda i: i.name)
@pytest.mark.parametrize(
    ("phase", "stage"),
    [
        (SendPhase.EXPECT_ACCEPT, SendStage.IDLE),
        (SendPhase.EXPECT_READY, SendStage.IDLE),
        (SendPhase.CLOSED, SendStage.IDLE),
    ]
    + [(SendPhase.OPEN, s) for s in SendStage],
    ids=lambda v: v.name,
)
def test_every_sender_state_and_input_moves_by_the_table_or_ends_the_session(
    phase: SendPhase, stage: SendStage, what: SendInput
) -> None:
    # A hybrid session's sender for its own phase and for a ciphertext (elsewhere one refuses it anyway).
    m = _sender_in(phase, stage, hybrid=phase is SendPhase.EXPECT_ACCEPT or what is SendInput.ACCEPT)
    next_phase = SEND_SESSION.get((phase, what))
    next_stage = stage if what in SEND_SESSION_ONLY else SEND_TRANSFER.get((stage, what))
    if next_phase is None or next_stage is None:
        with pytest.raises(SessionClosed if what in SEND_FROM_PEER else SessionMisuse):
            SEND_ACTIONS[what](m)
        assert m.phase is SendPhase.CLOSED and m.stage(TID) is SendStage.IDLE
    else:
        SEND_ACTIONS[what](m)
        assert (m.phase, m.stage(TID)) == (next_phase, next_stage)


def _open(*, hybrid: bool = False) -> Open:
    return Open(
        version=DATA_VERSION, facility=A, key_ids=(KEY,), mlkem_encapsulation_key=EK if hybrid else b""
    )


def _receiver_in(phase: ReceivePhase, stage: ReceiveStage, *, hybrid: bool = False) -> ReceiverMachine:
    """A receiver driven by real inputs to `phase`, with the transfer at `stage` (`hybrid`: pq_hybrid is on
    for the sender, whose Open offers an ML-KEM key; the session passes through AWAIT_ENCAPSULATION)."""
    m = ReceiverMachine(facility=B, peer=A, hybrid=hybrid)
    if phase is ReceivePhase.EXPECT_OPEN:
        return m
    m.receive_open(_open(hybrid=hybrid))
    if phase is ReceivePhase.AWAIT_ENCAPSULATION:
        return m
    if hybrid:
        m.accept(CIPHERTEXT)
    if phase is ReceivePhase.AWAIT_KEY:
        return m
    m.keyed()
    if stage in (ReceiveStage.OFFERED, ReceiveStage.RECEIVING):
        m.receive(Offer(transfer_id=TID, manifest=EHR.to_json()))
    if stage is ReceiveStage.RECEIVING:
        m.position(TID, TransferState.NEW, 0, 0)
    if stage is ReceiveStage.FINISHING:
        m.receive(EhrMessage(transfer_id=TID, manifest=EHR.to_json(), body=EHR_BODY))
    if phase is ReceivePhase.CLOSED:
        with pytest.raises(Rejected):
            m.receive_open(Open(version=DATA_VERSION, facility=A, key_ids=(KEY,)))
    assert (m.phase, m.stage(TID)) == (phase, stage if phase is ReceivePhase.OPEN else ReceiveStage.IDLE)
    return m


RECEIVE_ACTIONS: dict[ReceiveInput, Callable[[ReceiverMachine], object]] = {
    ReceiveInput.OPEN: lambda m: m.receive_open(_open()),
    ReceiveInput.HYBRID_OPEN: lambda m: m.receive_open(_open(hybrid=True)),
    ReceiveInput.ACCEPT: lambda m: m.accept(CIPHERTEXT),
    ReceiveInput.OFFER: lambda m: m.receive(Offer(transfer_id=TID, manifest=EHR.to_json())),
    ReceiveInput.CHUNK: lambda m: m.receive(
        Chunk(transfer_id=TID, file_index=0, offset=0, data=EHR_BODY[:CHUNK])
    ),
    ReceiveInput.EHR: lambda m: m.receive(EhrMessage(transfer_id=TID, manifest=EHR.to_json(), body=EHR_BODY)),
    ReceiveInput.PAD: lambda m: m.receive(PadKey(key_id=KEY)),
    ReceiveInput.KEYED: lambda m: m.keyed(),
    ReceiveInput.POSITION: lambda m: m.position(TID, TransferState.NEW, 0, 0),
    # Internal: the machine applies it itself after the last chunk, or a position that holds every byte.
    ReceiveInput.ALL_RECEIVED: lambda m: m._move(ReceiveInput.ALL_RECEIVED, TID, peer=False),
    ReceiveInput.ACK: lambda m: m.ack(TID, 0, 0),
    ReceiveInput.DELIVERED: lambda m: m.answer(TID, delivered=True),
    ReceiveInput.REFUSED: lambda m: m.answer(TID, delivered=False, reason="no"),
}
RECEIVE_FROM_PEER = {
    ReceiveInput.OPEN,
    ReceiveInput.HYBRID_OPEN,
    ReceiveInput.OFFER,
    ReceiveInput.CHUNK,
    ReceiveInput.EHR,
    ReceiveInput.PAD,
}
RECEIVE_SESSION_ONLY = {
    ReceiveInput.OPEN,
    ReceiveInput.HYBRID_OPEN,
    ReceiveInput.ACCEPT,
    ReceiveInput.KEYED,
    ReceiveInput.PAD,
}


def test_every_receiver_input_has_an_action() -> None:
    assert set(RECEIVE_ACTIONS) == set(ReceiveInput)


@pytest.mark.parametrize("what", list(ReceiveInput), ids=lambda i: i.name)
@pytest.mark.parametrize(
    ("phase", "stage"),
    [(p, ReceiveStage.IDLE) for p in ReceivePhase if p is not ReceivePhase.OPEN]
    + [(ReceivePhase.OPEN, s) for s in ReceiveStage],
    ids=lambda v: v.name,
)
def test_every_receiver_state_and_input_moves_by_the_table_or_ends_the_session(
    phase: ReceivePhase, stage: ReceiveStage, what: ReceiveInput
) -> None:
    # A receiver with pq_hybrid on for its own phase and for a hybrid Open; off otherwise (a mismatch is
    # refused by its own rule, which test_mismatched_pq_hybrid_settings_are_refused_at_either_end checks).
    hybrid = phase is ReceivePhase.AWAIT_ENCAPSULATION or what is ReceiveInput.HYBRID_OPEN
    m = _receiver_in(phase, stage, hybrid=hybrid)
    next_phase = RECEIVE_SESSION.get((phase, what))
    next_stage = stage if what in RECEIVE_SESSION_ONLY else RECEIVE_TRANSFER.get((stage, what))
    if next_phase is None or next_stage is None:
        with pytest.raises(Rejected if what in RECEIVE_FROM_PEER else SessionMisuse):
            RECEIVE_ACTIONS[what](m)
        assert m.phase is ReceivePhase.CLOSED and m.stage(TID) is ReceiveStage.IDLE
    else:
        RECEIVE_ACTIONS[what](m)
        assert (m.phase, m.stage(TID)) == (next_phase, next_stage)


# ---- replayed, reordered, tampered ----------------------------------------------------------------------


def _streaming_pair() -> tuple[Pair, Manifest, list[Chunk]]:
    """A pair whose sender has made (not yet carried) the three chunks of a 2500-byte study."""
    pair = Pair()
    pair.open()
    manifest, files = _manifest([2500])
    pair.offered(manifest)
    pair.to_receiver.append(pair.sender.offer(manifest))
    pair.flush()
    chunks = []
    while (wanted := pair.sender.next_chunk(manifest.transfer_id)) is not None:
        data = files[0][wanted.offset : wanted.offset + wanted.max_bytes]
        chunks.append(pair.sender.chunk(manifest.transfer_id, data))
    assert len(chunks) == 3
    return pair, manifest, chunks


@pytest.mark.parametrize(
    ("attack", "problem"),
    [
        ("replay", "expected file 0 offset 1000"),
        ("reorder", "expected file 0 offset 0"),
        ("tamper offset", "expected file 0 offset 1000"),
        ("tamper transfer", "not offered on this connection"),
        ("tamper length", "overruns"),
    ],
)
def test_a_replayed_reordered_or_tampered_chunk_ends_the_session(attack: str, problem: str) -> None:
    pair, manifest, (first, second, third) = _streaming_pair()
    tid = manifest.transfer_id
    sequence = {
        "replay": [first, first],
        "reorder": [second, first],
        "tamper offset": [first, Chunk(transfer_id=tid, file_index=0, offset=1001, data=second.data)],
        "tamper transfer": [Chunk(transfer_id=str(uuid.uuid4()), file_index=0, offset=0, data=first.data)],
        "tamper length": [first, second, Chunk(transfer_id=tid, file_index=0, offset=2000, data=b"x" * 501)],
    }[attack]
    with pytest.raises(Rejected, match=problem) as info:
        for chunk in sequence:
            pair.receiver.receive(_wire(chunk))
    assert info.value.reason == "protocol"
    assert pair.receiver.phase is ReceivePhase.CLOSED
    with pytest.raises(Rejected):  # nothing more is taken from this connection
        pair.receiver.receive(_wire(third))


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        ("replayed delivered", "not in flight"),
        ("another manifest", "another manifest"),
        ("ack beyond the sent", "only 2500 were sent"),
        ("ack of a file that is not", "ack for file 2 of 1 files"),
        ("impossible position", "impossible position"),
        ("second ready", "not expected in OPEN"),
        ("offer from the receiver", "a receiver does not send Offer"),
    ],
)
def test_a_replayed_or_tampered_answer_ends_the_senders_session(answer: str, problem: str) -> None:
    pair, manifest, _ = _streaming_pair()
    tid = manifest.transfer_id
    other, _ = _manifest([10])
    if answer == "impossible position":
        pair.sender.offer(other)
    answers: dict[str, DataMessage] = {
        "replayed delivered": Delivered(transfer_id=other.transfer_id, manifest_sha256=other.sha256()),
        "another manifest": Delivered(transfer_id=tid, manifest_sha256=other.sha256()),
        "ack beyond the sent": Ack(transfer_id=tid, file_index=0, offset=2501),
        "ack of a file that is not": Ack(transfer_id=tid, file_index=2, offset=0),
        "impossible position": Position(
            transfer_id=other.transfer_id, state=TransferState.PARTIAL, file_index=0, offset=11
        ),
        "second ready": Ready(),
        "offer from the receiver": Offer(transfer_id=tid, manifest=manifest.to_json()),
    }
    with pytest.raises(SessionClosed, match=problem):
        pair.sender.receive(_wire(answers[answer]))
    assert pair.sender.phase is SendPhase.CLOSED
    assert pair.sender.in_flight() == set()


def test_the_receiver_refuses_another_identity_another_route_and_pads_carrying_anything_but_ehr() -> None:
    m = ReceiverMachine(facility=B, peer=A)
    with pytest.raises(Rejected, match="the certificate") as info:
        m.receive_open(Open(version=DATA_VERSION, facility="hospital-c", key_ids=(KEY,)))
    assert info.value.reason == "identity"

    m = _receiver_in(ReceivePhase.OPEN, ReceiveStage.IDLE)
    elsewhere = EHR.to_json().replace(B.encode(), b"hospital-c")
    with pytest.raises(Rejected, match="the connection is hospital-a -> hospital-b"):
        m.receive(Offer(transfer_id=TID, manifest=elsewhere))

    m = _receiver_in(ReceivePhase.OPEN, ReceiveStage.IDLE)
    with pytest.raises(Rejected, match="carries only EHR messages"):
        m.receive(Offer(transfer_id=TID, manifest=EHR.to_json()), one_time_pad=True)

    m = _receiver_in(ReceivePhase.OPEN, ReceiveStage.IDLE)
    study, _ = _manifest([5])
    with pytest.raises(Rejected, match="another transfer or kind"):
        m.receive(EhrMessage(transfer_id=study.transfer_id, manifest=study.to_json(), body=b"x"))


def test_the_sender_keeps_inside_its_window_and_its_files() -> None:
    sender = _sender_in(SendPhase.OPEN, SendStage.STREAMING)
    with pytest.raises(SessionMisuse, match="a chunk of 1001 bytes"):
        sender.chunk(TID, EHR_BODY[: CHUNK + 1])
    narrow = SenderMachine(facility=A, key_ids=[KEY], window_bytes=CHUNK - 1, chunk_bytes=CHUNK)
    narrow.receive(Ready())
    narrow.offer(EHR)
    narrow.receive(Position(transfer_id=TID, state=TransferState.NEW, file_index=0, offset=0))
    narrow.chunk(TID, EHR_BODY[:CHUNK])
    assert not narrow.window_open(TID)
    with pytest.raises(SessionMisuse, match="window closed"):
        narrow.chunk(TID, EHR_BODY[CHUNK:])


def test_typed_messages_survive_the_protobuf_conversion_and_bad_ones_are_refused() -> None:
    tid = str(uuid.uuid4())
    every: list[DataMessage] = [
        Ready(),
        Offer(transfer_id=tid, manifest=b"{}"),
        Position(transfer_id=tid, state=TransferState.PARTIAL, file_index=3, offset=2**40),
        Chunk(transfer_id=tid, file_index=1, offset=7, data=b"data"),
        Ack(transfer_id=tid, file_index=1, offset=11),
        Delivered(transfer_id=tid, manifest_sha256="ab" * 32),
        Refused(transfer_id=tid, reason="bad"),
        EhrMessage(transfer_id=tid, manifest=b"{}", body=b"body"),
        PadKey(key_id=KEY),
    ]
    assert [_wire(m) for m in every] == every
    with pytest.raises(FrameError, match="not a UUID"):
        Ack(transfer_id="not-a-uuid", file_index=0, offset=0)


# ---- the post-quantum hybrid ----------------------------------------------------------------------------


def _carried_open(sender: SenderMachine) -> Open:
    return dm.decode_open(dm.encode_open(sender.opening()))


def _carried_answer(answer: Accept | SessionRefusal) -> Accept | SessionRefusal:
    return dm.decode_answer(dm.encode_answer(answer))


def test_a_hybrid_session_carries_the_ciphertext_before_ready_and_then_transfers() -> None:
    pair = Pair()
    pair.sender = SenderMachine(
        facility=A, key_ids=[KEY], window_bytes=WINDOW, chunk_bytes=CHUNK, mlkem_encapsulation_key=EK
    )
    pair.receiver = ReceiverMachine(facility=B, peer=A, hybrid=True)
    opening = _carried_open(pair.sender)
    assert opening.hybrid and opening.mlkem_encapsulation_key == EK
    assert pair.receiver.receive_open(opening) == (KEY,)
    assert pair.receiver.phase is ReceivePhase.AWAIT_ENCAPSULATION
    with pytest.raises(SessionMisuse):  # the Ready may not overtake the ciphertext
        ReceiverMachine(facility=B, peer=A, hybrid=True).keyed()
    ciphertext = bytes(range(256)) * 4 + bytes(MLKEM_CIPHERTEXT_BYTES - 1024)
    assert pair.sender.receive_answer(_carried_answer(pair.receiver.accept(ciphertext))) == ciphertext
    assert pair.sender.phase is SendPhase.EXPECT_READY
    pair.to_sender.append(pair.receiver.keyed())
    pair.flush()
    assert pair.sender.phase is SendPhase.OPEN and pair.receiver.phase is ReceivePhase.OPEN
    manifest, files = _manifest([2500])
    pair.send_study(manifest, files)
    assert pair.delivered[manifest.transfer_id] == files[0]


@pytest.mark.parametrize(("sender_hybrid", "receiver_hybrid"), [(True, False), (False, True)])
def test_mismatched_pq_hybrid_settings_are_refused_at_either_end(
    sender_hybrid: bool, receiver_hybrid: bool
) -> None:
    sender = _sender_in(
        SendPhase.EXPECT_ACCEPT if sender_hybrid else SendPhase.EXPECT_READY,
        SendStage.IDLE,
        hybrid=sender_hybrid,
    )
    receiver = ReceiverMachine(facility=B, peer=A, hybrid=receiver_hybrid)
    with pytest.raises(Rejected, match="both ends' pq_hybrid must agree") as info:
        receiver.receive_open(_carried_open(sender))
    assert info.value.reason == "pq_hybrid_mismatch" and receiver.phase is ReceivePhase.CLOSED
    # The receiver's shell sends the reason plain; the sender ends its session with it.
    with pytest.raises(SessionClosed, match=r"the receiver refused the session: .*must agree"):
        sender.receive_answer(_carried_answer(SessionRefusal(reason=info.value.message)))
    assert sender.phase is SendPhase.CLOSED


def test_a_sender_never_falls_back_from_the_hybrid_or_takes_a_ciphertext_it_did_not_ask_for() -> None:
    # A receiver that left the hybrid out (an older one that ignores the new field, or a stripped Open)
    # answers at once with a sealed frame: the hybrid sender ends the session before opening it.
    hybrid = _sender_in(SendPhase.EXPECT_ACCEPT, SendStage.IDLE, hybrid=True)
    with pytest.raises(SessionClosed, match="answered without the ML-KEM-768 hybrid"):
        hybrid.answered_sealed()
    assert hybrid.phase is SendPhase.CLOSED
    plain = _sender_in(SendPhase.EXPECT_READY, SendStage.IDLE)
    plain.answered_sealed()  # the usual first answer
    assert plain.phase is SendPhase.EXPECT_READY
    with pytest.raises(SessionClosed, match="pq_hybrid is off for it here"):
        plain.receive_answer(Accept(mlkem_ciphertext=CIPHERTEXT))
    assert plain.phase is SendPhase.CLOSED


def test_the_opening_messages_survive_the_protobuf_conversion_and_bad_ones_are_refused() -> None:
    assert _carried_open(SenderMachine(facility=A, key_ids=[KEY])) == _open()
    assert _carried_answer(Accept(mlkem_ciphertext=CIPHERTEXT)) == Accept(mlkem_ciphertext=CIPHERTEXT)
    assert _carried_answer(SessionRefusal(reason="r" * 900)) == SessionRefusal(reason="r" * 500)
    with pytest.raises(FrameError, match="encapsulation key of 1183 bytes"):
        dm.decode_open(dm.encode_open(_open()) + bytes([0x22, 0x9F, 0x09]) + bytes(1183))
    with pytest.raises(FrameError, match="ciphertext of 1087 bytes"):
        dm.decode_answer(bytes([0x0A, 0xBF, 0x08]) + bytes(1087))
    with pytest.raises(FrameError, match="either an ML-KEM ciphertext or a refusal"):
        dm.decode_answer(b"")
    both = dm.encode_answer(Accept(mlkem_ciphertext=CIPHERTEXT)) + dm.encode_answer(
        SessionRefusal(reason="x")
    )
    with pytest.raises(FrameError, match="either an ML-KEM ciphertext or a refusal"):
        dm.decode_answer(both)
