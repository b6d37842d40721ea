"""Studies and the files that make them: grouping DICOM instances, and expanding the paths a user names.

A study is every instance sharing a StudyInstanceUID (PS3.3; docs/references.md §6). A SOPInstanceUID
names one instance in the world, so the same one twice, in one study or across two, means a copy or a
corrupt file: refused, naming both files. Non-DICOM content (images, FHIR, HL7) belongs to no study and
is left out of the groups.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from qlinkmed.qlinkd.content.kinds import ContentInfo, ContentKind
from qlinkmed.qlinkd.errors import ContentError

DICOMDIR = "DICOMDIR"
"""The media directory index of PS3.10: it describes files, it is not an instance, so directory expansion
skips it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StudyGroup:
    """The instances of one study, in the order they were given."""

    study_uid: str
    """StudyInstanceUID shared by every instance."""
    names: tuple[str, ...]
    """The file names of the instances, as given."""
    infos: tuple[ContentInfo, ...]
    """The instances' ContentInfo, in the same order as `names`."""
    series_uids: tuple[str, ...]
    """Distinct SeriesInstanceUIDs, in order of first appearance."""
    modalities: tuple[str, ...]
    """Distinct modalities, in order of first appearance."""

    @property
    def instances(self) -> int:
        """Number of instances."""
        return len(self.names)

    @property
    def size(self) -> int:
        """Total bytes of the instances."""
        return sum(info.size for info in self.infos)


def group_studies(infos: Sequence[tuple[str, ContentInfo]]) -> list[StudyGroup]:
    """Group (name, info) pairs of DICOM instances by StudyInstanceUID, studies in order of first
    appearance. Non-DICOM entries are skipped. A SOPInstanceUID seen twice raises ContentError naming
    the second file, with the first named in the problem."""
    seen: dict[str, str] = {}
    members: dict[str, list[tuple[str, ContentInfo]]] = {}
    for name, info in infos:
        if info.kind is not ContentKind.DICOM:
            continue
        if not info.study_uid or not info.sop_instance_uid:
            raise ContentError(name, "DICOM info without StudyInstanceUID or SOPInstanceUID")
        sop = info.sop_instance_uid
        if sop in seen:
            raise ContentError(name, f"duplicate SOPInstanceUID {sop}: also in {seen[sop]}")
        seen[sop] = name
        members.setdefault(info.study_uid, []).append((name, info))
    return [
        StudyGroup(
            study_uid=study_uid,
            names=tuple(name for name, _ in group),
            infos=tuple(info for _, info in group),
            series_uids=tuple(dict.fromkeys(i.series_uid for _, i in group if i.series_uid)),
            modalities=tuple(dict.fromkeys(i.modality for _, i in group if i.modality)),
        )
        for study_uid, group in members.items()
    ]


def collect_paths(paths: Sequence[Path]) -> list[Path]:
    """The files named by `paths`, directories expanded recursively.

    - A path that does not exist, or is neither a regular file nor a directory, raises ContentError.
    - A file named directly is kept as given, hidden or not.
    - Inside a directory: files sorted by their path relative to it; hidden files and directories
      (name starting with ".") and DICOMDIR index files are skipped, and so is anything not a regular file
      (a FIFO would block the reader). Symbolic links to files are followed; links to directories are
      not descended (no loops).
    - A file reached twice (named and also inside a named directory) is listed once, first place kept.
    """
    out: list[Path] = []
    seen: set[Path] = set()

    def add(path: Path) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            out.append(path)

    for given in paths:
        path = Path(given)
        if path.is_dir():
            for found in _walk(path):
                add(found)
        elif path.is_file():
            add(path)
        elif path.exists() or path.is_symlink():
            problem = "dangling symbolic link" if not path.exists() else "not a regular file or directory"
            raise ContentError(str(path), problem)
        else:
            raise ContentError(str(path), "no such file or directory")
    return out


def _walk(root: Path) -> list[Path]:
    def refuse(exc: OSError) -> None:
        raise ContentError(exc.filename or str(root), f"cannot read directory: {exc.strerror}")

    found: list[Path] = []
    for directory, dirnames, filenames in os.walk(root, onerror=refuse):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for filename in filenames:
            if filename.startswith(".") or filename.upper() == DICOMDIR:
                continue
            path = Path(directory, filename)
            if path.is_file():
                found.append(path)
    return sorted(found, key=lambda p: p.relative_to(root).parts)
