"""`validate`: sniff a file, then parse it completely with the library for its kind."""

from __future__ import annotations

import hashlib

from .dicom import validate_dicom
from .ehr import validate_fhir, validate_hl7
from .kinds import ContentInfo, ContentKind, identify
from .raster import validate_raster


def validate(name: str, data: bytes) -> ContentInfo:
    """Parse `data` (named `name` by the user) and describe it.

    Raises ContentError (qlinkd.errors) naming the file and precisely what is wrong: an unknown kind, a
    truncated or malformed file, a missing required attribute, an invalid resource or message.
    """
    kind, resource = identify(name, data)
    digest = hashlib.sha256(data).hexdigest()
    if resource is not None:  # FHIR: identify has parsed the JSON already
        return validate_fhir(name, data, resource, digest)
    if kind is ContentKind.DICOM:
        return validate_dicom(name, data, digest)
    if kind in (ContentKind.PNG, ContentKind.JPEG):
        return validate_raster(name, data, kind, digest)
    return validate_hl7(name, data, digest)
