"""The sending end of one data-plane connection: take fresh QKD key, open the session, then send the
peer's queued transfers (EHR messages first, between study chunks too) until the queue is empty and the
traffic key is due for replacement, or the connection fails. Everything it sends can be sent again: the
receiver says where to resume, and dedups by transfer ID.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from qlinkmed.proto import qlinkmed_wire_pb2 as pb
from qlinkmed.qlinkd.dataplane import messages as dm
from qlinkmed.qlinkd.dataplane.ehr_queue import EhrQueue
from qlinkmed.qlinkd.dataplane.inbox import advance_past_complete
from qlinkmed.qlinkd.dataplane.keys import SESSION_KEY_BITS, KeySource
from qlinkmed.qlinkd.dataplane.manifest import Manifest, TransferKind
from qlinkmed.qlinkd.dataplane.outbox import Outbox
from qlinkmed.qlinkd.dataplane.pads import PAD_KEY_BYTES, PAD_REFILL_BELOW, SenderPads
from qlinkmed.qlinkd.dataplane.records import Outgoing, TransferRecords
from qlinkmed.qlinkd.errors import FrameError, InsufficientKey, TransferError
from qlinkmed.qlinkd.link.framing import read_frame
from qlinkmed.qlinkd.pool.values import DeliveredKey
from qlinkmed.qlinkd.seal import Direction, KeyStatus, Opener, Sealer, SendState, derive_traffic_key
from qlinkmed.qlinkd.seal.constants import MAX_OTP_PLAINTEXT_BYTES, REJECT_AFTER_MESSAGES
from qlinkmed.qlinkd.seal.otp import otp_key_bytes, seal_otp, seal_otp_range

log = logging.getLogger("qlink.data")

CHUNK_BYTES = (1 << 20) - 1024
"""File bytes per chunk: a whole chunk message (and its protobuf fields) fits one 1 MiB sealed frame."""
WINDOW_BYTES = 48 << 20
"""Unacknowledged bytes in flight; the receiver acknowledges every SYNC_BYTES (inbox side)."""
REPLY_TIMEOUT_S = 30.0
MAX_FRAME = (1 << 20) + 4096
IDLE_CHECK_S = 5.0


class SessionClosed(Exception):
    """The connection ended or the peer broke the protocol; the caller reconnects."""


@dataclass(slots=True)
class SenderContext:
    facility: str
    peer: str
    keys: KeySource
    records: TransferRecords
    outbox: Outbox
    wake: asyncio.Event
    on_finished: Callable[[str, Outgoing, str | None], None]
    on_otp_fallback: Callable[[str, str], None] = field(default=lambda tid, why: None)
    state: str = "idle"
    ehr: EhrQueue = field(init=False)
    """The peer's queued EHR messages, which the sender takes without asking the records."""

    def __post_init__(self) -> None:
        self.ehr = EhrQueue(self.records, self.peer)


@dataclass(slots=True)
class _Flight:
    file_starts: list[int]
    replies: asyncio.Queue[pb.DataMessage] = field(default_factory=asyncio.Queue)
    acked: int = 0
    ack_event: asyncio.Event = field(default_factory=asyncio.Event)


