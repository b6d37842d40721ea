"""The DICOM gateway at the receiving facility: every study transfer that arrives is owed to each
configured PACS (a row per destination in the forwarding ledger) and sent there by C-STORE, one
association per study attempt (one more for each SOP class or syntax met after the first), through one
`Forwarder` loop per destination (oldest first, retried with backoff, parked on a permanent refusal).

Each instance goes out exactly as it arrived: its data set bytes are never decoded, and it is offered in
the transfer syntax it was received in (one presentation context per SOP class and syntax; no
conversion). A PACS that accepts no context for an instance's class and syntax cannot take it as it is:
that study is parked, the detail naming the class and the syntax, and the operator decides (convert it,
or configure the PACS). Verdicts (`verdict_of`) are a pure function of the statuses and the association:
success and warnings deliver; 0xA7xx (out of resources), no answer or no association retry; other
failures park. The instances of a study are all offered even when one fails, so the PACS keeps what it
could take.

Speed (issue 17's benchmark): each instance is decrypted from its at-rest form while the one before it
is sent, and the association runs over `dicom_socket.PromptSocket`, which acknowledges the PACS's
segments at once (a PACS that writes its response in two pieces otherwise waits ~40 ms an instance).
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pynetdicom import _config

from qlinkmed.qcore.errors import QlinkError
from qlinkmed.qlinkd.dataplane.inbox import Inbox
from qlinkmed.qlinkd.dataplane.manifest import Manifest, TransferKind
from qlinkmed.qlinkd.dataplane.records import Incoming
from qlinkmed.qlinkd.dataplane.service import DataPlane
from qlinkmed.qlinkd.gateways.dicom_config import DicomDestination, DicomGatewayConfig
from qlinkmed.qlinkd.gateways.dicom_socket import PromptAE
from qlinkmed.qlinkd.gateways.forwarder import AUDIT_EVENT, Attempt, Forwarder, Verdict
from qlinkmed.qlinkd.gateways.forwards import Forward, ForwardLedger
from qlinkmed.qlinkd.ops.audit import AuditLog

log = logging.getLogger("qlink.gateway.dicom")

GATEWAY = "dicom"
MAX_CONTEXTS = 128
"""PS3.8: at most 128 presentation contexts in one association request."""
_WARNINGS = {0xB000, 0xB006, 0xB007}
REACTOR_PARK_S = 5.0
"""Longest wait for pynetdicom's reactor to park before a C-STORE (it parks within its 1 ms loop)."""
RECONCILE_NEWEST = 100
"""How many of the newest inbox entries the start-up reconciliation looks at: a crash leaves at most the
few arrivals in flight unowed, and a manifest of a large study is tens of kilobytes to parse."""


@dataclass(frozen=True, slots=True)
class InstanceResult:
    index: int
    status: int | None
    """The PACS's status, None when it did not answer (timeout, association lost) or no context fits."""
    detail: str
    unsendable: bool = False
    """No context the PACS accepted fits the instance: resending the same way cannot help."""


def verdict_of(results: Iterable[InstanceResult], *, associated: bool, why: str = "") -> Attempt:
    """One study attempt's verdict from each instance's outcome."""
    if not associated:
        return Attempt(Verdict.RETRY, why or "no association with the PACS")
    retry, park = [], []
    for r in results:
        if r.status is not None and (r.status == 0 or r.status in _WARNINGS):
            continue
        transient = not r.unsendable if r.status is None else (r.status & 0xFF00) == 0xA700
        if transient:
            retry.append(r)
        else:
            park.append(r)
    if retry:
        first = retry[0]
        return Attempt(Verdict.RETRY, f"instance {first.index}: {first.detail} ({len(retry)} to resend)")
    if park:
        first = park[0]
        return Attempt(Verdict.PARK, f"instance {first.index}: {first.detail} ({len(park)} refused)")
    return Attempt(Verdict.DELIVERED, "")


def _opened_ahead(located: list[tuple[Path | bytes, bytes, str]], pool: Executor) -> Iterator[bytes]:
    """Each instance's original bytes in study order, the next one read and decrypted in `pool` while the
    caller sends this one (the decryption takes longer than the C-STORE): at most two instances are held
    in memory. A copy that fails its check raises when its turn comes, as it would unpipelined."""
    if not located:
        return
    ahead = pool.submit(Inbox.open_located, *located[0])
    for following in located[1:]:
        data = ahead.result()
        ahead = pool.submit(Inbox.open_located, *following)
        yield data
    yield ahead.result()


