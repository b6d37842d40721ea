"""The receiving end of one data-plane connection: the asyncio shell around
``receive_machine.ReceiverMachine``. It fetches the session's QKD key from our pool, then opens every frame
(AEAD strictly in order; a one-time-pad EHR frame whose key is fetched by its IDs; or one cut from a
session pad key the sender announced, ``pads``), spools chunks, acknowledges what is fsynced, and delivers
finished transfers exactly once.

A frame that fails to open, or a message out of place (the machine judges), ends the connection with a
logged, audited reason: nothing after it is trusted, and nothing unauthenticated was ever written. The
sender reconnects with a fresh key and resumes from the last acknowledged byte.

Durability order, for every transfer: a chunk is acknowledged only after the spool holding it is fsynced
and the inbox record says so; "delivered" is sent only after the transfer is stored at rest and its record
committed (an EHR message: its key in the key store, its file fsynced, then one commit), and the audit
callback runs after that.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from qlinkmed.qcore.errors import DecodeError
from qlinkmed.qlinkd.content import FORM_AEAD, ContentInfo, qotp_at_rest
from qlinkmed.qlinkd.dataplane import wire as dm
from qlinkmed.qlinkd.dataplane.events import DataMessage, SessionRefusal, TransferState
from qlinkmed.qlinkd.dataplane.inbox import Inbox, SyncPoint, TransferRefused, at_rest_key
from qlinkmed.qlinkd.dataplane.keys import KeySource, SessionKeyed, traffic_keys
from qlinkmed.qlinkd.dataplane.manifest import Manifest
from qlinkmed.qlinkd.dataplane.pads import ReceiverPads
from qlinkmed.qlinkd.dataplane.receive_machine import (
    ChunkReceived,
    EhrReceived,
    OfferReceived,
    PadAnnounced,
    ReceiverEvent,
    ReceiverMachine,
)
from qlinkmed.qlinkd.dataplane.records import Incoming
from qlinkmed.qlinkd.dataplane.tasks import group_outcome
from qlinkmed.qlinkd.errors import (
    FrameError,
    InsufficientKey,
    IntegrityError,
    KeyNotFound,
    KmeError,
    Rejected,
    SessionMisuse,
    TransferError,
)
from qlinkmed.qlinkd.link.framing import read_frame
from qlinkmed.qlinkd.pool.values import DeliveredKey
from qlinkmed.qlinkd.seal import Opener, Sealer
from qlinkmed.qlinkd.seal.constants import (
    AEAD_VERSION,
    MAX_SEALED_FRAME_BYTES,
    OTP_RANGE_VERSION,
    OTP_VERSION,
)
from qlinkmed.qlinkd.seal.hybrid import KemSecret, respond
from qlinkmed.qlinkd.seal.otp import open_otp, open_otp_range, peek_otp_key_ids, peek_otp_range

__all__ = ["KEY_WAIT_S", "SYNC_BYTES", "ReceiverContext", "ReceiverSession", "Rejected"]

log = logging.getLogger("qlink.data")

SYNC_BYTES = 16 << 20
"""Spool bytes between fsyncs (and acknowledgements): large enough to stream at disk speed, well inside
the sender's window."""
KEY_WAIT_S = 10.0
MAX_OPEN_FRAME_BYTES = 4096
"""The unsealed opening frame: a facility name, at most MAX_SESSION_KEY_IDS key IDs and an ML-KEM-768
encapsulation key (about 1,900 bytes at most)."""
_STATE = {
    None: TransferState.NEW,
    Incoming.RECEIVING: TransferState.PARTIAL,
    Incoming.DELIVERED: TransferState.COMPLETE,
    Incoming.REFUSED: TransferState.COMPLETE,
}


def _log_drop_failure(done: asyncio.Future[None]) -> None:
    if not done.cancelled() and done.exception() is not None:
        log.warning("delivered transfer's spool not removed (swept at the next start): %s", done.exception())


