"""Studies and the files that make them: grouping DICOM instances, and expanding the paths a user names.

A study is every instance sharing a StudyInstanceUID (PS3.3; docs/references.md §6). A SOPInstanceUID
names one instance in the world, so the same one twice, in one study or across two, means a copy or a
corrupt file: refused, naming both files. Non-DICOM content (images, FHIR, HL7) belongs to no study and
is left out of the groups.

Objects without a StudyInstanceUID (JPEG-LS test objects, some secondary captures and exports of older
systems) are grouped by PatientID and folder: those in one folder of the export (the folder part of their
relative name) with the same PatientID, or with none, travel as one transfer. A folder is how an export
keeps a series or a patient's objects together, and a PatientID keeps two patients' objects apart even in
one folder; one transfer per file would flood the receiver's inbox with single objects that belong
together. Such a group has no study UID (`StudyGroup.study_uid` None) and says how it was grouped.

Directory expansion (`collect_files`) names each file by its path relative to the directory given, in
POSIX form ("SE1/IM1"), so a CD export whose series folders repeat file names keeps them apart and the
receiver can rebuild the tree. Hidden files and folders and DICOMDIR indexes are skipped and reported
(`Skipped`); a symbolic link inside a directory is refused, since it may lead out of the tree the user
chose.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from qlinkmed.qlinkd.content.kinds import ContentInfo, ContentKind
from qlinkmed.qlinkd.errors import ContentError

DICOMDIR = "DICOMDIR"
"""The media directory index of PS3.10: it describes files, it is not an instance, so directory expansion
skips it (and reports it). It is not used for the file list: the folder walk finds every file it indexes,
and an index can be stale or name files in another case than the file system's."""
BY_STUDY = "StudyInstanceUID"
BY_PATIENT_AND_FOLDER = "PatientID and folder (no StudyInstanceUID)"


@dataclass(frozen=True, slots=True, kw_only=True)
class StudyGroup:
    """The instances of one study (or of one PatientID and folder, for objects without a study), in the
    order they were given."""

    study_uid: str | None
    """StudyInstanceUID shared by every instance; None for objects without one."""
    names: tuple[str, ...]
    """The file names of the instances, as given."""
    infos: tuple[ContentInfo, ...]
    """The instances' ContentInfo, in the same order as `names`."""
    series_uids: tuple[str, ...]
    """Distinct SeriesInstanceUIDs, in order of first appearance."""
    modalities: tuple[str, ...]
    """Distinct modalities, in order of first appearance."""
    grouped_by: str = BY_STUDY
    """How the instances were grouped: `BY_STUDY` or `BY_PATIENT_AND_FOLDER`."""
    folder: str | None = None
    """For `BY_PATIENT_AND_FOLDER`: the folder part of the names ("" for the top)."""

    @property
    def instances(self) -> int:
        """Number of instances."""
        return len(self.names)

    @property
    def size(self) -> int:
        """Total bytes of the instances."""
        return sum(info.size for info in self.infos)


@dataclass(frozen=True, slots=True)
class Found:
    """A file to check and send: where it is, and the name it travels under."""

    path: Path
    name: str
    """Its path relative to the directory given ("SE1/IM1"), or its bare name when named directly."""
    in_folder: bool
    """Found by expanding a directory (False: named by the user): non-content files found in a folder
    are skipped, not fatal."""


@dataclass(frozen=True, slots=True)
class Skipped:
    """A file directory expansion (or the sender's content check) left out, and why."""

    path: Path
    reason: str


