"""The receiver's inbox: chunks spooled in order and made durable before they are acknowledged, and a
finished transfer checked (each file's SHA-256 against the manifest, and its content) and stored in its
at-rest form (images as cipher images, everything else under AES-256-GCM) before the peer hears
"delivered". Every chunk is already authenticated by the session's AEAD; the hash check, done once where
each file is read for its at-rest form, proves the study is the one the manifest describes end to end.
Delivery is exactly once: a transfer ID already delivered is answered from the records and never written
again.

Layout under ``state_dir/inbox`` (or the ``[inbox] dir`` an operator names): ``.spool/<transfer_id>``, the
manifest's files back to back, while receiving; ``<transfer_id>/<file index>`` (at-rest blobs) once
delivered. An EHR message arrives whole in one frame and is written straight to ``<transfer_id>/0``, in
the quantum one-time-pad form (`content.qotp_at_rest`) or, when the pool is short, under AES-256-GCM; its
key is kept in the key store (`rest_keys`), so nothing in this directory opens without keys.sqlite3.
Names from the peer never become paths. One spool file per transfer, not one per file: a study of a
thousand small slices then costs one fdatasync per SYNC_BYTES instead of a create and an fsync per slice
(the receiver's largest cost before).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from qlinkmed.qlinkd.access.departments import DepartmentRules
from qlinkmed.qlinkd.content import ContentInfo, at_rest, qotp_at_rest
from qlinkmed.qlinkd.content.summary import InboxSummary, summarize
from qlinkmed.qlinkd.content.worker import ContentValidator, FileSlice, Source
from qlinkmed.qlinkd.dataplane.manifest import Manifest, advance_past_complete
from qlinkmed.qlinkd.dataplane.outbox import fsync_dir
from qlinkmed.qlinkd.dataplane.records import Incoming, IncomingRecord, TransferRecords
from qlinkmed.qlinkd.dataplane.rest_keys import RestKeys
from qlinkmed.qlinkd.dataplane.spool import Spool
from qlinkmed.qlinkd.errors import ContentError, StoreError, TransferError
from qlinkmed.qlinkd.ops import entropy

_SPOOL = ".spool"
_STAGE = ".stage-"


def at_rest_key(material: bytes, transfer_id: str) -> bytes:
    """The key a delivered transfer is stored under: HKDF-SHA256 of the session's QKD key material, bound
    to the transfer."""
    info = b"qlink inbox at-rest|" + transfer_id.encode()
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(material)


class TransferRefused(TransferError):
    """The transfer can never complete (a file's hash or content is wrong): refuse it for good."""


def _write_new(path: Path, data: bytes) -> None:
    """Create `path` (0600, never over an existing file) holding `data`, fsynced; os.write may write
    less than asked, so it loops."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _checked(validator: ContentValidator, manifest: Manifest, index: int, source: Source) -> ContentInfo:
    """File `index`'s content, validated (which hashes it once) and matched against the manifest. Blocking:
    call it from a thread."""
    entry = manifest.files[index]
    try:
        info = validator.validate_blocking(entry.name, source)
    except ContentError as exc:
        raise TransferRefused(str(exc), transfer=manifest.transfer_id) from None
    if info.size != entry.size or info.sha256 != entry.sha256:
        raise TransferRefused(f"{entry.name}: bytes differ from the manifest", transfer=manifest.transfer_id)
    return info


@dataclass(slots=True)
class _Active:
    manifest: Manifest
    starts: list[int]
    """Where each file begins in the spool (the sizes before it, summed)."""
    index: int
    offset: int
    spool: Spool
    owner: object = None
    unsynced: int = 0


@dataclass(frozen=True, slots=True)
class SyncPoint:
    """Everything spooled for a transfer up to (file_index, offset), and the sync that makes it durable."""

    transfer_id: str
    file_index: int
    offset: int
    complete: bool
    durable: Future[None]


@dataclass(frozen=True, slots=True)
class Position:
    state: Incoming | None
    """None: nothing held yet (a new transfer)."""
    file_index: int
    offset: int
    reason: str | None = None


class Inbox:
    def __init__(
        self,
        root: Path,
        records: TransferRecords,
        *,
        facility: str,
        validator: ContentValidator | None = None,
        departments: DepartmentRules | None = None,
        rest_keys: RestKeys | None = None,
        operator_dir: bool = False,
    ) -> None:
        """`departments`: the facility's `[departments]` rules, naming each arrival's department in its
        summary (None: arrivals name none). `rest_keys`: where EHR messages' at-rest keys are kept (the
        key store); None keeps an EHR message's sealed blob and key in its record, as qlinkd did before
        the key store held them. `operator_dir`: `root` is the operator's ``[inbox] dir``, whose mode is
        theirs to set."""
        self.root = root
        self._departments = departments
        self._validator = validator or ContentValidator()
        self._records = records
        self._facility = facility
        self.rest_keys = rest_keys
        self._spool = root / _SPOOL
        # The inbox holds patient data at rest: only the daemon's user may list it. (mkdir's parents=True
        # would make the inbox itself with the umask's mode; an inbox an older version left 0755 is fixed.)
        # A directory the operator named keeps the mode they gave it: it may be shared storage whose
        # access they manage, and what lies in it opens only with keys kept elsewhere.
        if not (operator_dir and root.is_dir()):
            root.mkdir(mode=0o700, parents=True, exist_ok=True)
            root.chmod(0o700)
        self._spool.mkdir(mode=0o700, exist_ok=True)
        self._active: dict[str, _Active] = {}
        self._summaries: dict[str, InboxSummary] = {}
        """What the listing says of a transfer, from its validation (in a thread), until its delivery is
        recorded with it."""
        self._sweep_spools()

    # ---- receiving

    def offer(self, manifest: Manifest, peer: str, owner: object = None) -> Position:
        """Where the sender of `manifest` should start. Creates the record of a new transfer. `owner` (the
        connection) holds the transfer's open spool until ``release``; a later offer takes it over."""
        if manifest.sender != peer or manifest.recipient != self._facility:
            raise TransferError(
                f"manifest names {manifest.sender} -> {manifest.recipient}, the connection is "
                f"{peer} -> {self._facility}",
                transfer=manifest.transfer_id,
            )
        record = self._records.incoming(manifest.transfer_id)
        if record is not None and record.manifest.to_json() != manifest.to_json():
            raise TransferError("offered again with another manifest", transfer=manifest.transfer_id)
        if record is not None and record.state is not Incoming.RECEIVING:
            return Position(record.state, len(manifest.files), 0, record.reason)
        if record is None:
            self._records.begin_incoming(manifest)
            index, offset = 0, 0
        else:
            index, offset = record.file_index, record.file_offset
        self._close(manifest.transfer_id)
        index, offset = advance_past_complete(manifest, index, offset)
        self._active[manifest.transfer_id] = self._open_spool(manifest, index, offset, owner)
        return Position(None if record is None else Incoming.RECEIVING, index, offset)

    def _open_spool(self, manifest: Manifest, index: int, offset: int, owner: object) -> _Active:
        """Open the transfer's spool at the durable position, cutting anything after it (written but never
        synced and acknowledged)."""
        starts = manifest.file_starts()
        fd = os.open(self._spool / manifest.transfer_id, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.ftruncate(fd, starts[index] + offset)
            fsync_dir(self._spool)
        except BaseException:
            os.close(fd)
            raise
        return _Active(manifest, starts, index, offset, Spool(fd), owner=owner)

    def write_chunk(self, transfer_id: str, index: int, offset: int, data: bytes) -> bool:
        """Spool one chunk; it must be exactly the next bytes expected (TransferError otherwise). True when
        every file is complete. A sync point taken later covers it."""
        active = self._active.get(transfer_id)
        if active is None:
            raise TransferError("chunk for a transfer not offered on this connection", transfer=transfer_id)
        if (index, offset) != (active.index, active.offset):
            raise TransferError(
                f"chunk at file {index} offset {offset}, expected file {active.index} offset {active.offset}",
                transfer=transfer_id,
            )
        entry = active.manifest.files[index]
        if offset + len(data) > entry.size or not data:
            raise TransferError(f"chunk of {len(data)} bytes overruns {entry.name}", transfer=transfer_id)
        active.spool.write(data, active.starts[index] + offset)
        active.offset += len(data)
        active.unsynced += len(data)
        if active.offset == entry.size:
            active.index, active.offset = advance_past_complete(active.manifest, index + 1, 0)
        return active.index >= len(active.manifest.files)

    def unsynced(self, transfer_id: str) -> int:
        active = self._active.get(transfer_id)
        return 0 if active is None else active.unsynced

    def sync_point(self, transfer_id: str) -> SyncPoint:
        """The position spooled so far and the queued sync that makes it durable; record it with
        ``record_durable`` once that is done (the event loop awaits it while later chunks are written)."""
        active = self._active[transfer_id]
        active.unsynced = 0
        complete = active.index >= len(active.manifest.files)
        return SyncPoint(transfer_id, active.index, active.offset, complete, active.spool.sync())

    def record_durable(self, point: SyncPoint) -> None:
        """Record `point` as the position a resume starts from. Raises what the sync raised, and refuses a
        point whose sync has not finished."""
        if not point.durable.done():
            raise TransferError("sync point recorded before it was durable", transfer=point.transfer_id)
        point.durable.result()
        self._records.advance(point.transfer_id, point.file_index, point.offset, complete=point.complete)

    def _close(self, transfer_id: str) -> None:
        active = self._active.pop(transfer_id, None)
        if active is not None:
            active.spool.close()

    def release(self, owner: object) -> None:
        """The connection `owner` ended: close the spools it holds (what it wrote but never synced is cut
        off again by the next offer)."""
        for transfer_id in [t for t, a in self._active.items() if a.owner is owner]:
            self._close(transfer_id)

    def close_all(self) -> None:
        for transfer_id in list(self._active):
            self._close(transfer_id)

    # ---- finishing

    def manifest(self, transfer_id: str) -> Manifest:
        record = self._records.incoming(transfer_id)
        if record is None:
            raise TransferError("unknown transfer", transfer=transfer_id)
        return record.manifest

    def store_at_rest(self, manifest: Manifest, key: bytes) -> str:
        """Validate every spooled file's content and write the at-rest forms into the inbox. Blocking and
        CPU-heavy (the image cipher): run it off the event loop. Each file is validated (by the validator's
        worker, reading it from the spool) before the daemon reads it. Returns the forms used,
        comma-separated; raises TransferRefused for content that does not validate."""
        transfer_id = manifest.transfer_id
        stage = self.root / f"{_STAGE}{transfer_id}"
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir(mode=0o700)
        forms = []
        infos = []
        path = self._spool / transfer_id
        with path.open("rb") as spool:
            spooled = os.fstat(spool.fileno()).st_size
            for i, (entry, start) in enumerate(zip(manifest.files, manifest.file_starts(), strict=False)):
                if spooled < start + entry.size:  # ours to fix, not the peer's: no refusal
                    raise TransferError(f"spool ends inside {entry.name}", transfer=transfer_id)
                info = _checked(self._validator, manifest, i, FileSlice(str(path), start, entry.size))
                infos.append(info)
                spool.seek(start)
                data = spool.read(entry.size)
                if len(data) != entry.size:
                    raise TransferError(f"spool ends inside {entry.name}", transfer=transfer_id)
                blob = at_rest.seal_at_rest(entry.name, data, info, key)
                forms.append(at_rest.at_rest_form(blob))
                _write_new(stage / str(i), blob)
        fsync_dir(stage)
        final = self.root / transfer_id
        shutil.rmtree(final, ignore_errors=True)
        os.rename(stage, final)
        fsync_dir(self.root)
        self._summaries[transfer_id] = self._summarize(manifest, infos)
        return ",".join(sorted(set(forms)))

    def _summarize(self, manifest: Manifest, infos: list[ContentInfo]) -> InboxSummary:
        return summarize(infos, peer=manifest.sender, departments=self._departments)

    def delivered(self, transfer_id: str, *, key: bytes, forms: str) -> None:
        """Record the delivery. The spool is left for ``drop_spool`` (freeing a large file's blocks takes
        long enough to keep it off the event loop); one left behind by a crash goes at the next start."""
        self._close(transfer_id)
        summary = self._summaries.pop(transfer_id, None)
        self._records.deliver(transfer_id, at_rest_key=key, forms=forms, summary=summary)

    def refuse(self, transfer_id: str, reason: str) -> None:
        self._close(transfer_id)
        self._summaries.pop(transfer_id, None)
        self._records.refuse_incoming(transfer_id, reason)
        self.drop_spool(transfer_id)
        shutil.rmtree(self.root / f"{_STAGE}{transfer_id}", ignore_errors=True)

    def drop_spool(self, transfer_id: str) -> None:
        (self._spool / transfer_id).unlink(missing_ok=True)

    def _sweep_spools(self) -> None:
        """Remove spools of transfers no longer being received (delivered or refused before a crash let
        their spool go), and any file the records do not know."""
        for path in self._spool.iterdir():
            record = self._records.incoming(path.name)
            if record is None or record.state is not Incoming.RECEIVING:
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)

    # ---- fetching

    def record(self, transfer_id: str) -> IncomingRecord | None:
        return self._records.incoming(transfer_id)

    def seal_ehr(self, manifest: Manifest, body: bytes, key: bytes) -> tuple[bytes, str]:
        """Check an EHR message against its manifest and content rules and seal it for rest, in memory:
        (at-rest blob, form). TransferRefused if it does not validate. Blocking: call it from a thread."""
        info = _checked(self._validator, manifest, 0, body)
        blob = at_rest.seal_at_rest(manifest.files[0].name, body, info, key)
        self._summaries[manifest.transfer_id] = self._summarize(manifest, [info])
        return blob, at_rest.at_rest_form(blob)

    def check_ehr(self, manifest: Manifest, body: bytes) -> ContentInfo:
        """Check an EHR message against its manifest and content rules (TransferRefused if it does not
        validate) and keep its listing summary until it is recorded. Blocking: call it from a thread."""
        info = _checked(self._validator, manifest, 0, body)
        self._summaries[manifest.transfer_id] = self._summarize(manifest, [info])
        return info

    def store_ehr(self, manifest: Manifest, body: bytes, info: ContentInfo, *, form: str, key: bytes) -> None:
        """Write a checked EHR message's at-rest file, ``<transfer_id>/0``, durably: under the one-time
        pad `key` (form "qotpe", `content.qotp_at_rest`) or under AES-256-GCM (form "aead"). Its key is
        kept in the key store, never here. Blocking: call it from a thread.

        Written to a name of its own, fsynced, then renamed over ``0`` (atomic) and the folders fsynced:
        the file is always whole, also when a sender that reconnected has the same message stored twice
        at once (both blobs open with the one key held for the transfer)."""
        transfer_id = manifest.transfer_id
        if form == qotp_at_rest.FORM_QOTPE:
            blob = qotp_at_rest.seal(body, key)
        else:
            blob = at_rest.seal_at_rest(manifest.files[0].name, body, info, key)
        folder = self.root / transfer_id
        folder.mkdir(mode=0o700, exist_ok=True)
        temp = folder / f".0-{entropy.random_bytes(8).hex()}"
        try:
            _write_new(temp, blob)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        os.replace(temp, folder / "0")
        fsync_dir(folder)
        fsync_dir(self.root)

    def deliver_ehr(self, manifest: Manifest, *, blob: bytes | None, key: bytes | None, forms: str) -> float:
        """Record the message delivered (`blob` and `key` None: its at-rest file is written and its key is
        in the key store); returns when its record was durable (epoch seconds)."""
        self._close(manifest.transfer_id)
        summary = self._summaries.pop(manifest.transfer_id, None)
        self._records.record_ehr(manifest, blob=blob, key=key, forms=forms, reason=None, summary=summary)
        stored_at = time.time()
        self.drop_spool(manifest.transfer_id)  # left by an earlier attempt that streamed it under AEAD
        return stored_at

    def refuse_ehr(self, manifest: Manifest, reason: str) -> None:
        self._close(manifest.transfer_id)
        self._summaries.pop(manifest.transfer_id, None)
        self._records.record_ehr(manifest, blob=None, key=None, forms=None, reason=reason)

    def locate(self, transfer_id: str, index: int) -> tuple[Path | bytes, bytes, str]:
        """(at-rest file or, for an EHR message, the at-rest blob itself; its key; the SHA-256 the original
        must have) of a delivered file."""
        record = self._records.incoming(transfer_id)
        if record is None or record.state is not Incoming.DELIVERED:
            raise TransferError("no delivered transfer by that id", transfer=transfer_id)
        if record.purged_at is not None:
            raise TransferError(f"purged by retention ({record.purge_reason})", transfer=transfer_id)
        if not 0 <= index < len(record.manifest.files):
            raise TransferError(f"transfer has no file {index}", transfer=transfer_id)
        key = self._records.at_rest_key(transfer_id)
        if key is None and self.rest_keys is not None:
            held = self.rest_keys.held(transfer_id)
            key = None if held is None else held[1]
        if key is None:
            raise StoreError(f"delivered transfer {transfer_id} has no at-rest key")
        blob = self._records.blob(transfer_id)  # an EHR message stored by an older qlinkd
        source = blob if blob is not None else self.root / transfer_id / str(index)
        return source, key, record.manifest.files[index].sha256

    @staticmethod
    def open_located(source: Path | bytes, key: bytes, sha256: str) -> bytes:
        """The original bytes from their at-rest form, bit-exact (blocking: decrypts; no database)."""
        blob = source.read_bytes() if isinstance(source, Path) else source
        if qotp_at_rest.is_qotpe(blob):
            data = qotp_at_rest.open_blob(blob, key)
        else:
            data = at_rest.open_at_rest(blob, key)
        if hashlib.sha256(data).hexdigest() != sha256:
            raise TransferError("at-rest copy does not match the manifest")
        return data

    def read_file(self, transfer_id: str, index: int) -> bytes:
        """The original bytes of a delivered file, bit-exact, from its at-rest form."""
        return self.open_located(*self.locate(transfer_id, index))