@dataclass(slots=True)
class ReceiverContext:
    facility: str
    keys: KeySource
    inbox: Inbox
    on_delivered: Callable[[str, Manifest, str, float], None]
    """(transfer, manifest, at-rest form, when its inbox record was committed: epoch seconds)."""
    on_refused: Callable[[str, str], None]
    on_bytes: Callable[[int], None] = field(default=lambda n: None)
    finishing: dict[str, asyncio.Task[tuple[bool, str] | None]] = field(default_factory=dict)
    """Transfers being stored at rest, shared by every connection of the daemon."""
    work: asyncio.TaskGroup | None = None
    """The daemon's task group for work that outlives a connection (storing a finished transfer); None:
    the connection's own group, which then waits for that work when it ends cleanly."""
    hybrid: bool = False
    """``pq_hybrid`` is on for the peer: its Open must offer an ML-KEM-768 key, and the traffic keys mix in
    the secret encapsulated to it."""
    on_session: Callable[[SessionKeyed], None] = field(default=lambda keyed: None)
    """A session's traffic keys are derived and its Ready sent."""
    on_ehr_at_rest: Callable[[str, str, InsufficientKey | None], None] = field(
        default=lambda tid, form, short: None
    )
    """(transfer, at-rest form, why the pool could not pay for a pad: None when it did) for every EHR
    message stored with its key in the key store."""


@dataclass(frozen=True, slots=True)
class _Keys:
    material: bytes
    """The session's QKD key: each delivered transfer's at-rest key derives from it."""
    opener: Opener
    sealer: Sealer


