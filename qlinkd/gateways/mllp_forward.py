"""At the receiving facility: every HL7 v2 message that arrives in the inbox is owed to each configured
interface engine (a row per engine in the forwarding ledger), and one Forwarder per engine sends them by
MLLP, oldest first, byte for byte as the sender's system wrote them. The engine's ACK is the delivery:
AA/CA delivered; AE/CE, a timeout, a refused or lost connection: retried with backoff (the line is held,
so order is kept); AR/CR: parked for an operator.

Order per sender: the data plane delivers one peer's EHR messages in the order they were queued (each is
answered before the next is sent), arrivals are added to the ledger in that order, and a destination is
served strictly in ledger order. Delivery is at least once: a crash after the engine's ACK and before the
ledger records it sends the message again after the restart, unchanged, so the engine sees the same
MSH-10 twice and can drop the repeat (HL7's own duplicate detection by control ID).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from qlinkmed.qlinkd.dataplane.manifest import Manifest, TransferKind
from qlinkmed.qlinkd.dataplane.records import Incoming
from qlinkmed.qlinkd.dataplane.service import DataPlane
from qlinkmed.qlinkd.errors import ContentError, IntegrityError, QlinkdError, StoreError, TransferError
from qlinkmed.qlinkd.gateways.forwarder import AUDIT_EVENT, Attempt, Deliver, Forwarder, Verdict
from qlinkmed.qlinkd.gateways.forwards import Forward, ForwardLedger
from qlinkmed.qlinkd.gateways.hl7_ack import parse_ack, parse_header
from qlinkmed.qlinkd.gateways.mllp_config import MllpDestination
from qlinkmed.qlinkd.gateways.mllp_framing import (
    FrameOversized,
    MessageFramed,
    MllpDecoder,
    encode,
)
from qlinkmed.qlinkd.ops.audit import AuditLog

log = logging.getLogger("qlink.gateway")

GATEWAY = "mllp"
MAX_ACK_BYTES = 1 << 20
RECONCILE_RECENT = 1000
"""How many of the newest inbox entries start-up reconciliation looks at (a crash loses at most the last
few arrivals' ledger rows)."""

_DELIVERED = {"AA", "CA"}
_PARKED = {"AR", "CR"}


def verdict_of(code: str) -> Verdict:
    """What an engine's MSA-1 means for the forward: AA/CA delivered, AR/CR parked, anything else (AE, CE,
    an unknown code) retried."""
    if code in _DELIVERED:
        return Verdict.DELIVERED
    if code in _PARKED:
        return Verdict.PARK
    return Verdict.RETRY


def is_hl7(manifest: Manifest) -> bool:
    return manifest.kind is TransferKind.EHR and manifest.files[0].content == "hl7"


class MllpClient:
    """One long-lived MLLP connection to an interface engine, opened when needed, closed on any trouble."""

    def __init__(self, destination: MllpDestination) -> None:
        self.destination = destination
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._decoder = MllpDecoder(MAX_ACK_BYTES)

    async def exchange(self, message: bytes) -> bytes:
        """Send one message and return the engine's answer (one frame). OSError or TimeoutError (after
        closing the connection) when the engine cannot be reached or does not answer in ack_timeout_s.

        Many engines (hl7apy's server among them) close the connection after each answer: a kept
        connection that turns out closed before anything came back is replaced once, at once. (The engine
        may then see the message twice if it had taken it and died unanswered: delivery is at least once.)
        """
        try:
            async with asyncio.timeout(self.destination.ack_timeout_s):
                reused = self._reader is not None and not self._reader.at_eof()
                if not reused:
                    await self.close()
                    await self._open()
                try:
                    return await self._send_and_read(message)
                except ConnectionError:
                    if not reused:
                        raise
                await self.close()
                await self._open()
                return await self._send_and_read(message)
        except BaseException:
            await self.close()
            raise

    async def _open(self) -> None:
        address = self.destination.address
        self._reader, self._writer = await asyncio.open_connection(address.host, address.port)
        self._decoder = MllpDecoder(MAX_ACK_BYTES)

    async def _send_and_read(self, message: bytes) -> bytes:
        reader, writer = self._reader, self._writer
        if reader is None or writer is None:
            raise ConnectionResetError("no MLLP connection")
        writer.write(encode(message))
        await writer.drain()
        while True:
            data = await reader.read(1 << 16)
            if not data:
                raise ConnectionResetError("the engine closed the connection without an ACK")
            for event in self._decoder.feed(data):
                if isinstance(event, MessageFramed):
                    return event.message
                if isinstance(event, FrameOversized):
                    raise ConnectionAbortedError(f"the engine's answer exceeds {MAX_ACK_BYTES} bytes")

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


class MllpForwarding:
    """The ledger rows, forwarders and MLLP clients of the configured destinations."""

    def __init__(
        self,
        destinations: tuple[MllpDestination, ...],
        plane: DataPlane,
        ledger: ForwardLedger,
        audit: AuditLog,
        *,
        on_outcome: Callable[[Forward, Attempt], None] | None = None,
    ) -> None:
        self._plane = plane
        self._ledger = ledger
        self._audit = audit
        self._extra_outcome = on_outcome
        self._clients = {d.name: MllpClient(d) for d in destinations}
        self.forwarders = {
            d.name: Forwarder(ledger, GATEWAY, d.name, self._deliverer(d.name), on_outcome=self._on_outcome)
            for d in destinations
        }

    def reconcile(self) -> int:
        """Give a ledger row to each recent HL7 arrival that has none (a crash between the inbox commit and
        the ledger write); oldest first. Returns how many were added."""
        recent = self._plane.records.list_incoming(limit=RECONCILE_RECENT)
        missing = [
            r
            for r in recent
            if r.state is Incoming.DELIVERED
            and is_hl7(r.manifest)
            and not self._ledger.known(GATEWAY, r.manifest.transfer_id)
        ]
        missing.sort(key=lambda r: (r.delivered_at or 0.0, r.started_at or 0.0))
        for record in missing:
            self._ledger.add(GATEWAY, record.manifest.transfer_id, self.forwarders)
        if missing:
            log.info("MLLP forwarding: %d arrived message(s) had no ledger row; added", len(missing))
        return len(missing)

    def arrived(self, manifest: Manifest) -> None:
        """The data plane's arrival listener: an HL7 message is owed to every destination."""
        if not is_hl7(manifest) or not self.forwarders:
            return
        self._ledger.add(GATEWAY, manifest.transfer_id, self.forwarders)
        for forwarder in self.forwarders.values():
            forwarder.wake()

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                for forwarder in self.forwarders.values():
                    tg.create_task(forwarder.run())
        finally:
            for client in self._clients.values():
                await client.close()

    def _deliverer(self, name: str) -> Deliver:
        async def deliver(forward: Forward) -> Attempt:
            return await self._deliver(name, forward)

        return deliver

    async def _deliver(self, name: str, forward: Forward) -> Attempt:
        inbox = self._plane.inbox
        try:
            located = inbox.locate(forward.transfer_id, 0)
            message = await asyncio.to_thread(inbox.open_located, *located)
        except (TransferError, StoreError, IntegrityError, ContentError, OSError) as exc:
            # Not in the inbox any more (purged) or its at-rest copy fails its check: retrying cannot help.
            return Attempt(Verdict.PARK, f"cannot read the message from the inbox: {exc}")
        header = parse_header(message)
        expected = header.control_id if header else ""
        answer = await self._clients[name].exchange(message)
        try:
            ack = parse_ack(answer)
        except ContentError as exc:
            await self._clients[name].close()
            return Attempt(Verdict.RETRY, f"answer is no ACK: {exc.problem}")
        if ack.control_id != expected:
            # An answer to something else: the connection is out of step; start a fresh one.
            await self._clients[name].close()
            return Attempt(Verdict.RETRY, f"ACK names control ID {ack.control_id!r}, expected {expected!r}")
        detail = f"{ack.code}" + (f": {ack.text}" if ack.text else "")
        return Attempt(verdict_of(ack.code), detail)

    def _on_outcome(self, forward: Forward, attempt: Attempt) -> None:
        event = AUDIT_EVENT[attempt.verdict]
        try:
            self._audit.record(
                event,
                gateway=GATEWAY,
                destination=forward.destination,
                transfer=forward.transfer_id,
                detail=attempt.detail,
            )
        except QlinkdError as exc:
            log.error("audit record %s for transfer %s failed: %s", event, forward.transfer_id, exc)
        if self._extra_outcome is not None:
            self._extra_outcome(forward, attempt)
