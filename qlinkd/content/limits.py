"""How large a file qlink takes, and how far validation may decode one.

Three bounds, each with one message naming the file and the limit, checked by the `qlink` client before it
uploads anything and again by the daemon:

- `max_file_bytes`: a DICOM, PNG or JPEG file as stored (512 MiB by default).
- `max_ehr_bytes`: a FHIR JSON or HL7 v2 message (8 MiB): it travels as one request and one frame.
- `max_decoded_bytes`: what validation may decode one file to (512 MiB by default): a deflated DICOM data
  set inflated, a PNG's or JPEG's pixels. A deflated DICOM data set is further held to its declared pixel
  data plus `DATASET_SLACK_BYTES`, so a small file declaring a small image cannot inflate to a large one.

The byte limits are checked from a file's size and its first bytes only (`check_size`), before any parser
sees it; the decoded bounds by the validators of each kind, as they decode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from qlinkmed.qlinkd.content.kinds import (
    DICOM_PREFIX,
    DICOM_PREFIX_AT,
    JPEG_SOI,
    PNG_SIGNATURE,
    is_bare_dicom,
)
from qlinkmed.qlinkd.errors import ConfigError, ContentError

MIB = 1 << 20
DEFAULT_MAX_FILE_BYTES = 512 * MIB
DEFAULT_MAX_DECODED_BYTES = 512 * MIB
MAX_EHR_BYTES = 8 * MIB
"""The EHR limit: the local API's request-body bound and the default of `max_ehr_bytes`."""
DATASET_SLACK_BYTES = 16 * MIB
"""What a deflated DICOM data set may hold besides its declared pixel data (attributes, overlays, icons,
private elements): its inflated size is bounded by the pixel data the header declares plus this."""
HEAD_BYTES = DICOM_PREFIX_AT + len(DICOM_PREFIX)
"""How many leading bytes `check_size` needs to tell the binary kinds from the text ones."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ContentLimits:
    """The size bounds of content validation (the facility configuration's [content] section)."""

    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    """Largest DICOM, PNG or JPEG file accepted."""
    max_ehr_bytes: int = MAX_EHR_BYTES
    """Largest FHIR JSON or HL7 v2 message accepted; at most `MAX_EHR_BYTES`."""
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES
    """Most bytes validation decodes one file to: an inflated DICOM data set, a PNG's or JPEG's pixels."""

    def __post_init__(self) -> None:
        for name in ("max_file_bytes", "max_ehr_bytes", "max_decoded_bytes"):
            if getattr(self, name) < 1:
                raise ConfigError(name, f"must be a positive number of bytes, got {getattr(self, name)}")
        if self.max_ehr_bytes > MAX_EHR_BYTES:
            raise ConfigError("max_ehr_bytes", f"must be at most {MAX_EHR_BYTES} (the local API's bound)")

    def to_json(self) -> dict[str, int]:
        return {
            "max_file_bytes": self.max_file_bytes,
            "max_ehr_bytes": self.max_ehr_bytes,
            "max_decoded_bytes": self.max_decoded_bytes,
        }


DEFAULT_LIMITS = ContentLimits()


class _LimitsSection(Protocol):
    @property
    def max_file_bytes(self) -> int: ...
    @property
    def max_ehr_bytes(self) -> int: ...
    @property
    def max_decoded_bytes(self) -> int: ...


def limits_of(section: _LimitsSection) -> ContentLimits:
    """The limits a configuration's [content] section (`ops.config.ContentConfig`) sets."""
    return ContentLimits(
        max_file_bytes=section.max_file_bytes,
        max_ehr_bytes=section.max_ehr_bytes,
        max_decoded_bytes=section.max_decoded_bytes,
    )


def is_binary_kind(head: bytes) -> bool:
    """Whether `head` (the first `HEAD_BYTES` or more) starts a DICOM (Part 10 or a bare data set), PNG or
    JPEG file."""
    return (
        head[DICOM_PREFIX_AT:HEAD_BYTES] == DICOM_PREFIX
        or is_bare_dicom(head)
        or head.startswith((PNG_SIGNATURE, JPEG_SOI))
    )


def size_limit(head: bytes, limits: ContentLimits) -> tuple[int, str]:
    """(limit, what it bounds) for a file starting with `head`. Anything not DICOM, PNG or JPEG is held
    to the EHR limit: text is only ever a FHIR or HL7 v2 message."""
    if is_binary_kind(head):
        return limits.max_file_bytes, "a DICOM, PNG or JPEG file"
    return limits.max_ehr_bytes, "an EHR message (FHIR JSON or HL7 v2)"


def too_large(name: str, size: int, limit: int, what: str) -> ContentError:
    return ContentError(name, f"{size:,} bytes is over the {limit:,}-byte limit for {what}")


def check_size(name: str, head: bytes, size: int, limits: ContentLimits) -> None:
    """ContentError naming the file and the limit when a file of `size` bytes starting with `head` is
    larger than its kind may be."""
    limit, what = size_limit(head, limits)
    if size > limit:
        raise too_large(name, size, limit, what)


def check_decoded(name: str, size: int, limit: int, what: str) -> None:
    """ContentError when decoding would produce more than `limit` bytes; `what` says what was decoded."""
    if size > limit:
        raise ContentError(name, f"{what} decodes to {size:,} bytes, over the {limit:,}-byte limit")