class ReceiverSession:
    def __init__(
        self,
        ctx: ReceiverContext,
        peer: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.ctx = ctx
        self.peer = peer
        self._reader = reader
        self._writer = writer
        self._machine = ReceiverMachine(facility=ctx.facility, peer=peer, hybrid=ctx.hybrid)
        self._keys: _Keys | None = None
        self._group: asyncio.TaskGroup | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        """This connection's acknowledgements, reports and pad fetches, which end with it."""
        self._acknowledging: asyncio.Task[None] | None = None
        """The latest sync-then-acknowledge; each waits for the one before, so acks leave in order."""
        self._pads = ReceiverPads(spawn=self._spawn)

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                try:
                    await self._serve()
                finally:
                    self._pads.close()
                    for task in list(self._tasks):
                        task.cancel()
        except BaseExceptionGroup as errors:
            raise group_outcome(errors) from None
        finally:
            self._group = None
            self.ctx.inbox.release(self)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        if self._group is None:
            coroutine.close()
            raise SessionMisuse("a task started outside the session")
        task = self._group.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _serve(self) -> None:
        frame = await read_frame(self._reader, MAX_OPEN_FRAME_BYTES)
        if frame is None:
            return
        opening = dm.decode_open(frame)
        try:
            key_ids = self._machine.receive_open(opening)
        except Rejected as exc:
            # Refused before any key is fetched; the sender is told why, so both ends log the reason.
            self._write(dm.encode_answer(SessionRefusal(reason=exc.message)))
            await self._writer.drain()
            raise
        kem: KemSecret | None = None
        if opening.hybrid:
            try:
                ciphertext, kem = respond(opening.mlkem_encapsulation_key)
            except DecodeError as exc:
                raise Rejected("malformed", str(exc)) from None
            # Sent before the key is fetched: the sender decapsulates while this end waits for the notice.
            self._write(dm.encode_answer(self._machine.accept(ciphertext)))
        keys = await self._fetch(list(key_ids))
        material = b"".join(k.material for k in keys)
        sealer, opener = traffic_keys(material, key_ids, master=False, kem=kem, now=time.monotonic())
        self._keys = _Keys(material=material, opener=opener, sealer=sealer)
        self._send(self._machine.keyed())
        self.ctx.on_session(
            SessionKeyed(peer=self.peer, role="receiver", key_ids=tuple(key_ids), pq_hybrid=kem is not None)
        )
        while True:
            frame = await read_frame(self._reader, MAX_SEALED_FRAME_BYTES)
            if frame is None:
                return
            message, one_time_pad = await self._open(frame)
            await self._handle(self._machine.receive(message, one_time_pad=one_time_pad))

    def _session_keys(self) -> _Keys:
        if self._keys is None:
            raise SessionMisuse("the session's keys are not derived yet")
        return self._keys

    async def _fetch(self, key_ids: list[str]) -> list[DeliveredKey]:
        try:
            return await self.ctx.keys.fetch(self.peer, key_ids, KEY_WAIT_S)
        except KeyNotFound:
            raise Rejected("key_unknown", f"key {key_ids[0]} never arrived (or was used already)") from None
        except KmeError as exc:
            # An external KME (key_source etsi014) refused or is away: nothing is opened without the key.
            raise Rejected("kme", f"key {key_ids[0]} not fetched: {exc}") from None

    async def _fetch_one(self, key_id: str) -> DeliveredKey:
        return (await self._fetch([key_id]))[0]

    async def _open(self, frame: bytes) -> tuple[DataMessage, bool]:
        """The message a frame carries, and whether it came by one-time pad."""
        try:
            if frame[:1] == bytes([AEAD_VERSION]):
                opened = self._session_keys().opener.open(frame, now=time.monotonic())
                return dm.decode_message(opened), False
            if frame[:1] == bytes([OTP_RANGE_VERSION]):
                where = peek_otp_range(frame)
                pad = await self._pads.cut(str(where.key_id), where.offset, where.size)
                return dm.decode_message(open_otp_range(frame, pad)), True
            if frame[:1] == bytes([OTP_VERSION]):
                ids = [str(k) for k in peek_otp_key_ids(frame)]
                keys = await self._fetch(ids)
                return dm.decode_message(open_otp(frame, b"".join(k.material for k in keys))), True
        except IntegrityError as exc:
            raise Rejected(getattr(exc.reason, "value", "integrity"), exc.message) from None
        except FrameError as exc:
            raise Rejected("malformed", str(exc)) from None
        raise Rejected("version", f"frame of unknown version {frame[:1].hex() or 'empty'}")

    def _send(self, message: DataMessage) -> None:
        self._write(self._session_keys().sealer.seal(dm.encode_message(message), now=time.monotonic()))

    def _write(self, frame: bytes) -> None:
        self._writer.writelines([len(frame).to_bytes(4, "big"), frame])

    async def _handle(self, event: ReceiverEvent) -> None:
        if isinstance(event, ChunkReceived):
            self._chunk(event)
        elif isinstance(event, OfferReceived):
            await self._offer(event.manifest)
        elif isinstance(event, EhrReceived):
            await self._ehr(event.manifest, event.body)
        elif isinstance(event, PadAnnounced):
            try:
                self._pads.announce(event.key_id, self._fetch_one(event.key_id))
            except IntegrityError as exc:
                raise Rejected(getattr(exc.reason, "value", "integrity"), exc.message) from None

    def _chunk(self, event: ChunkReceived) -> None:
        c = event.chunk
        inbox = self.ctx.inbox
        try:
            inbox.write_chunk(c.transfer_id, c.file_index, c.offset, c.data)
        except TransferError as exc:
            raise Rejected("protocol", exc.message) from None
        self.ctx.on_bytes(len(c.data))
        if event.complete or inbox.unsynced(c.transfer_id) >= SYNC_BYTES:
            # The sync runs in a thread while the next chunks are written; its ack follows it.
            point = inbox.sync_point(c.transfer_id)
            self._acknowledging = self._spawn(self._acknowledge(point, self._acknowledging))

    async def _acknowledge(self, point: SyncPoint, previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            await previous
        inbox = self.ctx.inbox
        try:
            await asyncio.wrap_future(point.durable)
            inbox.record_durable(point)
        except Exception as exc:
            # Nothing from the failed sync on is acknowledged. The error ends the connection at once, so
            # the sender resumes from the last acknowledged byte now, not after its reply timeout.
            log.warning("spool sync or acknowledgement for %s failed: %s; closing", self.peer, exc)
            raise
        self._send(self._machine.ack(point.transfer_id, point.file_index, point.offset))
        await self._writer.drain()
        if point.complete:
            self._start_finish(inbox.manifest(point.transfer_id))

    async def _offer(self, manifest: Manifest) -> None:
        tid = manifest.transfer_id
        try:
            where = self.ctx.inbox.offer(manifest, self.peer, owner=self)
        except TransferError as exc:
            raise Rejected("protocol", exc.message) from None
        self._send(self._machine.position(tid, _STATE[where.state], where.file_index, where.offset))
        if where.state is Incoming.DELIVERED:
            self._send(self._machine.answer(tid, delivered=True))
        elif where.state is Incoming.REFUSED:
            self._send(self._machine.answer(tid, delivered=False, reason=where.reason or "refused"))
        elif where.file_index >= len(manifest.files):
            # Every byte arrived before a crash stopped the delivery: finish it now.
            self._start_finish(manifest)
        await self._writer.drain()

    def _start_finish(self, manifest: Manifest) -> None:
        """Store the finished transfer at rest and deliver it. The work belongs to the daemon, not to this
        connection: it survives the connection's end, and a later session that finds it under way waits
        for it instead of starting it again."""
        tid = manifest.transfer_id
        task = self.ctx.finishing.get(tid)
        if task is None:
            work = self._finish(manifest, at_rest_key(self._session_keys().material, tid))
            if self.ctx.work is not None:
                task = self.ctx.work.create_task(work)
            elif self._group is not None:
                task = self._group.create_task(work)
            else:
                work.close()
                raise SessionMisuse("a transfer finished outside the session")
            self.ctx.finishing[tid] = task
            task.add_done_callback(lambda _: self.ctx.finishing.pop(tid, None))
        self._spawn(self._report(manifest, task))

    async def _finish(self, manifest: Manifest, key: bytes) -> tuple[bool, str] | None:
        """(delivered, at-rest forms or the refusal's reason); None if storing failed (logged here, never
        raised: the work runs in the daemon's task group) and the sender will offer it again."""
        tid = manifest.transfer_id
        inbox = self.ctx.inbox
        try:
            try:
                forms = await asyncio.to_thread(inbox.store_at_rest, manifest, key)
            except TransferRefused as exc:
                inbox.refuse(tid, exc.message)
                self.ctx.on_refused(tid, exc.message)
                return False, exc.message
            inbox.delivered(tid, key=key, forms=forms)
            self.ctx.on_delivered(tid, manifest, forms, time.time())
        except Exception:
            log.exception("storing transfer %s failed; the sender will offer it again", tid)
            return None
        # Freeing a large spool's blocks takes a while: off the loop, and the sender need not wait for it.
        # (If it fails or a crash comes first, the next start sweeps the spool.)
        dropping = asyncio.get_running_loop().run_in_executor(None, inbox.drop_spool, tid)
        dropping.add_done_callback(_log_drop_failure)
        return True, forms

    async def _report(self, manifest: Manifest, task: asyncio.Task[tuple[bool, str] | None]) -> None:
        outcome = await asyncio.shield(task)
        if outcome is None:
            return
        delivered, detail = outcome
        self._send(self._machine.answer(manifest.transfer_id, delivered=delivered, reason=detail))
        await self._writer.drain()

    async def _ehr(self, manifest: Manifest, body: bytes) -> None:
        """A whole EHR message from a one-time-pad frame: checked, stored at rest (`_store_ehr`) and
        recorded in one transaction (the latency-bound path: no spool)."""
        inbox = self.ctx.inbox
        tid = manifest.transfer_id
        record = inbox.record(tid)
        if record is not None and record.state is Incoming.DELIVERED:
            self._send(self._machine.answer(tid, delivered=True))
        elif record is not None and record.state is Incoming.REFUSED:
            self._send(self._machine.answer(tid, delivered=False, reason=record.reason or "refused"))
        else:
            key = at_rest_key(self._session_keys().material, tid)
            try:
                if inbox.rest_keys is None:
                    blob, forms = await asyncio.to_thread(inbox.seal_ehr, manifest, body, key)
                else:
                    info = await asyncio.to_thread(inbox.check_ehr, manifest, body)
            except TransferRefused as exc:
                inbox.refuse_ehr(manifest, exc.message)
                self.ctx.on_refused(tid, exc.message)
                self._send(self._machine.answer(tid, delivered=False, reason=exc.message))
            else:
                if inbox.rest_keys is None:
                    stored_at = inbox.deliver_ehr(manifest, blob=blob, key=key, forms=forms)
                else:
                    forms = await self._store_ehr(manifest, body, info, key)
                    stored_at = inbox.deliver_ehr(manifest, blob=None, key=None, forms=forms)
                # Recorded before the answer goes: if the answer cannot be sent (the connection drops, the
                # traffic key ages out), the sender sends again and hears "delivered" from the inbox's
                # record, and this was the only moment to audit the arrival.
                self.ctx.on_delivered(tid, manifest, forms, stored_at)
                self._send(self._machine.answer(tid, delivered=True))
        await self._writer.drain()

    async def _store_ehr(self, manifest: Manifest, body: bytes, info: ContentInfo, aead_key: bytes) -> str:
        """Write the message's at-rest file under a one-time pad cut from the pool, or under AES-256-GCM
        (`aead_key`) when the pool cannot pay for the pad: a message is never refused or held back for
        lack of pad key. Its key goes to the key store first, the file after (durable), the record last.
        Returns the form."""
        inbox = self.ctx.inbox
        keys = inbox.rest_keys
        if keys is None:
            raise SessionMisuse("no key store for EHR messages at rest")
        tid = manifest.transfer_id
        short: InsufficientKey | None = None
        held = keys.held(tid)  # a key kept before a crash, the message sent again: its file is rewritten
        if held is not None:
            form, key = held
        else:
            try:
                key = keys.cut_pad(self.peer, tid, len(body))
                form = qotp_at_rest.FORM_QOTPE
            except InsufficientKey as exc:
                short = exc
                form, key = FORM_AEAD, keys.keep(self.peer, tid, FORM_AEAD, aead_key)
        await asyncio.to_thread(inbox.store_ehr, manifest, body, info, form=form, key=key)
        self.ctx.on_ehr_at_rest(tid, form, short)
        return form
