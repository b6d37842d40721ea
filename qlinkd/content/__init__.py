"""What qlink carries and how it keeps it: content sniffing and validation (DICOM, PNG, JPEG, FHIR JSON,
HL7 v2), DICOM study grouping, path expansion for the client, and the at-rest form of received files.

Used by the daemon (uploads arrive as bytes plus the user's file name) and by the `qlink` client (which
checks files before uploading). Every refusal is a ``qlinkd.errors.ContentError(name, problem)``.
"""

from __future__ import annotations

from qlinkmed.qlinkd.content.at_rest import (
    FORM_AEAD,
    FORM_CIPHER_IMAGE,
    at_rest_form,
    open_at_rest,
    seal_at_rest,
)
from qlinkmed.qlinkd.content.kinds import UNKNOWN_KIND, ContentInfo, ContentKind, sniff
from qlinkmed.qlinkd.content.studies import (
    Found,
    Skipped,
    StudyGroup,
    collect_files,
    collect_paths,
    group_studies,
)
from qlinkmed.qlinkd.content.validate import validate

__all__ = [
    "FORM_AEAD",
    "FORM_CIPHER_IMAGE",
    "UNKNOWN_KIND",
    "ContentInfo",
    "ContentKind",
    "Found",
    "Skipped",
    "StudyGroup",
    "at_rest_form",
    "collect_files",
    "collect_paths",
    "group_studies",
    "open_at_rest",
    "seal_at_rest",
    "sniff",
    "validate",
]