def _park_reactor(assoc: Any, limit_s: float = REACTOR_PARK_S) -> None:
    """Return once pynetdicom's association reactor thread is blocked on its checkpoint, so it cannot take
    the coming C-STORE response off the queue.

    pynetdicom 3.0's `send_c_store` clears the checkpoint and waits for a flag the reactor sets *before*
    it blocks; a reactor that had just been released by the previous C-STORE passes that check while it
    is still running, takes the next response, drops it as "unexpected", and the send waits out the DIMSE
    timeout and aborts. With responses back in a few milliseconds and the decrypt-ahead thread taking
    the GIL, that hit 3 of 19 runs of a 300-instance test under load 10-12 (about one instance in 3,000;
    the study retried whole after a minute). Here the checkpoint is cleared first and the wait
    is for the reactor to be among its waiters; a reactor that has ended, or the private names missing in
    another pynetdicom version, end the wait at once; `limit_s` bounds it whatever happens."""
    checkpoint = getattr(assoc, "_reactor_checkpoint", None)
    waiters = getattr(getattr(checkpoint, "_cond", None), "_waiters", None)
    if checkpoint is None or waiters is None:
        return
    checkpoint.clear()
    deadline = time.monotonic() + limit_s
    while not waiters and assoc.is_alive() and assoc.is_established and time.monotonic() < deadline:
        time.sleep(0.0002)


def _meta_of(data: bytes) -> tuple[str, str]:
    """(SOP class UID, transfer syntax UID) from a Part 10 file's File Meta Information."""
    # Only the meta group is read (no data set element is asked for): pixel data stays untouched.
    meta = dcmread(BytesIO(data), stop_before_pixels=True, specific_tags=[]).file_meta
    return str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)


