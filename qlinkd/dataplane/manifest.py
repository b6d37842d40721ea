"""What a transfer carries: its manifest, the contract both ends verify the bytes against.

A manifest is canonical JSON (sorted keys, no spaces), so its SHA-256 is the same at both ends and can be
quoted in the audit log and the Delivered message.

File names are relative POSIX paths ("SE1/IM1" from a CD export, or a bare "scan.png"), so a study keeps
its folder tree: components of 1..255 UTF-8 bytes, separated by "/", none empty, "." or "..", none
holding a control character (C0, DEL, C1) or a backslash; at most `MAX_NAME_DEPTH` components and
`MAX_NAME_BYTES` bytes in all. No name may be a folder of another ("SE1" and "SE1/IM1"), and no two may
differ only in case (they would collide on a case-insensitive file system). Both ends check
(`check_name`, and `Manifest` itself): the sender before it uploads, the receiver on every manifest a peer
offers. The daemon never uses a name as a path (the inbox stores files by index); `qlink inbox fetch`
rebuilds the tree under its output folder from names that passed these rules, and checks them again.
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
MAX_COMPONENT_BYTES = 255
"""NAME_MAX of Linux file systems, in UTF-8 bytes."""
MAX_NAME_BYTES = 1024
"""A whole relative name: room below PATH_MAX (4096) for the output folder a fetch writes under."""
MAX_NAME_DEPTH = 32
# C0 controls, DEL, C1 controls, and the backslash (a separator on Windows, and an escape in listings).
_BAD_CHARACTER = re.compile(r"[\x00-\x1f\x7f-\x9f\\]")


def check_name(name: str) -> str | None:
    """What is wrong with `name` as a file name in a manifest, or None when it is a safe relative path."""
    if not name:
        return "empty name"
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return "not valid Unicode (a lone surrogate)"
    if size > MAX_NAME_BYTES:
        return f"{size} bytes long, over {MAX_NAME_BYTES}"
    if name.startswith("/"):
        return "absolute path (starts with /)"
    bad = _BAD_CHARACTER.search(name)
    if bad:
        return f"holds the character U+{ord(bad.group()):04X} (a control character or backslash)"
    parts = name.split("/")
    if len(parts) > MAX_NAME_DEPTH:
        return f"{len(parts)} path components, over {MAX_NAME_DEPTH}"
    for part in parts:
        if not part:
            return "empty path component (// or a trailing /)"
        if part in (".", ".."):
            return f"path component {part!r} is not allowed"
        if len(part.encode("utf-8")) > MAX_COMPONENT_BYTES:
            return f"a path component is over {MAX_COMPONENT_BYTES} bytes"
    return None


def check_names(names: list[str] | tuple[str, ...]) -> tuple[int, str] | None:
    """(index, problem) of the first name in `names` that is unsafe or clashes with an earlier one (the
    same name, the same name in another case, or one name a folder of another), or None."""
    seen: dict[str, int] = {}
    folders: dict[str, int] = {}
    for i, name in enumerate(names):
        problem = check_name(name)
        if problem is not None:
            return i, f"bad name: {problem}"
        key = name.casefold()
        if key in seen:
            same = names[seen[key]] == name
            return (
                i,
                f"name {name!r} appears twice"
                if same
                else f"names {names[seen[key]]!r} and {name!r} differ only in case",
            )
        if key in folders:
            return i, f"name {name!r} is also the folder of {names[folders[key]]!r}"
        parts = key.split("/")
        for depth in range(1, len(parts)):
            folder = "/".join(parts[:depth])
            if folder in seen:
                return i, f"name {name!r} lies under {names[seen[folder]]!r}, which is a file"
            folders.setdefault(folder, i)
        seen[key] = i
    return None


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
        clash = check_names([f.name for f in self.files])
        if clash is not None:
            raise TransferError(f"manifest: files[{clash[0]}]: {clash[1]}")
        for i, f in enumerate(self.files):
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
