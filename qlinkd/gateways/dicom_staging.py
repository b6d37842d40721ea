"""The DICOM SCP's staging folder: instances acknowledged to a modality and not yet queued as a study.

Layout under ``state_dir/dicom-staging``: ``<association id>/<n>.dcm``, each instance a DICOM Part 10
file (the File Meta Information pynetdicom builds for the accepted context, then the data set exactly as
the modality encoded it). An instance is written as ``<n>.part``, checked, fsynced, renamed and its folder
fsynced before the modality hears 0x0000: a crash leaves either nothing it was told about or a complete
instance, and the complete ones are queued at the next start. The budget (`max_bytes`) bounds what the
folder holds; an instance past it is refused (0xA700) instead of filling the disk.

Blocking file work, used from pynetdicom's association threads and from worker threads of the event loop;
the byte count is guarded by a lock.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from pathlib import Path

from qlinkmed.qlinkd.dataplane.outbox import fsync_dir

STAGING_DIR = "dicom-staging"
_PART = ".part"
_INSTANCE = ".dcm"


class Staging:
    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._used = 0

    @property
    def used(self) -> int:
        return self._used

    def reserve(self, size: int) -> bool:
        """Count `size` bytes against the budget; False (nothing counted) if they do not fit."""
        with self._lock:
            if self._used + size > self.max_bytes:
                return False
            self._used += size
            return True

    def release(self, size: int) -> None:
        with self._lock:
            self._used = max(0, self._used - size)

    def write_part(self, association: str, seq: int, data: bytes) -> Path:
        """Write an instance not yet acknowledged (not fsynced: `commit` does that once it is checked)."""
        folder = self.root / association
        folder.mkdir(mode=0o700, exist_ok=True)
        part = folder / f"{seq}{_PART}"
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        return part

    @staticmethod
    def commit(part: Path) -> Path:
        """Make a checked instance durable under its final name."""
        fd = os.open(part, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        final = part.with_suffix(_INSTANCE)
        os.rename(part, final)
        fsync_dir(part.parent)
        return final

    @staticmethod
    def discard(path: Path) -> None:
        path.unlink(missing_ok=True)

    def remove(self, paths: list[Path], size: int, *, ended: bool) -> None:
        """Instances now queued in the outbox: deleted, their bytes returned to the budget. Once their
        association has `ended`, its folder goes too when empty (not before: it may still be sending)."""
        for path in paths:
            path.unlink(missing_ok=True)
        if ended:
            for folder in {p.parent for p in paths}:
                with contextlib.suppress(OSError):
                    folder.rmdir()  # another group of the association may still be queueing
        self.release(size)

    def recover(self) -> dict[str, list[Path]]:
        """At start-up, before the SCP serves: the acknowledged instances a crash left, by association,
        in arrival order; half-written ones (never acknowledged) are deleted. Their bytes are counted."""
        found: dict[str, list[Path]] = {}
        for folder in sorted(self.root.iterdir()):
            if not folder.is_dir():
                continue
            instances = []
            for entry in folder.iterdir():
                if entry.name.endswith(_PART):
                    entry.unlink(missing_ok=True)
                elif entry.name.endswith(_INSTANCE) and entry.name[: -len(_INSTANCE)].isdigit():
                    instances.append(entry)
            if not instances:
                shutil.rmtree(folder, ignore_errors=True)
                continue
            instances.sort(key=lambda p: int(p.name[: -len(_INSTANCE)]))
            found[folder.name] = instances
            with self._lock:
                self._used += sum(p.stat().st_size for p in instances)
        return found
