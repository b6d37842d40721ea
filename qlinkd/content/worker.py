"""Content validation off the daemon's event loop: `ContentValidator` runs `validate` in worker processes,
each under an address-space budget.

Parsing a hostile file costs CPU and memory the event loop cannot spare: pydicom, Pillow and pydantic hold
the GIL, so a thread would still stall the loop, and a decoder that allocates past any sane size would take
the daemon with it. A worker process (spawned, never forked from the running daemon) loads the validators
once (`validate.warm_up`) and then caps its address space at what it uses plus `memory_bytes`
(RLIMIT_AS). A validation that outgrows it fails with MemoryError; a worker that dies anyway breaks the
pool, which is rebuilt, and the file is tried once more on the fresh pool before it is refused. Either way
the refusal names the file and the budget.

Files already on disk go to the worker as a `FileSlice` and are read there, after their size is checked
against its kind's limit: an upload or a spooled transfer never crosses a pipe and is never read whole by
the daemon to be checked. ``workers=0`` validates in a thread of the calling process instead (tests, and
tools without a daemon), and so does a small FHIR or HL7 v2 message held in memory (`INLINE_TEXT_BYTES`):
text cannot inflate, and an EHR message's latency is mostly what a process hop would add.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import resource
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

from qlinkmed.qlinkd.content.issues import Issue
from qlinkmed.qlinkd.content.kinds import ContentInfo
from qlinkmed.qlinkd.content.limits import (
    DEFAULT_LIMITS,
    HEAD_BYTES,
    MIB,
    ContentLimits,
    check_size,
    is_binary_kind,
)
from qlinkmed.qlinkd.content.validate import validate, warm_up
from qlinkmed.qlinkd.errors import ConfigError, ContentError

log = logging.getLogger("qlink.content")

INLINE_TEXT_BYTES = 64 * 1024
"""A FHIR or HL7 v2 message up to this size is validated in a thread of the calling process, not a worker.
Text carries no compressed payload, so what parsing it costs is bounded by its size (a few MiB of objects
and some 25 ms of CPU at most, during which the interpreter still hands the event loop the GIL every
5 ms); the hop to a worker process and back would cost 0.3-1 ms at each end, the larger part of an EHR
message's latency. Files that can inflate (DICOM, PNG, JPEG) and anything larger always go to a worker."""

DEFAULT_MEMORY_BYTES = 2048 * MIB
"""A worker's budget beyond what it holds once loaded: room for the largest file the default limits allow
(512 MiB) and its decoded form, twice over."""


@dataclass(frozen=True, slots=True)
class FileSlice:
    """`length` bytes of the file at `path` from `offset`: an uploaded file, or one file of a spool."""

    path: str
    offset: int
    length: int


Source = bytes | FileSlice
_Answer = ContentInfo | tuple[str, tuple[Issue, ...]]
"""What a worker hands back: the info, or the problem and issues of a refusal (ContentError does not
pickle)."""


PARENT_CHECK_S = 1.0
"""How often a worker looks for its daemon (see `_exit_with_parent`)."""


def _exit_with_parent(parent: int) -> None:
    # A daemon killed with SIGKILL (or by the OOM killer) cannot stop its workers, and the pool's queues do
    # not tell them: each worker holds both ends of its call queue, so the pipe never reaches EOF. Outside
    # systemd's cgroup kill they would live on, each holding the validators' memory. PR_SET_PDEATHSIG is no
    # substitute: it fires when the *thread* that spawned the worker ends, and the pool spawns from
    # whichever thread submits.
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_S)
    os._exit(0)


def _start_worker(memory_bytes: int, parent: int) -> None:
    """A worker's initializer: follow the daemon's life, load the validators, then cap the address space."""
    threading.Thread(target=_exit_with_parent, args=(parent,), name="parent-watch", daemon=True).start()
    warm_up()
    if memory_bytes:
        with open("/proc/self/statm") as statm:
            loaded = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        resource.setrlimit(resource.RLIMIT_AS, (loaded + memory_bytes, resource.RLIM_INFINITY))


def _ready() -> int:
    return os.getpid()


def _read(name: str, source: Source, limits: ContentLimits) -> bytes:
    if isinstance(source, bytes):
        return source
    with open(source.path, "rb") as handle:
        if source.offset:
            handle.seek(source.offset)
        head = handle.read(min(HEAD_BYTES, source.length))
        check_size(name, head, source.length, limits)
        data = head + handle.read(source.length - len(head))
    if len(data) != source.length:
        raise ContentError(name, f"only {len(data):,} of its {source.length:,} bytes are on disk")
    return data


def _validate(name: str, source: Source, limits: ContentLimits, memory_bytes: int) -> _Answer:
    try:
        return validate(name, _read(name, source, limits), limits)
    except ContentError as exc:
        return exc.problem, exc.issues
    except MemoryError:
        return f"validating it needs more than the {memory_bytes:,}-byte memory budget of a validator", ()


