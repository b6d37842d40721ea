"""The DICOM gateway's SCP: C-ECHO and C-STORE from a facility's modalities and PACS, routed by the called
(and calling) AE title to a peer facility, and queued in the data plane as study transfers.

pynetdicom serves each association in a thread of its own. That thread does only blocking file work and
validation (through the daemon's ContentValidator, in its worker processes): the instance, exactly as the
modality encoded it, is written to the staging folder, checked, fsynced, and only then answered 0x0000.
What the event loop must know (an instance staged, an association ended) is handed to it with
``call_soon_threadsafe``; one association's events keep their order. The loop groups instances
(dicom_groups) and queues each group as one study transfer when its association ends or it falls quiet;
instances a crash left in staging are queued at start-up. Refusals: 0xA700 when the staging budget is
spent or the disk fails, 0xC000 with an ErrorComment naming the problem when the content rules refuse the
instance; an association no route matches is rejected (called AE title not recognised).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # generated at import

from qlinkmed.qlinkd.content.worker import ContentValidator, FileSlice
from qlinkmed.qlinkd.dataplane.manifest import FileEntry, TransferKind
from qlinkmed.qlinkd.dataplane.service import DataPlane
from qlinkmed.qlinkd.errors import ConfigError, ContentError, TransferError
from qlinkmed.qlinkd.gateways.dicom_config import DicomGatewayConfig
from qlinkmed.qlinkd.gateways.dicom_groups import Group, Grouping, StagedInstance
from qlinkmed.qlinkd.gateways.dicom_staging import STAGING_DIR, Staging
from qlinkmed.qlinkd.ops.audit import AuditLog

log = logging.getLogger("qlink.gateway.dicom")

GATEWAY = "dicom"
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
MAX_PDU_BYTES = 1 << 20
"""What we let a peer put in one PDU: large enough that a slice costs a few reads, small enough to hold."""
_COMMENT_CHARS = 64
"""ErrorComment is an LO: at most 64 characters."""


@dataclass(slots=True)
class _Association:
    id: str
    peer: str
    calling: str
    seq: int = 0
    unstored: int = 0
    """Bytes read since its last C-STORE was handled: what pynetdicom holds in memory for it."""


@dataclass(slots=True)
class ScpStatus:
    """What /v1/status shows of the SCP."""

    ae_title: str
    listening: str | None = None
    associations_open: int = 0
    instances_received: int = 0
    instances_refused: int = 0
    studies_queued: int = 0
    staging_bytes: int = 0
    last_error: str | None = None
    destinations: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "ae_title": self.ae_title,
            "listening": self.listening,
            "associations_open": self.associations_open,
            "instances_received": self.instances_received,
            "instances_refused": self.instances_refused,
            "studies_queued": self.studies_queued,
            "staging_bytes": self.staging_bytes,
            "last_error": self.last_error,
            "destinations": self.destinations,
        }


def _refusal(status: int, why: str) -> Dataset:
    ds = Dataset()
    ds.Status = status
    ds.ErrorComment = why[:_COMMENT_CHARS]
    return ds


class DicomScp:
    def __init__(
        self,
        config: DicomGatewayConfig,
        *,
        plane: DataPlane,
        validator: ContentValidator,
        audit: AuditLog,
        state_dir: Path,
        server_ssl: ssl.SSLContext | None = None,
        clock: Any = time.monotonic,
    ) -> None:
        """`server_ssl`: the facility's mutual-TLS server context, used when the configuration asks for
        DICOM TLS."""
        self.config = config
        self._plane = plane
        self._validator = validator
        self._audit = audit
        self._clock = clock
        self.staging = Staging(state_dir / STAGING_DIR, config.staging_max_bytes)
        self._grouping = Grouping()
        self._associations: dict[object, _Association] = {}
        self._lock = threading.Lock()  # _associations and the counters, shared with association threads
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed = asyncio.Event()
        self._pending: list[Group] = []
        self.status = ScpStatus(ae_title=config.ae_title)
        self._ae = self._make_ae()
        self._server: Any = None
        if config.tls and server_ssl is None:
            raise ConfigError("gateway.dicom.tls", "DICOM TLS needs the facility's TLS context")
        self._ssl = server_ssl if config.tls else None

    def _make_ae(self) -> AE:
        ae = AE(ae_title=self.config.ae_title)
        ae.maximum_associations = self.config.max_associations
        ae.maximum_pdu_size = MAX_PDU_BYTES
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.config.timeout_s
        # Routing decides which called titles are ours (EVT_REQUESTED), not pynetdicom's single-title check.
        ae.require_called_aet = False
        ae.add_supported_context(Verification)
        for context in AllStoragePresentationContexts:
            # Every transfer syntax: the instance is stored as encoded, so a compressed one needs no codec.
            if context.abstract_syntax is not None:
                ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        return ae

    # ---- the event loop's side

    async def start(self) -> int:
        """Queue what a crash left staged, then listen; returns the port."""
        self._loop = asyncio.get_running_loop()
        await self._recover()
        handlers: list[Any] = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_RELEASED, self._on_ended),
            (evt.EVT_ABORTED, self._on_ended),
            (evt.EVT_CONN_CLOSE, self._on_ended),
        ]
        listen = self.config.listen
        server = await asyncio.to_thread(
            self._ae.start_server,
            (listen.host, listen.port),
            block=False,
            evt_handlers=handlers,
            ssl_context=self._ssl,
        )
        if server is None:  # only with block=True
            raise RuntimeError("pynetdicom returned no server")
        self._server = server
        host, port = server.server_address[:2]
        self.status.listening = f"{host}:{port}"
        tls = " (DICOM TLS)" if self._ssl else ""
        log.info("DICOM SCP %s listening on %s:%s%s", self.config.ae_title, host, port, tls)
        return int(port)

    async def run(self) -> None:
        """Queue the groups as they become due, until cancelled. Instances of groups not yet queued then
        stay staged, and the next start queues them."""
        await self._flush_loop()

    def close(self) -> None:
        """Abort the open associations and stop listening (blocking; idempotent)."""
        server, self._server = self._server, None
        if server is not None:
            for association in list(server.active_associations):
                with contextlib.suppress(Exception):
                    association.abort()
            server.shutdown()

    async def _flush_loop(self) -> None:
        while True:
            self._changed.clear()
            now = self._clock()
            due = self._pending + self._grouping.quiet(now, self.config.quiet_s)
            self._pending = []
            for group in due:
                await self._queue_group(group, ended=group.association not in self._open_ids())
            wake = self._grouping.next_due(self.config.quiet_s)
            timeout = None if wake is None else max(0.0, wake - self._clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout)

    def _open_ids(self) -> set[str]:
        with self._lock:
            return {a.id for a in self._associations.values()}

    def _staged(self, association: _Association, instance: StagedInstance) -> None:
        replaced = self._grouping.add(association.id, association.peer, instance, self._clock())
        if replaced is not None:
            self.staging.remove([replaced.path], replaced.size, ended=False)
        self._changed.set()

    def _ended(self, association: str) -> None:
        self._pending.extend(self._grouping.end_association(association))
        self._changed.set()

    async def _queue_group(self, group: Group, *, ended: bool) -> None:
        instances = list(group.instances.values())
        entries = tuple(FileEntry(i.name, i.size, i.sha256, "dicom") for i in instances)
        try:
            manifest = self._plane.new_manifest(group.peer, TransferKind.STUDY, entries, group.study_uid)
            upload = self._plane.begin_upload(manifest)
        except (TransferError, OSError) as exc:
            # Acknowledged instances stay staged: the next start queues them.
            self._error(f"cannot queue a study for {group.peer}: {exc}")
            return
        try:
            await asyncio.to_thread(_copy_into, upload, [i.path for i in instances])
            self._plane.queue(upload)
        except (TransferError, OSError) as exc:
            upload.abandon()
            self._error(f"cannot queue a study for {group.peer}: {exc}")
            return
        except BaseException:
            upload.abandon()
            raise
        # Nobody waits for the delivery: the forwarding at the peer and the audit log report it.
        self._plane.forget_waiter(manifest.transfer_id)
        self.status.studies_queued += 1
        self._audit.record(
            "dicom_study_queued",
            gateway=GATEWAY,
            transfer=manifest.transfer_id,
            peer=group.peer,
            instances=len(instances),
            bytes=group.size,
        )
        # A crash before this removal queues the study again at the next start (at least once; a PACS
        # keeps one copy per SOP Instance UID).
        await asyncio.to_thread(self.staging.remove, [i.path for i in instances], group.size, ended=ended)

    async def _recover(self) -> None:
        """Instances acknowledged before a crash: validated again (for their study) and queued."""
        found = await asyncio.to_thread(self.staging.recover)
        for association, paths in found.items():
            peer = _peer_of(association)
            if peer is None or not self._plane.peer_known(peer):
                self._error(f"staged association {association} names no peer of this facility; left as is")
                continue
            for path in paths:
                try:
                    info = await self._validator.validate(
                        path.name, FileSlice(str(path), 0, path.stat().st_size)
                    )
                except (ContentError, OSError) as exc:
                    self._error(f"staged instance {path} no longer validates: {exc}; left as is")
                    continue
                staged = StagedInstance(
                    path=path,
                    name=_instance_name(info.sop_instance_uid, path),
                    size=info.size,
                    sha256=info.sha256,
                    study_uid=info.study_uid,
                )
                replaced = self._grouping.add(association, peer, staged, self._clock())
                if replaced is not None:  # sent twice before the crash: the earlier copy goes
                    await asyncio.to_thread(self.staging.remove, [replaced.path], replaced.size, ended=False)
            for group in self._grouping.end_association(association):
                await self._queue_group(group, ended=True)
            log.info("DICOM SCP: queued %d instance(s) staged before the last stop", len(paths))

    def _error(self, message: str) -> None:
        log.error("DICOM SCP: %s", message)
        self.status.last_error = message

    def snapshot(self) -> ScpStatus:
        with self._lock:
            self.status.associations_open = len(self._associations)
        self.status.staging_bytes = self.staging.used
        return self.status

    # ---- pynetdicom's association threads

    def _post(self, callback: Any, *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: the daemon is stopping
                loop.call_soon_threadsafe(callback, *args)

    def _on_requested(self, event: evt.Event) -> None:
        request = event.assoc.requestor.primitive
        if request is None:  # pynetdicom sets it before EVT_REQUESTED
            return
        called = str(request.called_ae_title).strip()
        calling = str(request.calling_ae_title).strip()
        route = self.config.route(called, calling)
        if route is None:
            log.warning("DICOM association from %r to %r refused: no route", calling, called)
            # Rejected permanent, by the service user: called AE title not recognised (PS3.8 9.3.4).
            event.assoc.acse.send_reject(0x01, 0x01, 0x07)
            # As pynetdicom's own rejections do: wait until the reject has left before the socket closes.
            event.assoc.kill()
            return
        association = _Association(id=f"{route.peer}.{uuid.uuid4().hex}", peer=route.peer, calling=calling)
        with self._lock:
            # The association id names the peer, so a crash's leftovers can be routed at the next start.
            self._associations[event.assoc] = association
        self._bound_reads(event.assoc, association)

    def _bound_reads(self, assoc: Any, association: _Association) -> None:
        """pynetdicom reads a PDU whole, whatever length the peer claims, and keeps a data set in memory
        until it is complete. This association's socket refuses both past what could be stored: a PDU
        larger than we offered, or more bytes for one instance than the largest file the content rules
        accept or the staging budget holds. The refusal reads as a lost connection (the association is
        aborted); nothing is acknowledged for the instance."""
        sock = assoc.dul.socket
        if sock is None:
            return
        read = sock.recv
        limit = min(self._validator.limits.max_file_bytes + MAX_PDU_BYTES, self.staging.max_bytes)

        def bounded_recv(nr_bytes: int) -> bytearray:
            if nr_bytes > MAX_PDU_BYTES:
                raise OSError(f"a PDU of {nr_bytes} bytes, more than the {MAX_PDU_BYTES} offered")
            association.unstored += nr_bytes
            if association.unstored > limit:
                raise OSError(f"an instance over {limit} bytes")
            data: bytearray = read(nr_bytes)
            return data

        sock.recv = bounded_recv

    def _on_ended(self, event: evt.Event) -> None:
        with self._lock:
            association = self._associations.pop(event.assoc, None)
        if association is not None:
            log.info(
                "DICOM association from %s for %s ended after %d instance(s)",
                association.calling,
                association.peer,
                association.seq,
            )
            self._post(self._ended, association.id)

    def _on_store(self, event: evt.Event) -> int | Dataset:
        with self._lock:
            association = self._associations.get(event.assoc)
            if association is not None:
                association.seq += 1
                seq = association.seq
        if association is None:
            return _refusal(OUT_OF_RESOURCES, "association not routed")
        data = event.encoded_dataset()
        association.unstored = 0
        if not self.staging.reserve(len(data)):
            self._count(refused=True)
            log.warning("DICOM SCP: staging full (%d bytes); instance refused", self.staging.max_bytes)
            return _refusal(OUT_OF_RESOURCES, "qlink staging full, retry later")
        try:
            part = self.staging.write_part(association.id, seq, data)
        except OSError as exc:
            self.staging.release(len(data))
            self._count(refused=True)
            log.error("DICOM SCP: cannot stage an instance: %s", exc)
            return _refusal(OUT_OF_RESOURCES, f"qlink cannot store: {exc.strerror or exc}")
        try:
            info = self._validator.validate_blocking(part.name, FileSlice(str(part), 0, len(data)))
            final = self.staging.commit(part)
        except ContentError as exc:
            self.staging.discard(part)
            self.staging.release(len(data))
            self._count(refused=True)
            log.warning("DICOM SCP: instance from %s refused: %s", association.calling, exc.problem)
            return _refusal(CANNOT_UNDERSTAND, exc.problem)
        except Exception as exc:
            # A disk error, or the validator closing under a stopping daemon: the modality sends again.
            self.staging.discard(part)
            self.staging.release(len(data))
            self._count(refused=True)
            log.error("DICOM SCP: cannot stage an instance: %s", exc)
            return _refusal(OUT_OF_RESOURCES, "qlink cannot store the instance now")
        staged = StagedInstance(
            path=final,
            name=_instance_name(info.sop_instance_uid, final),
            size=info.size,
            sha256=info.sha256,
            study_uid=info.study_uid,
        )
        self._count(refused=False)
        self._post(self._staged, association, staged)
        return SUCCESS

    def _count(self, *, refused: bool) -> None:
        with self._lock:
            if refused:
                self.status.instances_refused += 1
            else:
                self.status.instances_received += 1


def _instance_name(sop_instance_uid: str | None, path: Path) -> str:
    # A UID is digits and dots: a safe name. Without one (the content rules allow it), the staged number.
    if sop_instance_uid and all(c.isdigit() or c == "." for c in sop_instance_uid):
        return f"{sop_instance_uid}.dcm"
    return f"instance-{path.stem}.dcm"


def _peer_of(association: str) -> str | None:
    peer, dot, _ = association.rpartition(".")
    return peer if dot else None


def _copy_into(upload: Any, paths: list[Path]) -> None:
    """Write the staged instances into the outbox upload, in order (blocking)."""
    for index, path in enumerate(paths):
        upload.start_file(index)
        with path.open("rb") as source:
            while block := source.read(1 << 20):
                upload.write(block)
    upload.commit_files()
