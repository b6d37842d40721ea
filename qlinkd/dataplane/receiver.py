"""The receiving end of one data-plane connection: check who dials, fetch the session's QKD key from our
pool, then open every frame (AEAD strictly in order; a one-time-pad EHR frame whose key is fetched by its
IDs; or one cut from a session pad key the sender announced, ``pads``), spool chunks, acknowledge what
is fsynced, and deliver finished transfers exactly once.

A frame that fails to open, or a message out of place, ends the connection with a logged, audited reason:
nothing after it is trusted, and nothing unauthenticated was ever written. The sender reconnects with a
fresh key and resumes from the last acknowledged byte.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from qlinkmed.proto import qlinkmed_wire_pb2 as pb
from qlinkmed.qlinkd.dataplane import messages as dm
from qlinkmed.qlinkd.dataplane.inbox import Inbox, SyncPoint, TransferRefused, at_rest_key
from qlinkmed.qlinkd.dataplane.keys import KeySource
from qlinkmed.qlinkd.dataplane.manifest import Manifest, TransferKind
from qlinkmed.qlinkd.dataplane.pads import ReceiverPads
from qlinkmed.qlinkd.dataplane.records import Incoming
from qlinkmed.qlinkd.errors import FrameError, IntegrityError, KeyNotFound, TransferError
from qlinkmed.qlinkd.link.framing import read_frame
from qlinkmed.qlinkd.pool.values import DeliveredKey
from qlinkmed.qlinkd.seal import Direction, Opener, Sealer, SendState, derive_traffic_key
from qlinkmed.qlinkd.seal.constants import AEAD_VERSION, OTP_RANGE_VERSION, OTP_VERSION, REJECT_AFTER_MESSAGES
from qlinkmed.qlinkd.seal.otp import open_otp, open_otp_range, peek_otp_key_ids, peek_otp_range

log = logging.getLogger("qlink.data")

SYNC_BYTES = 16 << 20
"""Spool bytes between fsyncs (and acknowledgements): large enough to stream at disk speed, well inside
the sender's window."""
KEY_WAIT_S = 10.0
MAX_FRAME = (1 << 20) + 4096
_STATE = {
    None: pb.TRANSFER_STATE_NEW,
    Incoming.RECEIVING: pb.TRANSFER_STATE_PARTIAL,
    Incoming.DELIVERED: pb.TRANSFER_STATE_COMPLETE,
    Incoming.REFUSED: pb.TRANSFER_STATE_COMPLETE,
}


def _log_drop_failure(done: asyncio.Future[None]) -> None:
    if not done.cancelled() and done.exception() is not None:
        log.warning("delivered transfer's spool not removed (swept at the next start): %s", done.exception())


