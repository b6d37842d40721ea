"""What a transfer carries: its manifest, the contract both ends verify the bytes against.

A manifest is canonical JSON (sorted keys, no spaces), so its SHA-256 is the same at both ends and can be
quoted in the audit log and the Delivered message. File names are bare names (no directory part): the
receiver writes them under its own directories and never lets a peer choose a path.
"""

from __future__ import annotations

import enum
import hashlib
import itertools
import json
import re
import uuid
from dataclasses import dataclass, field

from qlinkmed.qcore.constants import is_facility_id
from qlinkmed.qlinkd.errors import TransferError

MAX_FILES = 100_000
MAX_FILE_BYTES = 1 << 40
MAX_MANIFEST_BYTES = 16 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}")
# Printable names without separators; the daemon never uses them as paths, but listings and fetches do.
_NAME = re.compile(r"[^/\\\x00-\x1f]{1,255}")


class TransferKind(enum.StrEnum):
    STUDY = "study"
    """DICOM instances sharing one StudyInstanceUID."""
    IMAGES = "images"
    """PNG or JPEG images."""
    EHR = "ehr"
    """One FHIR JSON resource or HL7 v2 message."""


@dataclass(frozen=True, slots=True)
class FileEntry:
    name: str
    size: int
    sha256: str
    content: str
    """The content kind (``dicom``, ``png``, ``jpeg``, ``fhir``, ``hl7``)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Manifest:
    transfer_id: str
    sender: str
    recipient: str
    kind: TransferKind
    files: tuple[FileEntry, ...]
    created: float
    """Seconds since the epoch when the sender queued the transfer."""
    study_uid: str | None = None
    _json: bytes | None = field(default=None, init=False, repr=False, compare=False)
    """The canonical JSON, made once: both ends quote it (and its digest) several times per transfer."""
    _sha256: str | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _require(_is_uuid(self.transfer_id), "transfer_id is not a UUID")
        _require(is_facility_id(self.sender), "sender is not a facility id")
        _require(is_facility_id(self.recipient), "recipient is not a facility id")
        _require(0 < len(self.files) <= MAX_FILES, f"a transfer holds 1..{MAX_FILES} files")
        names = set()
        for i, f in enumerate(self.files):
            _require(bool(_NAME.fullmatch(f.name)) and f.name not in (".", ".."), f"files[{i}]: bad name")
            _require(f.name not in names, f"files[{i}]: name {f.name!r} appears twice")
            names.add(f.name)
            _require(0 <= f.size <= MAX_FILE_BYTES, f"files[{i}]: bad size")
            _require(bool(_SHA256.fullmatch(f.sha256)), f"files[{i}]: sha256 is not 64 hex digits")
        if self.kind is TransferKind.EHR:
            _require(len(self.files) == 1, "an EHR transfer holds exactly one message")

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def file_starts(self) -> list[int]:
        """Where each file starts in the transfer's bytes laid end to end, then the total: the sender's
        acknowledged position and the receiver's spool offsets both count this way."""
        return list(itertools.accumulate((f.size for f in self.files), initial=0))

    def to_json(self) -> bytes:
        made = self._json
        if made is None:
            made = self._make_json()
            object.__setattr__(self, "_json", made)  # a cache on a frozen instance
        return made

    def _make_json(self) -> bytes:
        body = {
            "transfer_id": self.transfer_id,
            "sender": self.sender,
            "recipient": self.recipient,
            "kind": self.kind.value,
            "created": self.created,
            "study_uid": self.study_uid,
            "files": [[f.name, f.size, f.sha256, f.content] for f in self.files],
        }
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    def sha256(self) -> str:
        digest = self._sha256
        if digest is None:
            digest = hashlib.sha256(self.to_json()).hexdigest()
            object.__setattr__(self, "_sha256", digest)
        return digest

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        """Parse and validate; TransferError naming the problem otherwise."""
        if len(data) > MAX_MANIFEST_BYTES:
            raise TransferError(f"manifest of {len(data)} bytes exceeds {MAX_MANIFEST_BYTES}")
        try:
            body = json.loads(data)
            files = tuple(FileEntry(str(n), int(s), str(h), str(c)) for n, s, h, c in body["files"])
            study_uid = body.get("study_uid")
            return cls(
                transfer_id=str(body["transfer_id"]),
                sender=str(body["sender"]),
                recipient=str(body["recipient"]),
                kind=TransferKind(body["kind"]),
                files=files,
                created=float(body["created"]),
                study_uid=None if study_uid is None else str(study_uid),
            )
        except TransferError:
            raise
        except (ValueError, KeyError, TypeError) as exc:
            raise TransferError(f"malformed manifest ({type(exc).__name__}: {exc})") from None


def advance_past_complete(manifest: Manifest, index: int, offset: int) -> tuple[int, int]:
    """Skip files that are complete at `offset` (empty files, or a file just finished); both ends use this
    rule, so they agree where the next byte belongs. (len(files), 0) means every file is complete."""
    files = manifest.files
    while index < len(files) and offset >= files[index].size:
        index, offset = index + 1, 0
    return index, offset


def _is_uuid(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise TransferError(f"manifest: {message}")
