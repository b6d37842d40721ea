"""The sender's durable outbox: the bytes of every queued transfer, written and fsynced before the client
hears "queued", read back chunk by chunk while they stream to the peer, deleted once the peer confirms.

Layout under ``state_dir/outbox``: ``<transfer_id>/<file index>`` (the user's file names live only in the
manifest, never in a path). An upload is assembled in ``.new-<transfer_id>`` and renamed into place after
every file and the directory are fsynced, so a crash leaves either nothing or a complete transfer.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from qlinkmed.qlinkd.dataplane.manifest import Manifest
from qlinkmed.qlinkd.errors import TransferError

_NEW = ".new-"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Upload:
    """One transfer being written into the outbox, file after file, each checked against its manifest
    entry (size and SHA-256) as it completes."""

    def __init__(self, root: Path, manifest: Manifest) -> None:
        self.manifest = manifest
        self._root = root
        self._dir = root / f"{_NEW}{manifest.transfer_id}"
        self._dir.mkdir(mode=0o700)
        self._index = -1
        self._fd: int | None = None
        self._hash = hashlib.sha256()
        self._written = 0
        self._done = False

    def start_file(self, index: int) -> None:
        self._finish_file()
        if index != self._index + 1 or index >= len(self.manifest.files):
            raise TransferError(f"file {index} out of order", transfer=self.manifest.transfer_id)
        self._index = index
        self._fd = os.open(self._dir / str(index), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self._hash = hashlib.sha256()
        self._written = 0

    def write(self, data: bytes) -> None:
        if self._fd is None:
            raise TransferError("upload written before start_file", transfer=self.manifest.transfer_id)
        entry = self.manifest.files[self._index]
        if self._written + len(data) > entry.size:
            raise TransferError(f"{entry.name}: more than the declared {entry.size} bytes")
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        self._hash.update(data)
        self._written += len(data)

    def _finish_file(self) -> None:
        if self._fd is None:
            return
        entry = self.manifest.files[self._index]
        fd, self._fd = self._fd, None
        try:
            if self._written != entry.size:
                raise TransferError(f"{entry.name}: {self._written} bytes received, {entry.size} declared")
            if self._hash.hexdigest() != entry.sha256:
                raise TransferError(
                    f"{entry.name}: SHA-256 differs from the one declared (damaged in upload)"
                )
            os.fsync(fd)
        finally:
            os.close(fd)

    def file_path(self, index: int) -> Path:
        return self._dir / str(index)

    def commit_files(self) -> None:
        """Check and fsync the last file; every file must now be complete (their content can be read
        back with `file_path` before `commit`)."""
        self._finish_file()
        if self._index != len(self.manifest.files) - 1:
            raise TransferError(
                f"upload ended after {self._index + 1} of {len(self.manifest.files)} files",
                transfer=self.manifest.transfer_id,
            )

    def commit(self) -> Path:
        """Make the transfer durable and visible."""
        self.commit_files()
        fsync_dir(self._dir)
        final = self._root / self.manifest.transfer_id
        os.rename(self._dir, final)
        fsync_dir(self._root)
        self._done = True
        return final

    def abandon(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if not self._done:
            shutil.rmtree(self._dir, ignore_errors=True)


class Outbox:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(mode=0o700, parents=True, exist_ok=True)

    def upload(self, manifest: Manifest) -> Upload:
        return Upload(self.root, manifest)

    def tidy(self, queued: set[str]) -> list[str]:
        """Remove half-written uploads and transfers no record queues (a crash between rename and record:
        the client was never told "queued"). Returns what was removed."""
        removed = []
        for entry in self.root.iterdir():
            if entry.name.startswith(_NEW) or entry.name not in queued:
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry.name)
        return removed

    def has(self, transfer_id: str) -> bool:
        return (self.root / transfer_id).is_dir()

    def open_file(self, transfer_id: str, index: int) -> int:
        """A read-only descriptor of a queued file (the caller closes it)."""
        return os.open(self.root / transfer_id / str(index), os.O_RDONLY)

    def remove(self, transfer_id: str) -> None:
        shutil.rmtree(self.root / transfer_id, ignore_errors=True)