class Rejected(Exception):
    """A frame or message the receiver refuses; `reason` is a short code for the audit log and metrics."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(slots=True)
class ReceiverContext:
    facility: str
    keys: KeySource
    inbox: Inbox
    on_delivered: Callable[[str, Manifest, str, float], None]
    """(transfer, manifest, at-rest form, when its inbox record was committed: epoch seconds)."""
    on_refused: Callable[[str, str], None]
    on_bytes: Callable[[int], None] = field(default=lambda n: None)
    finishing: dict[str, asyncio.Task[tuple[bool, str]]] = field(default_factory=dict)
    """Transfers being stored at rest, shared by every connection of the daemon."""


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
        self._material = b""
        self._sealer: Sealer | None = None
        self._opener: Opener | None = None
        self._finishing: set[asyncio.Task[None]] = set()
        """This connection's reports of finished transfers (cancelled with it; the work itself is not)."""
        self._acknowledging: asyncio.Task[None] | None = None
        """The latest sync-then-acknowledge; each waits for the one before, so acks leave in order."""
        self._pads = ReceiverPads()

    async def run(self) -> None:
        try:
            await self._serve()
        finally:
            for task in [*self._finishing, *([self._acknowledging] if self._acknowledging else [])]:
                task.cancel()
            self._pads.close()
            self.ctx.inbox.release(self)

    async def _serve(self) -> None:
        frame = await read_frame(self._reader, 4096)
        if frame is None:
            return
        opened = dm.decode_open(frame)
        if opened.facility != self.peer:
            raise Rejected("identity", f"data open names {opened.facility!r}, the certificate {self.peer!r}")
        keys = await self._fetch(list(opened.key_ids))
        self._material = b"".join(k.material for k in keys)
        now = time.monotonic()
        self._opener = Opener(
            derive_traffic_key(self._material, opened.key_ids, direction=Direction.MASTER_TO_SLAVE),
            started_at=now,
            in_order=True,
        )
        self._sealer = Sealer(
            derive_traffic_key(self._material, opened.key_ids, direction=Direction.SLAVE_TO_MASTER),
            state=SendState(
                next_counter=0, reserved_until=REJECT_AFTER_MESSAGES, bytes_sealed=0, started_at=now
            ),
        )
        self._send(dm.ready())
        while True:
            frame = await read_frame(self._reader, MAX_FRAME)
            if frame is None:
                return
            message = await self._open(frame)
            if self._acknowledging is not None and self._acknowledging.done():
                self._acknowledging.result()  # a failed sync ends the connection; nothing was acknowledged
            await self._handle(message)

    async def _fetch(self, key_ids: list[str]) -> list[DeliveredKey]:
        try:
            return await self.ctx.keys.fetch(self.peer, key_ids, KEY_WAIT_S)
        except KeyNotFound:
            raise Rejected("key_unknown", f"key {key_ids[0]} never arrived (or was used already)") from None

    async def _open(self, frame: bytes) -> pb.DataMessage:
        assert self._opener is not None
        try:
            if frame[:1] == bytes([AEAD_VERSION]):
                return dm.decode(self._opener.open(frame, now=time.monotonic()))
            if frame[:1] == bytes([OTP_RANGE_VERSION]):
                where = peek_otp_range(frame)
                pad = await self._pads.cut(str(where.key_id), where.offset, where.size)
                return self._ehr_only(dm.decode(open_otp_range(frame, pad)))
            if frame[:1] == bytes([OTP_VERSION]):
                ids = [str(k) for k in peek_otp_key_ids(frame)]
                keys = await self._fetch(ids)
                return self._ehr_only(dm.decode(open_otp(frame, b"".join(k.material for k in keys))))
        except IntegrityError as exc:
            raise Rejected(getattr(exc.reason, "value", "integrity"), exc.message) from None
        except FrameError as exc:
            raise Rejected("malformed", str(exc)) from None
        raise Rejected("version", f"frame of unknown version {frame[:1].hex() or 'empty'}")

    @staticmethod
    def _ehr_only(message: pb.DataMessage) -> pb.DataMessage:
        if message.WhichOneof("body") != "ehr":
            raise Rejected("protocol", "a one-time-pad frame carries only EHR messages")
        return message

    async def _fetch_one(self, key_id: str) -> DeliveredKey:
        return (await self._fetch([key_id]))[0]

    def _send(self, plaintext: bytes) -> None:
        assert self._sealer is not None
        frame = self._sealer.seal(plaintext, now=time.monotonic())
        self._writer.writelines([len(frame).to_bytes(4, "big"), frame])

    async def _handle(self, message: pb.DataMessage) -> None:
        kind = message.WhichOneof("body")
        inbox = self.ctx.inbox
        if kind == "chunk":
            c = message.chunk
            try:
                complete = inbox.write_chunk(c.transfer_id, c.file_index, c.offset, c.data)
            except TransferError as exc:
                raise Rejected("protocol", exc.message) from None
            self.ctx.on_bytes(len(c.data))
            if complete or inbox.unsynced(c.transfer_id) >= SYNC_BYTES:
                # The sync runs in a thread while the next chunks are written; its ack follows it.
                self._acknowledging = asyncio.create_task(
                    self._acknowledge(inbox.sync_point(c.transfer_id), self._acknowledging)
                )
                self._acknowledging.add_done_callback(self._acknowledge_failed)
        elif kind == "offer":
            await self._offer(message.offer)
        elif kind == "ehr":
            await self._ehr(message.ehr)
        elif kind == "pad":
            key_id = message.pad.key_id
            try:
                self._pads.announce(key_id, self._fetch_one(key_id))
            except IntegrityError as exc:
                raise Rejected(getattr(exc.reason, "value", "integrity"), exc.message) from None
        else:
            raise Rejected("protocol", f"a sender does not send {kind}")

    def _acknowledge_failed(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None or self._writer.is_closing():
            return
        # Nothing from the failed sync on was acknowledged. Closing at once lets the sender resume from the
        # last acknowledged byte now, not after its reply timeout (the final sync has no next frame).
        log.warning("spool sync or acknowledgement for %s failed: %s; closing", self.peer, task.exception())
        self._writer.close()

    async def _acknowledge(self, point: SyncPoint, previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            await previous
        await asyncio.wrap_future(point.durable)
        inbox = self.ctx.inbox
        inbox.record_durable(point)
        self._send(dm.ack(point.transfer_id, point.file_index, point.offset))
        await self._writer.drain()
        if point.complete:
            self._start_finish(inbox.manifest(point.transfer_id))

    async def _offer(self, offer: pb.Offer) -> None:
        try:
            manifest = Manifest.from_json(offer.manifest)
            if manifest.transfer_id != offer.transfer_id:
                raise TransferError("offer and manifest name different transfers")
            where = self.ctx.inbox.offer(manifest, self.peer, owner=self)
        except TransferError as exc:
            raise Rejected("protocol", exc.message) from None
        self._send(dm.position(manifest.transfer_id, _STATE[where.state], where.file_index, where.offset))
        if where.state is Incoming.DELIVERED:
            self._send(dm.delivered(manifest.transfer_id, manifest.sha256()))
        elif where.state is Incoming.REFUSED:
            self._send(dm.refused(manifest.transfer_id, where.reason or "refused"))
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
            task = asyncio.create_task(self._finish(manifest, at_rest_key(self._material, tid)))
            self.ctx.finishing[tid] = task
            task.add_done_callback(lambda _: self.ctx.finishing.pop(tid, None))
        report = asyncio.create_task(self._report(manifest, task))
        self._finishing.add(report)
        report.add_done_callback(self._finishing.discard)

    async def _finish(self, manifest: Manifest, key: bytes) -> tuple[bool, str]:
        tid = manifest.transfer_id
        try:
            forms = await asyncio.to_thread(self.ctx.inbox.store_at_rest, manifest, key)
        except TransferRefused as exc:
            self.ctx.inbox.refuse(tid, exc.message)
            self.ctx.on_refused(tid, exc.message)
            return False, exc.message
        self.ctx.inbox.delivered(tid, key=key, forms=forms)
        self.ctx.on_delivered(tid, manifest, forms, time.time())
        # Freeing a large spool's blocks takes a while: off the loop, and the sender need not wait for it.
        # (If it fails or a crash comes first, the next start sweeps the spool.)
        dropping = asyncio.get_running_loop().run_in_executor(None, self.ctx.inbox.drop_spool, tid)
        dropping.add_done_callback(_log_drop_failure)
        return True, forms

    async def _report(self, manifest: Manifest, task: asyncio.Task[tuple[bool, str]]) -> None:
        try:
            delivered, detail = await asyncio.shield(task)
        except Exception:
            log.exception("storing transfer %s failed; the sender will offer it again", manifest.transfer_id)
            return
        tid = manifest.transfer_id
        self._send(dm.delivered(tid, manifest.sha256()) if delivered else dm.refused(tid, detail))
        await self._writer.drain()

    async def _ehr(self, message: pb.EhrMessage) -> None:
        """A whole EHR message from a one-time-pad frame: checked, sealed for rest and recorded in one
        transaction (the latency-bound path: no spool, no files)."""
        inbox = self.ctx.inbox
        try:
            manifest = Manifest.from_json(message.manifest)
            if manifest.transfer_id != message.transfer_id or manifest.kind is not TransferKind.EHR:
                raise TransferError("EHR frame with a manifest of another transfer or kind")
            if manifest.sender != self.peer or manifest.recipient != self.ctx.facility:
                raise TransferError(f"EHR manifest names {manifest.sender} -> {manifest.recipient}")
        except TransferError as exc:
            raise Rejected("protocol", exc.message) from None
        tid = manifest.transfer_id
        record = inbox.record(tid)
        if record is not None and record.state is Incoming.DELIVERED:
            self._send(dm.delivered(tid, manifest.sha256()))
        elif record is not None and record.state is Incoming.REFUSED:
            self._send(dm.refused(tid, record.reason or "refused"))
        else:
            key = at_rest_key(self._material, tid)
            try:
                blob, forms = inbox.seal_ehr(manifest, message.body, key)
            except TransferRefused as exc:
                inbox.refuse_ehr(manifest, exc.message)
                self.ctx.on_refused(tid, exc.message)
                self._send(dm.refused(tid, exc.message))
            else:
                stored_at = inbox.deliver_ehr(manifest, blob=blob, key=key, forms=forms)
                self._send(dm.delivered(tid, manifest.sha256()))
                self.ctx.on_delivered(tid, manifest, forms, stored_at)
        await self._writer.drain()