class DicomForwarding:
    """The ledger rows of arrived studies and one forwarder per PACS."""

    def __init__(
        self,
        config: DicomGatewayConfig,
        *,
        plane: DataPlane,
        ledger: ForwardLedger,
        audit: AuditLog,
        client_ssl: ssl.SSLContext | None = None,
        on_outcome: Callable[[Forward, Attempt], None] | None = None,
    ) -> None:
        """`client_ssl`: the facility's mutual-TLS client context, for destinations with ``tls``;
        `on_outcome` hears every attempt's outcome after it is audited (the metrics)."""
        # Sent from a file's descriptor without decoding: the data set leaves byte for byte as it arrived.
        _config.STORE_SEND_CHUNKED_DATASET = True
        self.config = config
        self._plane = plane
        self._ledger = ledger
        self._audit = audit
        self._ssl = client_ssl
        self._extra_outcome = on_outcome
        self._forwarders = {
            d.name: Forwarder(ledger, GATEWAY, d.name, self._deliver_to(d), on_outcome=self._on_outcome)
            for d in config.destinations
        }
        plane.add_arrival_listener(self.arrived)

    def arrived(self, manifest: Manifest) -> None:
        """An arrival listener: a study now durable in the inbox is owed to every PACS."""
        if manifest.kind is not TransferKind.STUDY or not self._forwarders:
            return
        self._ledger.add(GATEWAY, manifest.transfer_id, list(self._forwarders))
        for forwarder in self._forwarders.values():
            forwarder.wake()

    def reconcile(self) -> int:
        """At start-up: delivered studies with no ledger row (a crash between the inbox commit and the
        ledger write) are owed now, oldest first. Returns how many."""
        if not self._forwarders:
            return 0
        added = 0
        # The newest arrivals only (what a crash can have caught between the two commits), so a large
        # inbox is never loaded whole; on a facility that enables the gateway with studies already in its
        # inbox, the newest of those are forwarded too.
        for record in reversed(self._plane.records.list_incoming(limit=RECONCILE_NEWEST)):
            manifest = record.manifest
            owed = record.state is Incoming.DELIVERED and manifest.kind is TransferKind.STUDY
            if owed and not self._ledger.known(GATEWAY, manifest.transfer_id):
                self._ledger.add(GATEWAY, manifest.transfer_id, list(self._forwarders))
                added += 1
        return added

    async def run(self) -> None:
        added = self.reconcile()
        if added:
            log.info("DICOM forwarding: %d arrived studies were not yet owed to the PACS", added)
        async with asyncio.TaskGroup() as tg:
            for forwarder in self._forwarders.values():
                tg.create_task(forwarder.run())

    def destinations(self) -> list[str]:
        return list(self._forwarders)

    def _on_outcome(self, forward: Forward, attempt: Attempt) -> None:
        event = AUDIT_EVENT[attempt.verdict]
        if attempt.verdict is Verdict.DELIVERED:
            log.info("DICOM: transfer %s delivered to %s", forward.transfer_id, forward.destination)
        self._audit.record(
            event,
            gateway=GATEWAY,
            destination=forward.destination,
            transfer=forward.transfer_id,
            detail=attempt.detail,
        )
        if self._extra_outcome is not None:
            self._extra_outcome(forward, attempt)

    def _deliver_to(self, destination: DicomDestination) -> Any:
        async def deliver(forward: Forward) -> Attempt:
            record = self._plane.records.incoming(forward.transfer_id)
            if record is None or record.state is not Incoming.DELIVERED:
                return Attempt(Verdict.PARK, "the transfer is no longer in the inbox")
            # Located here (the records are the loop thread's); read and decrypted in the sending thread.
            try:
                located = [
                    self._plane.inbox.locate(forward.transfer_id, i)
                    for i in range(len(record.manifest.files))
                ]
            except QlinkError as exc:
                return Attempt(Verdict.PARK, f"the inbox cannot give the study: {exc}")
            return await asyncio.to_thread(self.attempt_study, destination, located)

        return deliver

    def attempt_study(
        self, destination: DicomDestination, located: list[tuple[Path | bytes, bytes, str]]
    ) -> Attempt:
        """`_send_study`, its failures turned into a verdict: the network's (OSError) are retried by the
        forwarder; anything else (an at-rest copy that fails its integrity check, a file pydicom or
        pynetdicom cannot read) parks the study, so one bad study never stops the daemon or holds the
        line for the studies behind it."""
        try:
            return self._send_study(destination, located)
        except (OSError, TimeoutError):
            raise
        except Exception as exc:
            log.exception("DICOM forwarding to %s: cannot send a study", destination.name)
            return Attempt(Verdict.PARK, f"cannot send the study: {type(exc).__name__}: {exc}")

    def _send_study(
        self, destination: DicomDestination, located: list[tuple[Path | bytes, bytes, str]]
    ) -> Attempt:
        """Every instance offered in its own syntax (blocking: a worker thread). Each instance is decrypted
        once, while the one before it is sent (`_opened_ahead`), so the contexts to propose are learnt as
        the study is read: the association proposes those seen so far, and an instance of a class or
        syntax not proposed yet opens the next one (a study of one class and syntax, the usual case, takes
        one association)."""
        assoc: Any = None
        proposed: dict[tuple[str, str], None] = {}
        results: list[InstanceResult] = []
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qlink-dicom-open")
        try:
            for index, data in enumerate(_opened_ahead(located, pool)):
                meta = _meta_of(data)
                if assoc is None or meta not in proposed:
                    if assoc is not None and assoc.is_established:
                        assoc.release()
                    if len(proposed) >= MAX_CONTEXTS:
                        proposed.clear()
                    proposed[meta] = None
                    assoc = self._associate(destination, proposed)
                    if not assoc.is_established:
                        why = "rejected" if assoc.is_rejected else "aborted or not answered"
                        where = f"{destination.ae_title} at {destination.address}"
                        return verdict_of((), associated=False, why=f"{where}: association {why}")
                results.append(self._send_one(assoc, index, data, *meta))
                if not assoc.is_established:
                    break
        finally:
            # An instance opened ahead and never sent is dropped (its decryption is waited for, not used).
            pool.shutdown(wait=True, cancel_futures=True)
            if assoc is not None and assoc.is_established:
                assoc.release()
        results += [
            InstanceResult(i, None, "association ended before it was sent")
            for i in range(len(results), len(located))
        ]
        return verdict_of(results, associated=True)

    def _associate(self, destination: DicomDestination, contexts: dict[tuple[str, str], None]) -> Any:
        # Its socket acknowledges at once: a PACS that splits its response costs no delayed-ACK wait.
        ae = PromptAE(ae_title=self.config.ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.config.timeout_s
        # Without it a PACS host that drops packets holds the attempt for the kernel's TCP timeout.
        ae.connection_timeout = self.config.timeout_s
        for sop_class, syntax in contexts:
            ae.add_requested_context(sop_class, syntax)
        address = destination.address
        if destination.tls:
            if self._ssl is None:
                raise OSError(f"{destination.name}: DICOM TLS asked for, but the facility has no TLS context")
            tls_args = (self._ssl, address.host)
            return ae.associate(address.host, address.port, ae_title=destination.ae_title, tls_args=tls_args)
        return ae.associate(address.host, address.port, ae_title=destination.ae_title)

    @staticmethod
    def _send_one(assoc: Any, index: int, data: bytes, sop_class: str, syntax: str) -> InstanceResult:
        accepted = [
            cx
            for cx in assoc.accepted_contexts
            if cx.abstract_syntax == sop_class and syntax in cx.transfer_syntax
        ]
        if not accepted:
            return InstanceResult(
                index, None, f"no presentation context accepted for SOP class {sop_class} in {syntax}", True
            )
        _park_reactor(assoc)
        # A memory file: the decrypted instance never touches the disk, and pynetdicom reads it by path.
        fd = os.memfd_create("qlink-dicom-forward", os.MFD_CLOEXEC)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            status = assoc.send_c_store(Path(f"/proc/self/fd/{fd}"))
        except RuntimeError:
            # pynetdicom refuses to send on an association its reactor has just seen end (the PACS went
            # away after the last check): a lost association, retried, not a study to park.
            if assoc.is_established:
                raise
            return InstanceResult(index, None, "association lost before the C-STORE was sent")
        finally:
            os.close(fd)
        code = getattr(status, "Status", None)
        if code is None:
            return InstanceResult(index, None, "no C-STORE response (timeout or association lost)")
        comment = getattr(status, "ErrorComment", "")
        detail = f"status 0x{int(code):04X}" + (f" ({comment})" if comment else "")
        return InstanceResult(index, int(code), detail)
