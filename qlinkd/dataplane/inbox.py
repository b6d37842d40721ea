"""The receiver's inbox: chunks spooled in order and fsynced before they are acknowledged, each file's
SHA-256 checked against the manifest as it completes, and a finished transfer stored in its at-rest form
(images as cipher images, everything else under AES-256-GCM) before the peer hears "delivered". Delivery
is exactly once: a transfer ID already delivered is answered from the records and never written again.

Layout under ``state_dir/inbox``: ``.spool/<transfer_id>/<file index>`` while receiving,
``<transfer_id>/<file index>`` (at-rest blobs) once delivered. Names from the peer never become paths.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..content import ContentInfo, at_rest, validate
from ..errors import ContentError, TransferError
from .manifest import Manifest
from .outbox import fsync_dir
from .records import Incoming, IncomingRecord, TransferRecords

_SPOOL = ".spool"
_STAGE = ".stage-"
HASH_BLOCK = 8 << 20


def at_rest_key(material: bytes, transfer_id: str) -> bytes:
    """The key a delivered transfer is stored under: HKDF-SHA256 of the session's QKD key material, bound
    to the transfer."""
    info = b"qlink inbox at-rest|" + transfer_id.encode()
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(material)


def advance_past_complete(manifest: Manifest, index: int, offset: int) -> tuple[int, int]:
    """Skip files that are complete at `offset` (empty files, or a file just finished); both ends use this
    rule, so they agree where the next byte belongs. (len(files), 0) means every file is complete."""
    files = manifest.files
    while index < len(files) and offset >= files[index].size:
        index, offset = index + 1, 0
    return index, offset


class TransferRefused(TransferError):
    """The transfer can never complete (a file's hash or content is wrong): refuse it for good."""


def _checked(manifest: Manifest, index: int, data: bytes) -> ContentInfo:
    """File `index`'s content, validated (which hashes it once) and matched against the manifest."""
    entry = manifest.files[index]
    try:
        info = validate(entry.name, data)
    except ContentError as exc:
        raise TransferRefused(str(exc), transfer=manifest.transfer_id) from None
    if info.size != entry.size or info.sha256 != entry.sha256:
        raise TransferRefused(f"{entry.name}: bytes differ from the manifest", transfer=manifest.transfer_id)
    return info


@dataclass(slots=True)
class _Active:
    manifest: Manifest
    index: int
    offset: int
    owner: object = None
    fd: int | None = None
    hasher: hashlib._Hash = field(default_factory=hashlib.sha256)
    unsynced: int = 0
    pending_fds: list[int] = field(default_factory=list)
    """Descriptors of files completed since the last sync, fsynced and closed by ``sync``."""


@dataclass(frozen=True, slots=True)
class Position:
    state: Incoming | None
    """None: nothing held yet (a new transfer)."""
    file_index: int
    offset: int
    reason: str | None = None


class Inbox:
    def __init__(self, root: Path, records: TransferRecords, *, facility: str) -> None:
        self.root = root
        self._records = records
        self._facility = facility
        self._spool = root / _SPOOL
        self._spool.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._active: dict[str, _Active] = {}

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
            (self._spool / manifest.transfer_id).mkdir(mode=0o700, exist_ok=True)
            fsync_dir(self._spool)
            index, offset = 0, 0
        else:
            index, offset = record.file_index, record.file_offset
        self._close(manifest.transfer_id)
        active = _Active(manifest, *advance_past_complete(manifest, index, offset), owner=owner)
        self._resume_file(active)
        self._active[manifest.transfer_id] = active
        return Position(None if record is None else Incoming.RECEIVING, active.index, active.offset)

    def _resume_file(self, active: _Active) -> None:
        """Open the current file's spool at the durable offset: cut anything after it (written but never
        fsynced and acknowledged), and rebuild the running hash of what is kept."""
        if active.index >= len(active.manifest.files):
            return
        path = self._spool / active.manifest.transfer_id / str(active.index)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.ftruncate(fd, active.offset)
        hasher = hashlib.sha256()
        position = 0
        while position < active.offset:
            block = os.pread(fd, min(HASH_BLOCK, active.offset - position), position)
            if not block:
                raise TransferError("spool file shorter than its durable offset", transfer=path.parent.name)
            hasher.update(block)
            position += len(block)
        active.fd, active.hasher = fd, hasher

    def write_chunk(self, transfer_id: str, index: int, offset: int, data: bytes) -> bool:
        """Spool one chunk; it must be exactly the next bytes expected. True when every file is complete.
        TransferError for a chunk out of place; TransferRefused when a completed file's hash is wrong."""
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
        assert active.fd is not None
        view = memoryview(data)
        position = offset
        while view:
            written = os.pwrite(active.fd, view, position)
            view, position = view[written:], position + written
        active.hasher.update(data)
        active.offset += len(data)
        active.unsynced += len(data)
        if active.offset == entry.size:
            if active.hasher.hexdigest() != entry.sha256:
                raise TransferRefused(
                    f"{entry.name}: SHA-256 differs from the manifest", transfer=transfer_id
                )
            os.fsync(active.fd)
            os.close(active.fd)
            active.fd = None
            active.index, active.offset = advance_past_complete(active.manifest, index + 1, 0)
            self._resume_file(active)
        return active.index >= len(active.manifest.files)

    def unsynced(self, transfer_id: str) -> int:
        active = self._active.get(transfer_id)
        return 0 if active is None else active.unsynced

    def sync(self, transfer_id: str) -> tuple[int, int]:
        """fsync what was written and record it durable; the position to acknowledge."""
        active = self._active[transfer_id]
        for fd in active.pending_fds:
            os.fsync(fd)
            os.close(fd)
        active.pending_fds.clear()
        if active.fd is not None and active.unsynced:
            os.fsync(active.fd)
        active.unsynced = 0
        complete = active.index >= len(active.manifest.files)
        self._records.advance(transfer_id, active.index, active.offset, complete=complete)
        return active.index, active.offset

    def _close(self, transfer_id: str) -> None:
        active = self._active.pop(transfer_id, None)
        if active is None:
            return
        for fd in [*active.pending_fds, *([active.fd] if active.fd is not None else [])]:
            os.close(fd)

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
        CPU-heavy (the image cipher): run it off the event loop. Returns the forms used, comma-separated;
        raises TransferRefused for content that does not validate."""
        transfer_id = manifest.transfer_id
        stage = self.root / f"{_STAGE}{transfer_id}"
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir(mode=0o700)
        forms = []
        for i, entry in enumerate(manifest.files):
            data = (self._spool / transfer_id / str(i)).read_bytes()
            blob = at_rest.seal_at_rest(entry.name, data, _checked(manifest, i, data), key)
            forms.append(at_rest.at_rest_form(blob))
            fd = os.open(stage / str(i), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, blob)
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(stage)
        final = self.root / transfer_id
        shutil.rmtree(final, ignore_errors=True)
        os.rename(stage, final)
        fsync_dir(self.root)
        return ",".join(sorted(set(forms)))

    def delivered(self, transfer_id: str, *, key: bytes, forms: str) -> None:
        self._close(transfer_id)
        self._records.deliver(transfer_id, at_rest_key=key, forms=forms)
        shutil.rmtree(self._spool / transfer_id, ignore_errors=True)

    def refuse(self, transfer_id: str, reason: str) -> None:
        self._close(transfer_id)
        self._records.refuse_incoming(transfer_id, reason)
        shutil.rmtree(self._spool / transfer_id, ignore_errors=True)
        shutil.rmtree(self.root / f"{_STAGE}{transfer_id}", ignore_errors=True)

    # ---- fetching

    def record(self, transfer_id: str) -> IncomingRecord | None:
        return self._records.incoming(transfer_id)

    def seal_ehr(self, manifest: Manifest, body: bytes, key: bytes) -> tuple[bytes, str]:
        """Check an EHR message against its manifest and content rules and seal it for rest, in memory:
        (at-rest blob, form). TransferRefused if it does not validate."""
        blob = at_rest.seal_at_rest(manifest.files[0].name, body, _checked(manifest, 0, body), key)
        return blob, at_rest.at_rest_form(blob)

    def deliver_ehr(self, manifest: Manifest, *, blob: bytes, key: bytes, forms: str) -> None:
        self._close(manifest.transfer_id)
        self._records.record_ehr(manifest, blob=blob, key=key, forms=forms, reason=None)
        shutil.rmtree(self._spool / manifest.transfer_id, ignore_errors=True)

    def refuse_ehr(self, manifest: Manifest, reason: str) -> None:
        self._close(manifest.transfer_id)
        self._records.record_ehr(manifest, blob=None, key=None, forms=None, reason=reason)

    def locate(self, transfer_id: str, index: int) -> tuple[Path | bytes, bytes, str]:
        """(at-rest file or, for an EHR message, the at-rest blob itself; its key; the SHA-256 the original
        must have) of a delivered file."""
        record = self._records.incoming(transfer_id)
        if record is None or record.state is not Incoming.DELIVERED:
            raise TransferError("no delivered transfer by that id", transfer=transfer_id)
        if not 0 <= index < len(record.manifest.files):
            raise TransferError(f"transfer has no file {index}", transfer=transfer_id)
        key = self._records.at_rest_key(transfer_id)
        assert key is not None
        blob = self._records.blob(transfer_id)
        source = blob if blob is not None else self.root / transfer_id / str(index)
        return source, key, record.manifest.files[index].sha256

    @staticmethod
    def open_located(source: Path | bytes, key: bytes, sha256: str) -> bytes:
        """The original bytes from their at-rest form, bit-exact (blocking: decrypts; no database)."""
        blob = source.read_bytes() if isinstance(source, Path) else source
        data = at_rest.open_at_rest(blob, key)
        if hashlib.sha256(data).hexdigest() != sha256:
            raise TransferError("at-rest copy does not match the manifest")
        return data

    def read_file(self, transfer_id: str, index: int) -> bytes:
        """The original bytes of a delivered file, bit-exact, from its at-rest form."""
        return self.open_located(*self.locate(transfer_id, index))
