"""The sending end of one data-plane connection: the asyncio shell around ``send_machine.SenderMachine``.
It takes fresh QKD key, opens the session, then sends the peer's queued transfers (EHR messages first,
between study chunks too) until the queue is empty and the traffic key is due for replacement, or the
connection fails. Everything it sends can be sent again: the receiver says where to resume, and dedups by
transfer ID.

The machine decides what may be sent and judges every answer; this shell picks the next transfer from the
queue, seals and writes what the machine returns, reads the outbox, and records each outcome.

With ``pq_hybrid`` on for the peer, each session makes a fresh ML-KEM-768 key pair, offers its
encapsulation key in the Open and mixes the secret from the receiver's ciphertext into the traffic keys.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from qlinkmed.qlinkd.dataplane import wire as dm
from qlinkmed.qlinkd.dataplane.ehr_queue import EhrQueue
from qlinkmed.qlinkd.dataplane.events import DataMessage
from qlinkmed.qlinkd.dataplane.keys import SESSION_KEY_BITS, KeySource, SessionKeyed, traffic_keys
from qlinkmed.qlinkd.dataplane.manifest import Manifest, TransferKind
from qlinkmed.qlinkd.dataplane.outbox import Outbox
from qlinkmed.qlinkd.dataplane.pads import PAD_KEY_BYTES, PAD_REFILL_BELOW, SenderPads
from qlinkmed.qlinkd.dataplane.records import Outgoing, TransferRecords
from qlinkmed.qlinkd.dataplane.send_machine import Acknowledged, Answered, Positioned, SenderMachine
from qlinkmed.qlinkd.dataplane.tasks import group_outcome
from qlinkmed.qlinkd.errors import (
    InsufficientKey,
    IntegrityError,
    KmeError,
    SessionClosed,
    SessionMisuse,
    TransferError,
)
from qlinkmed.qlinkd.link.framing import read_frame
from qlinkmed.qlinkd.ops import entropy
from qlinkmed.qlinkd.pool.values import DeliveredKey
from qlinkmed.qlinkd.seal import KeyStatus, Opener, Sealer
from qlinkmed.qlinkd.seal.constants import (
    AEAD_VERSION,
    MAX_OTP_PLAINTEXT_BYTES,
    MAX_SEALED_FRAME_BYTES,
)
from qlinkmed.qlinkd.seal.hybrid import MLKEM_SEED_BYTES, HybridOffer, KemSecret
from qlinkmed.qlinkd.seal.otp import otp_key_bytes, seal_otp, seal_otp_range

__all__ = ["IDLE_CHECK_S", "REPLY_TIMEOUT_S", "SenderContext", "SenderSession", "SessionClosed"]

log = logging.getLogger("qlink.data")

REPLY_TIMEOUT_S = 30.0
IDLE_CHECK_S = 5.0
"""How often an idle session checks whether its traffic key is due for replacement."""
KME_RETRY_MAX_S = 5.0
"""The longest pause between session-key attempts while an external KME refuses or cannot be reached."""


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
    hybrid: bool = False
    """``pq_hybrid`` is on for the peer: every session mixes an ML-KEM-768 secret into its traffic keys."""
    on_session: Callable[[SessionKeyed], None] = field(default=lambda keyed: None)
    """A session's traffic keys are derived and the receiver's Ready opened under them."""
    state: str = "idle"
    ehr: EhrQueue = field(init=False)
    """The peer's queued EHR messages, which the sender takes without asking the records."""

    def __post_init__(self) -> None:
        self.ehr = EhrQueue(self.records, self.peer)