class SenderSession:
    def __init__(
        self, ctx: SenderContext, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.ctx = ctx
        self._reader = reader
        self._writer = writer
        self._flights: dict[str, _Flight] = {}
        self._sealer: Sealer | None = None
        self._opener: Opener | None = None
        self._reader_error: BaseException | None = None
        self._pads = SenderPads()

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            discarded = self._pads.close()
            if discarded:
                log.info(
                    "data session to %s ended: %d bytes of pad key discarded unused", self.ctx.peer, discarded
                )

    async def _run(self) -> None:
        ctx = self.ctx
        ctx.state = "waiting for key"
        key = await self._take_session_key()
        now = time.monotonic()
        self._sealer = Sealer(
            derive_traffic_key(key.material, [key.key_id], direction=Direction.MASTER_TO_SLAVE),
            state=SendState(
                next_counter=0, reserved_until=REJECT_AFTER_MESSAGES, bytes_sealed=0, started_at=now
            ),
        )
        # The key dies with the connection, so its counters need no durable reservation: a new connection
        # always means a new key.
        self._opener = Opener(
            derive_traffic_key(key.material, [key.key_id], direction=Direction.SLAVE_TO_MASTER),
            started_at=now,
            in_order=True,
        )
        self._write(dm.encode_open(ctx.facility, [key.key_id]))
        await self._writer.drain()
        ctx.state = "opening"
        first = await self._read_message(timeout=REPLY_TIMEOUT_S)
        if first.WhichOneof("body") != "ready":
            raise SessionClosed(f"peer answered the open with {first.WhichOneof('body')}")
        reading = asyncio.create_task(self._read_replies())
        try:
            await self._serve_queue()
        finally:
            reading.cancel()

    async def _take_session_key(self) -> DeliveredKey:
        delay = 0.05
        while True:
            try:
                return self.ctx.keys.take(self.ctx.peer, SESSION_KEY_BITS)
            except InsufficientKey:
                # Data waits for key; it never reuses any.
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    # ---- frames

    def _write(self, frame: bytes) -> None:
        self._writer.writelines([len(frame).to_bytes(4, "big"), frame])

    def _send(self, plaintext: bytes) -> None:
        assert self._sealer is not None
        self._write(self._sealer.seal(plaintext, now=time.monotonic()))

    async def _read_message(self, *, timeout: float) -> pb.DataMessage:
        assert self._opener is not None
        try:
            async with asyncio.timeout(timeout):
                frame = await read_frame(self._reader, MAX_FRAME)
        except TimeoutError:
            raise SessionClosed("no answer from the receiver") from None
        if frame is None:
            raise SessionClosed("receiver closed the connection")
        return dm.decode(self._opener.open(frame, now=time.monotonic()))

    async def _read_replies(self) -> None:
        try:
            while True:
                message = await self._read_message(timeout=3600.0)
                kind = message.WhichOneof("body")
                body = getattr(message, kind)
                flight = self._flights.get(body.transfer_id)
                if flight is None:
                    raise FrameError(f"{kind} for transfer {body.transfer_id}, which is not in flight")
                if kind == "ack":
                    starts = flight.file_starts
                    if body.file_index >= len(starts):
                        raise FrameError(f"ack for file {body.file_index} of {len(starts) - 1} files")
                    flight.acked = max(flight.acked, starts[body.file_index] + body.offset)
                    flight.ack_event.set()
                elif kind in ("position", "delivered", "refused"):
                    flight.replies.put_nowait(message)
                    flight.ack_event.set()
                else:
                    raise FrameError(f"receiver sent a {kind}")
        except BaseException as exc:
            self._reader_error = exc
            for flight in self._flights.values():
                flight.replies.put_nowait(pb.DataMessage())
                flight.ack_event.set()
            raise

    # ---- the queue

    async def _serve_queue(self) -> None:
        ctx = self.ctx
        while True:
            manifest = ctx.ehr.next()
            if manifest is None:
                queued = ctx.records.queued(ctx.peer)
                if not queued:
                    ctx.state = "idle"
                    assert self._sealer is not None
                    if self._sealer.status(time.monotonic()) is not KeyStatus.FRESH:
                        return  # reconnect for a fresh key
                    ctx.wake.clear()
                    try:
                        async with asyncio.timeout(IDLE_CHECK_S):
                            await ctx.wake.wait()
                    except TimeoutError:
                        pass
                    if self._reader_error is not None:
                        raise SessionClosed(f"connection lost: {self._reader_error}")
                    continue
                ehr = [m for m in queued if m.kind is TransferKind.EHR]
                manifest = (ehr or queued)[0]
            ctx.state = "sending"
            await self._send_transfer(manifest)

    async def _send_pending_ehr(self) -> None:
        while (manifest := self.ctx.ehr.next(skip=self._flights)) is not None:
            await self._send_transfer(manifest)

    async def _send_transfer(self, manifest: Manifest) -> None:
        tid = manifest.transfer_id
        flight = self._flights[tid] = _Flight(file_starts=manifest.file_starts())
        try:
            if manifest.kind is TransferKind.EHR and await self._try_otp(manifest):
                reply = await self._reply(flight)
                self._refill_pads()
            else:
                self._send(dm.offer(tid, manifest.to_json()))
                await self._writer.drain()
                reply = await self._reply(flight)
                if reply.WhichOneof("body") == "position":
                    if reply.position.state != pb.TRANSFER_STATE_COMPLETE:
                        await self._stream(manifest, flight, reply.position)
                    reply = await self._reply(flight)
            kind = reply.WhichOneof("body")
            if kind == "delivered":
                if reply.delivered.manifest_sha256 != manifest.sha256():
                    raise SessionClosed(f"transfer {tid}: receiver confirmed another manifest")
                self._finish(tid, Outgoing.DELIVERED, None)
            elif kind == "refused":
                self._finish(tid, Outgoing.REFUSED, reply.refused.reason)
            else:
                raise SessionClosed(f"transfer {tid}: unexpected {kind}")
        finally:
            self._flights.pop(tid, None)

    def _finish(self, tid: str, state: Outgoing, reason: str | None) -> None:
        self.ctx.records.finish_outgoing(tid, state, reason)
        self.ctx.ehr.finished(tid)
        self.ctx.outbox.remove(tid)
        self.ctx.on_finished(tid, state, reason)

    async def _reply(self, flight: _Flight) -> pb.DataMessage:
        try:
            async with asyncio.timeout(REPLY_TIMEOUT_S * 4):
                reply = await flight.replies.get()
        except TimeoutError:
            raise SessionClosed("receiver did not answer") from None
        if reply.WhichOneof("body") is None:
            raise SessionClosed(f"connection lost: {self._reader_error}")
        return reply

    async def _try_otp(self, manifest: Manifest) -> bool:
        """Send an EHR message as one one-time-pad frame if the pool can pay for it; False (with a log
        line saying why) to fall back to AEAD."""
        ctx = self.ctx
        body = self._ehr_body(manifest)
        payload = dm.ehr(manifest.transfer_id, manifest.to_json(), body)
        needed_bits = 8 * otp_key_bytes(len(payload))
        if len(payload) > MAX_OTP_PLAINTEXT_BYTES:
            why = f"message of {len(payload)} bytes exceeds the one-time-pad limit {MAX_OTP_PLAINTEXT_BYTES}"
        elif (cut := self._pads.cut(otp_key_bytes(len(payload)))) is not None:
            # The fast path: the pad key was taken and announced earlier, its notice is long at the peer.
            self._write(seal_otp_range(payload, cut.material, cut.key_id, cut.offset).frame)
            return True
        else:
            try:
                key = ctx.keys.take(ctx.peer, needed_bits)
            except InsufficientKey as exc:
                why = f"pool holds {exc.available_bits} bits, the one-time pad needs {needed_bits}"
            else:
                frame = seal_otp(payload, key.material, [key.key_id]).frame
                # Let the classical link send the key's notice first: the receiver can then fetch the pad
                # while this frame is on its way instead of after it arrived.
                await asyncio.sleep(0)
                self._write(frame)
                return True
        log.info("EHR %s to %s under AES-256-GCM, not one-time pad: %s", manifest.transfer_id, ctx.peer, why)
        ctx.on_otp_fallback(manifest.transfer_id, why)
        return False

    def _refill_pads(self) -> None:
        """Take and announce the next pad key when the session's pads run low (after a message is answered,
        so the pool transaction and the notice stay off every message's path)."""
        if self._pads.left() >= PAD_REFILL_BELOW:
            return
        try:
            key = self.ctx.keys.take(self.ctx.peer, 8 * PAD_KEY_BYTES)
        except InsufficientKey:
            return  # messages take their own pads (or fall back to AEAD) until the pool refills
        self._pads.add(key)
        self._send(dm.pad_key(key.key_id))

    def _ehr_body(self, manifest: Manifest) -> bytes:
        body = self.ctx.ehr.body(manifest)
        if body is None:
            raise TransferError("queued EHR message has no body in its record", transfer=manifest.transfer_id)
        return body

    async def _stream(self, manifest: Manifest, flight: _Flight, start: pb.Position) -> None:
        tid = manifest.transfer_id
        index, offset = advance_past_complete(manifest, start.file_index, start.offset)
        if index > len(manifest.files) or (
            index < len(manifest.files) and offset > manifest.files[index].size
        ):
            raise SessionClosed(f"transfer {tid}: receiver asked to resume at an impossible position")
        sent = flight.acked = flight.file_starts[index] + offset
        while index < len(manifest.files):
            size = manifest.files[index].size
            body = self._ehr_body(manifest) if manifest.kind is TransferKind.EHR else None
            fd = self.ctx.outbox.open_file(tid, index) if body is None else -1
            try:
                while offset < size:
                    while sent - flight.acked > WINDOW_BYTES:
                        flight.ack_event.clear()
                        if self._reader_error is not None:
                            raise SessionClosed(f"connection lost: {self._reader_error}")
                        async with asyncio.timeout(REPLY_TIMEOUT_S):
                            await flight.ack_event.wait()
                    length = min(CHUNK_BYTES, size - offset)
                    data = os.pread(fd, length, offset) if body is None else body[offset : offset + length]
                    if not data:
                        raise TransferError(f"outbox file {index} is shorter than its manifest", transfer=tid)
                    self._send(dm.chunk(tid, index, offset, data))
                    offset += len(data)
                    sent += len(data)
                    await self._writer.drain()
                    if self.ctx.wake.is_set():
                        # Something new was queued: let an EHR message overtake the study.
                        self.ctx.wake.clear()
                        await self._send_pending_ehr()
            finally:
                if fd >= 0:
                    os.close(fd)
            index, offset = advance_past_complete(manifest, index + 1, 0)
