"""One transfer's spool file: written in order by the receiving event loop, made durable by a thread.

An fdatasync of 16 MiB takes tens of milliseconds on a disk; run in a thread, it overlaps the chunks that
keep arriving instead of stalling them. The writes themselves stay in the loop's thread: handed to a
writer thread, each one would wait for the interpreter lock behind the busy loop (up to the 5 ms switch
interval per chunk), which measured slower (bench/bench_dataplane.py). The descriptor is closed only
after the last sync has finished, so no sync ever touches a closed (or reused) descriptor.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor


class Spool:
    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._syncer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qlink-spool-sync")

    def write(self, data: bytes, position: int) -> None:
        view = memoryview(data)
        while view:
            written = os.pwrite(self._fd, view, position)
            view, position = view[written:], position + written

    def sync(self) -> Future[None]:
        """A future done when every write made so far is durable (fdatasync: the spool's size is data it
        covers; its timestamps are not worth a journal write)."""
        return self._syncer.submit(os.fdatasync, self._fd)

    def close(self) -> None:
        """Wait for the syncs under way, then close the descriptor."""
        self._syncer.shutdown(wait=True)
        os.close(self._fd)