class SenderSession:
    def __init__(
        self, ctx: SenderContext, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.ctx = ctx
        self._reader = reader
        self._writer = writer
        self._pads = SenderPads()

    async def run(self) -> None:
        try:
            self.ctx.state = "waiting for key"
            keys = await self._take_session_key()
            machine, sealer, opener = await _handshake(self.ctx, keys, self._reader, self._writer)
            session = _KeyedSession(self.ctx, machine, sealer, opener, self._reader, self._writer, self._pads)
            await session.run()
        finally:
            discarded = self._pads.close()
            if discarded:
                log.info(
                    "data session to %s ended: %d bytes of pad key discarded unused", self.ctx.peer, discarded
                )

    async def _take_session_key(self) -> list[DeliveredKey]:
        delay = 0.05
        reported = ""
        while True:
            try:
                return await self.ctx.keys.take(self.ctx.peer, SESSION_KEY_BITS)
            except InsufficientKey:
                # Data waits for key; it never reuses any.
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
            except KmeError as exc:
                # An external KME that refuses or is away: the transfers stay queued, status says why.
                self.ctx.state = f"waiting for key: {exc}"
                if str(exc) != reported:
                    log.warning("data session to %s waits for key: %s", self.ctx.peer, exc)
                    reported = str(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, KME_RETRY_MAX_S)


async def _read_reply(reader: asyncio.StreamReader, timeout: float) -> bytes:
    try:
        async with asyncio.timeout(timeout):
            frame = await read_frame(reader, MAX_SEALED_FRAME_BYTES)
    except TimeoutError:
        raise SessionClosed("no answer from the receiver") from None
    if frame is None:
        raise SessionClosed("receiver closed the connection")
    return frame


def _opened(opener: Opener, frame: bytes) -> DataMessage:
    """A reply's message. A frame that does not open ends the session (SessionClosed, as any receiver fault
    does), never the sender's loop."""
    try:
        return dm.decode_message(opener.open(frame, now=time.monotonic()))
    except IntegrityError as exc:
        raise SessionClosed(f"a frame from the receiver does not open: {exc.message}") from None


async def _handshake(
    ctx: SenderContext,
    keys: list[DeliveredKey],
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> tuple[SenderMachine, Sealer, Opener]:
    """Open the session: send the Open (with the hybrid, a fresh ML-KEM-768 encapsulation key), take the
    receiver's plain answer if one comes, derive the traffic keys and open the Ready under them."""
    # A fresh key pair per session, from the OS CSPRNG (the ephemeral secret dies with the session).
    offer = HybridOffer(entropy.random_bytes(MLKEM_SEED_BYTES)) if ctx.hybrid else None
    key_ids = [k.key_id for k in keys]
    material = b"".join(k.material for k in keys)
    machine = SenderMachine(
        facility=ctx.facility,
        key_ids=key_ids,
        mlkem_encapsulation_key=b"" if offer is None else offer.public_bytes(),
    )
    frame = dm.encode_open(machine.opening())
    writer.writelines([len(frame).to_bytes(4, "big"), frame])
    await writer.drain()
    ctx.state = "opening"
    frame = await _read_reply(reader, REPLY_TIMEOUT_S)
    kem: KemSecret | None = None
    if frame[:1] == bytes([AEAD_VERSION]):
        machine.answered_sealed()
    else:  # a plain DataAccept: the hybrid's ciphertext, or a refusal (its first byte is a protobuf tag)
        ciphertext = machine.receive_answer(dm.decode_answer(frame))
        if offer is None:
            raise SessionMisuse("the machine took a ciphertext in a session without the hybrid")
        kem = offer.finish(ciphertext)
        frame = await _read_reply(reader, REPLY_TIMEOUT_S)
    sealer, opener = traffic_keys(material, key_ids, master=True, kem=kem, now=time.monotonic())
    try:
        ready = dm.decode_message(opener.open(frame, now=time.monotonic()))
    except IntegrityError as exc:
        # ML-KEM decapsulation never fails: an altered encapsulation key or ciphertext gives each end
        # another secret, and this is where that shows.
        why = "the ML-KEM exchange was altered or " if kem is not None else ""
        raise SessionClosed(
            f"the receiver's Ready does not open ({exc.message}): {why}the two ends hold different keys"
        ) from None
    machine.receive(ready)  # a Ready, or SessionClosed
    ctx.on_session(
        SessionKeyed(peer=ctx.peer, role="sender", key_ids=tuple(key_ids), pq_hybrid=kem is not None)
    )
    return machine, sealer, opener


class _KeyedSession:
    """The session once its keys are derived and the receiver is ready: the machine, and the replies each
    transfer waits for."""

    def __init__(
        self,
        ctx: SenderContext,
        machine: SenderMachine,
        sealer: Sealer,
        opener: Opener,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        pads: SenderPads,
    ) -> None:
        self.ctx = ctx
        self._reader = reader
        self._writer = writer
        self._pads = pads
        self._machine = machine
        self._sealer = sealer
        self._opener = opener
        self._replies: dict[str, asyncio.Queue[Positioned | Answered]] = {}
        self._acked = asyncio.Event()

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                reading = tg.create_task(self._read_replies())
                await self._serve_queue()
                reading.cancel()
        except BaseExceptionGroup as group:
            raise group_outcome(group) from None

    # ---- frames

    def _write(self, frame: bytes) -> None:
        self._writer.writelines([len(frame).to_bytes(4, "big"), frame])

    def _send(self, message: DataMessage) -> None:
        self._write(self._sealer.seal(dm.encode_message(message), now=time.monotonic()))

    async def _read_message(self, *, timeout: float) -> DataMessage:
        return _opened(self._opener, await _read_reply(self._reader, timeout))

    async def _read_replies(self) -> None:
        """Feed every answer to the machine and wake what waits for it. Ends the session (through the task
        group) when the connection fails or the receiver breaks the protocol."""
        while True:
            event = self._machine.receive(await self._read_message(timeout=3600.0))
            if isinstance(event, Acknowledged):
                self._acked.set()
            elif event is not None:
                self._replies[event.transfer_id].put_nowait(event)

    # ---- the queue

    async def _serve_queue(self) -> None:
        ctx = self.ctx
        while True:
            manifest = ctx.ehr.next()
            if manifest is None:
                queued = ctx.records.queued(ctx.peer)
                if not queued:
                    ctx.state = "idle"
                    if self._sealer.status(time.monotonic()) is not KeyStatus.FRESH:
                        return  # reconnect for a fresh key
                    ctx.wake.clear()
                    try:
                        async with asyncio.timeout(IDLE_CHECK_S):
                            await ctx.wake.wait()
                    except TimeoutError:
                        pass
                    continue
                ehr = [m for m in queued if m.kind is TransferKind.EHR]
                manifest = (ehr or queued)[0]
            ctx.state = "sending"
            await self._send_transfer(manifest)

    async def _send_pending_ehr(self) -> None:
        while (manifest := self.ctx.ehr.next(skip=self._handling())) is not None:
            await self._send_transfer(manifest)

    def _handling(self) -> set[str]:
        """Transfers not to start again: those in flight, and those this sender is still finishing. A
        message that overtook a study from inside the study's stream can be answered (and so leave the
        machine's flights) before its own send returns to record the answer; without the second set the
        queue would hand it out again and it would be sent twice (issue 16's partition runs found it)."""
        return {*self._machine.in_flight(), *self._replies}

    async def _send_transfer(self, manifest: Manifest) -> None:
        tid = manifest.transfer_id
        replies = self._replies[tid] = asyncio.Queue()
        try:
            # With the hybrid, a pad would be secret only while the QKD key is: the message goes under
            # the session's hybrid traffic key instead, which holds while either does.
            if manifest.kind is TransferKind.EHR and not self.ctx.hybrid and await self._try_otp(manifest):
                answer = await self._answer(replies)
                await self._refill_pads()
            else:
                self._send(self._machine.offer(manifest))
                await self._writer.drain()
                await self._reply(replies)  # Positioned: the machine knows where to start
                await self._stream(manifest)
                answer = await self._answer(replies)
            if answer.delivered:
                self._finish(tid, Outgoing.DELIVERED, None)
            else:
                self._finish(tid, Outgoing.REFUSED, answer.reason)
        finally:
            self._replies.pop(tid, None)

    def _finish(self, tid: str, state: Outgoing, reason: str | None) -> None:
        self.ctx.records.finish_outgoing(tid, state, reason)
        self.ctx.ehr.finished(tid)
        self.ctx.outbox.remove(tid)
        self.ctx.on_finished(tid, state, reason)

    @staticmethod
    async def _reply(replies: asyncio.Queue[Positioned | Answered]) -> Positioned | Answered:
        try:
            async with asyncio.timeout(REPLY_TIMEOUT_S * 4):
                return await replies.get()
        except TimeoutError:
            raise SessionClosed("receiver did not answer") from None

    async def _answer(self, replies: asyncio.Queue[Positioned | Answered]) -> Answered:
        reply = await self._reply(replies)
        if not isinstance(reply, Answered):
            # The machine lets a Position through only to a transfer waiting for one.
            raise SessionMisuse(f"transfer {reply.transfer_id}: waited for its outcome, got a position")
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
            self._machine.ehr(manifest, body)
            self._write(seal_otp_range(payload, cut.material, cut.key_id, cut.offset).frame)
            return True
        else:
            try:
                keys = await ctx.keys.take(ctx.peer, needed_bits)
            except InsufficientKey as exc:
                why = f"pool holds {exc.available_bits} bits, the one-time pad needs {needed_bits}"
            except KmeError as exc:
                why = f"the key source cannot supply the one-time pad's {needed_bits} bits: {exc}"
            else:
                self._machine.ehr(manifest, body)
                material = b"".join(k.material for k in keys)
                frame = seal_otp(payload, material, [k.key_id for k in keys]).frame
                # Let the classical link send the key's notice first: the receiver can then fetch the pad
                # while this frame is on its way instead of after it arrived.
                await asyncio.sleep(0)
                self._write(frame)
                return True
        log.info("EHR %s to %s under AES-256-GCM, not one-time pad: %s", manifest.transfer_id, ctx.peer, why)
        ctx.on_otp_fallback(manifest.transfer_id, why)
        return False

    async def _refill_pads(self) -> None:
        """Take and announce the next pad key when the session's pads run low (after a message is answered,
        so the pool transaction and the notice stay off every message's path). A pad is one key or none
        (`single`): a message's pad never spans keys, so a pad split into small keys would only be
        discarded unused; messages then take their own keys."""
        if self._pads.left() >= PAD_REFILL_BELOW:
            return
        try:
            keys = await self.ctx.keys.take(self.ctx.peer, 8 * PAD_KEY_BYTES, single=True)
        except (InsufficientKey, KmeError):
            return  # messages take their own pads (or fall back to AEAD) until key comes again
        for key in keys:
            self._pads.add(key)
            self._send(self._machine.pad_key(key.key_id))

    def _ehr_body(self, manifest: Manifest) -> bytes:
        body = self.ctx.ehr.body(manifest)
        if body is None:
            raise TransferError("queued EHR message has no body in its record", transfer=manifest.transfer_id)
        return body

    async def _stream(self, manifest: Manifest) -> None:
        """Send the chunks the machine asks for, from the outbox (or an EHR message's body), inside the
        window; let queued EHR messages overtake a study between chunks."""
        tid = manifest.transfer_id
        machine = self._machine
        body = self._ehr_body(manifest) if manifest.kind is TransferKind.EHR else None
        fd, fd_index = -1, -1
        try:
            while (wanted := machine.next_chunk(tid)) is not None:
                while not machine.window_open(tid):
                    self._acked.clear()
                    try:
                        async with asyncio.timeout(REPLY_TIMEOUT_S):
                            await self._acked.wait()
                    except TimeoutError:
                        raise SessionClosed("the receiver acknowledged nothing") from None
                if body is not None:
                    data = body[wanted.offset : wanted.offset + wanted.max_bytes]
                else:
                    if fd_index != wanted.file_index:
                        if fd >= 0:
                            os.close(fd)
                            fd = -1
                        fd, fd_index = self.ctx.outbox.open_file(tid, wanted.file_index), wanted.file_index
                    data = os.pread(fd, wanted.max_bytes, wanted.offset)
                if not data:
                    raise TransferError(
                        f"outbox file {wanted.file_index} is shorter than its manifest", transfer=tid
                    )
                self._send(machine.chunk(tid, data))
                await self._writer.drain()
                if body is None and self.ctx.wake.is_set():
                    # Something new was queued: let an EHR message overtake the study (never another EHR
                    # message: one sender's messages arrive in the order they were queued, HL7 needs it).
                    self.ctx.wake.clear()
                    await self._send_pending_ehr()
        finally:
            if fd >= 0:
                os.close(fd)