def _small_text(source: Source) -> bool:
    if not isinstance(source, bytes) or len(source) > INLINE_TEXT_BYTES:
        return False
    return not is_binary_kind(source[:HEAD_BYTES])


class ContentValidator:
    """Validation in `workers` processes (0: in a thread here), each within `memory_bytes` of address space
    beyond its own (0: unbounded)."""

    def __init__(
        self,
        limits: ContentLimits = DEFAULT_LIMITS,
        *,
        workers: int = 0,
        memory_bytes: int = DEFAULT_MEMORY_BYTES,
    ) -> None:
        if workers < 0 or memory_bytes < 0:
            raise ConfigError("validators", "workers and memory_bytes must not be negative")
        self.limits = limits
        self.workers = workers
        self.memory_bytes = memory_bytes
        self._executor: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()  # the pool is used from the loop and from threads (the inbox)
        self._closed = False

    # ---- lifecycle

    async def start(self) -> None:
        """Start the workers and wait until each has loaded the validators."""
        # This process validates small EHR messages itself (`INLINE_TEXT_BYTES`): it loads the FHIR models
        # too, in a thread, while the workers load theirs.
        warming = asyncio.to_thread(warm_up)
        if not self.workers:
            await warming
            return
        loop = asyncio.get_running_loop()
        executor = self._pool()
        await asyncio.gather(warming, *(loop.run_in_executor(executor, _ready) for _ in range(self.workers)))

    def close(self) -> None:
        """Stop the workers at once, a validation in progress included (its caller gets BrokenProcessPool
        or a cancelled future; the daemon is stopping)."""
        with self._lock:
            self._closed = True
            executor, self._executor = self._executor, None
        if executor is not None:
            _stop(executor)

    def worker_pids(self) -> list[int]:
        """The worker processes' ids (for tests and benchmarks)."""
        executor = self._executor
        processes = getattr(executor, "_processes", None) or {}
        return [p.pid for p in processes.values() if p.pid is not None]

    # ---- validation

    async def validate(self, name: str, source: Source) -> ContentInfo:
        """`content.validate` of `source` without blocking the event loop; ContentError as it raises."""
        if not self.workers or _small_text(source):
            return await asyncio.to_thread(self._inline, name, source)
        # A thread waits on the worker: the one retry loop serves both entry points.
        return await asyncio.to_thread(self.validate_blocking, name, source)

    def validate_blocking(self, name: str, source: Source) -> ContentInfo:
        """`validate` for a thread that is not the event loop's (the inbox stores transfers in one)."""
        if not self.workers or _small_text(source):
            return self._inline(name, source)
        for attempt in (1, 2):
            executor = self._pool()
            try:
                # submit raises too when the pool already knows a worker died (its manager thread noticed
                # before this call): that is the same broken pool, rebuilt the same way.
                future: Future[_Answer] = executor.submit(
                    _validate, name, source, self.limits, self.memory_bytes
                )
                answer = future.result()
            except BrokenProcessPool:
                self._rebuild(executor)
                if attempt == 2:
                    raise ContentError(name, self._broke()) from None
            else:
                return _info(name, answer)
        raise ContentError(name, self._broke())

    def _inline(self, name: str, source: Source) -> ContentInfo:
        return validate(name, _read(name, source, self.limits), self.limits)

    def _broke(self) -> str:
        return (
            f"validation ended its worker process twice (the {self.memory_bytes:,}-byte memory budget of "
            "a validator, or a crash in a decoder)"
        )

    def _pool(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._closed:
                raise RuntimeError("the content validator is closed")
            if self._executor is None:
                self._executor = ProcessPoolExecutor(
                    max_workers=self.workers,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_start_worker,
                    initargs=(self.memory_bytes, os.getpid()),
                )
            return self._executor

    def _rebuild(self, broken: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._executor is not broken:
                return  # another caller has rebuilt it already
            self._executor = None
        log.warning("a content validator process died; starting a new pool")
        _stop(broken)


def _info(name: str, answer: _Answer) -> ContentInfo:
    if isinstance(answer, tuple):
        problem, issues = answer
        raise ContentError(name, problem, issues=issues)
    return answer


def _stop(executor: ProcessPoolExecutor) -> None:
    # Python 3.11 has no terminate_workers(): an idle worker would exit on its own, a busy one finishes
    # its file first, which a stopping daemon should not wait for.
    processes: dict[Any, Any] = dict(getattr(executor, "_processes", None) or {})
    executor.shutdown(wait=False, cancel_futures=True)
    for process in processes.values():
        process.terminate()
    for process in processes.values():
        process.join(5)