def group_studies(infos: Sequence[tuple[str, ContentInfo]]) -> list[StudyGroup]:
    """Group (name, info) pairs of DICOM instances by StudyInstanceUID (and those without one by PatientID
    and folder, see the module docstring), groups in order of first appearance. Non-DICOM entries are
    skipped. A SOPInstanceUID seen twice raises ContentError naming the second file, with the first named
    in the problem."""
    seen: dict[str, str] = {}
    members: dict[tuple[str, ...], list[tuple[str, ContentInfo]]] = {}
    for name, info in infos:
        if info.kind is not ContentKind.DICOM:
            continue
        if not info.sop_instance_uid:
            raise ContentError(name, "DICOM info without SOPInstanceUID")
        sop = info.sop_instance_uid
        if sop in seen:
            raise ContentError(name, f"duplicate SOPInstanceUID {sop}: also in {seen[sop]}")
        seen[sop] = name
        if info.study_uid:
            key: tuple[str, ...] = (BY_STUDY, info.study_uid)
        else:
            key = (BY_PATIENT_AND_FOLDER, info.patient_id or "", posixpath.dirname(name))
        members.setdefault(key, []).append((name, info))
    return [
        StudyGroup(
            study_uid=key[1] if key[0] == BY_STUDY else None,
            names=tuple(name for name, _ in group),
            infos=tuple(info for _, info in group),
            series_uids=tuple(dict.fromkeys(i.series_uid for _, i in group if i.series_uid)),
            modalities=tuple(dict.fromkeys(i.modality for _, i in group if i.modality)),
            grouped_by=key[0],
            folder=None if key[0] == BY_STUDY else key[2],
        )
        for key, group in members.items()
    ]


def collect_paths(paths: Sequence[Path]) -> list[Path]:
    """The files `collect_files` finds, without their names or what it skipped."""
    return [found.path for found in collect_files(paths)[0]]


def collect_files(paths: Sequence[Path]) -> tuple[list[Found], list[Skipped]]:
    """The files named by `paths`, directories expanded recursively, and what the expansion skipped.

    - A path that does not exist, or is neither a regular file nor a directory, raises ContentError.
    - A file named directly is kept as given, hidden or not, under its bare name.
    - Inside a directory: files sorted by their path relative to it, named by that path in POSIX form;
      hidden files and directories (name starting with ".") and DICOMDIR index files are skipped and
      listed in the second list, and so is anything not a regular file (a FIFO would block the reader).
      A symbolic link (to a file or a directory) raises ContentError: it may lead outside the directory.
    - A file reached twice (named and also inside a named directory) is listed once, first place kept.
    """
    out: list[Found] = []
    skipped: list[Skipped] = []
    seen: set[Path] = set()

    def add(found: Found) -> None:
        key = found.path.resolve()
        if key not in seen:
            seen.add(key)
            out.append(found)

    for given in paths:
        path = Path(given)
        if path.is_dir():
            files, left_out = _walk(path)
            for found in files:
                add(found)
            skipped += left_out
        elif path.is_file():
            add(Found(path, path.name, in_folder=False))
        elif path.exists() or path.is_symlink():
            problem = "dangling symbolic link" if not path.exists() else "not a regular file or directory"
            raise ContentError(str(path), problem)
        else:
            raise ContentError(str(path), "no such file or directory")
    return out, skipped


def _walk(root: Path) -> tuple[list[Found], list[Skipped]]:
    def refuse(exc: OSError) -> None:
        raise ContentError(exc.filename or str(root), f"cannot read directory: {exc.strerror}")

    found: list[Found] = []
    skipped: list[Skipped] = []
    for directory, dirnames, filenames in os.walk(root, onerror=refuse):
        for name in (*dirnames, *filenames):
            if Path(directory, name).is_symlink():
                raise ContentError(
                    str(Path(directory, name)),
                    "symbolic link inside the folder: refused, it may lead outside it (copy the file in)",
                )
        for hidden in sorted(d for d in dirnames if d.startswith(".")):
            skipped.append(Skipped(Path(directory, hidden), "hidden folder"))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for filename in sorted(filenames):
            path = Path(directory, filename)
            if filename.startswith("."):
                skipped.append(Skipped(path, "hidden file"))
            elif filename.upper() == DICOMDIR:
                skipped.append(Skipped(path, "DICOMDIR index (the files it lists are sent from the folder)"))
            elif not stat.S_ISREG(path.lstat().st_mode):
                skipped.append(Skipped(path, "not a regular file"))
            else:
                relative = path.relative_to(root)
                found.append(Found(path, relative.as_posix(), in_folder=True))
    found.sort(key=lambda f: f.path.relative_to(root).parts)
    return found, skipped
