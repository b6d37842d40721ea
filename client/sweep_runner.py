"""Run the points of a distance sweep on a local process pool or an existing Dask cluster, with progress
on stderr and every result appended to the CSV as it arrives (an interrupted sweep keeps what it has and
`--resume` runs only the rest).

The point function is `qcore.sweep.run_point`, pure and picklable: both executors submit the same one.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import IO, Any

from qlinkmed.qcore.sweep import (
    DistancePoint,
    PointSpec,
    estimate_point_bytes,
    expected_detections,
    run_point,
)

CSV_FIELDS = [f.name for f in dataclasses.fields(DistancePoint)] + ["elapsed_s"]
SCHEDULER_TIMEOUT_S = 10.0
"""How long `--scheduler` waits for the Dask scheduler to answer before giving up."""


class SweepError(Exception):
    """The sweep cannot run or stopped: the message names the point, the address or the file."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Timed:
    """A point's result and the wall time its worker took."""

    point: DistancePoint
    """What the round gave."""
    elapsed_s: float
    """Seconds from the worker's start of the point to its end."""


def timed_point(spec: PointSpec) -> Timed:
    """The function the executors run: `run_point` timed where it runs (qcore keeps no clock)."""
    started = time.perf_counter()
    point = run_point(spec)
    return Timed(point=point, elapsed_s=time.perf_counter() - started)


# --------------------------------------------------------------------------- memory


def available_memory_bytes() -> int:
    """MemAvailable of /proc/meminfo (what can be allocated without swapping), else free physical pages."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def oversized(specs: Iterable[PointSpec], budget_bytes: float) -> list[tuple[PointSpec, int]]:
    """The points whose estimated peak memory exceeds one worker's budget, with the estimates."""
    out = []
    for spec in specs:
        need = estimate_point_bytes(spec)
        if need > budget_bytes:
            out.append((spec, need))
    return out


# --------------------------------------------------------------------------- CSV


def _row(result: Timed) -> dict[str, Any]:
    row = dataclasses.asdict(result.point)
    row["elapsed_s"] = f"{result.elapsed_s:.3f}"
    return row


def _parse(row: dict[str, str]) -> Timed:
    try:
        point = DistancePoint(
            protocol=row["protocol"],
            distance_km=float(row["distance_km"]),
            pulses=int(row["pulses"]),
            seed=int(row["seed"]),
            detected=int(row["detected"]),
            qber=float(row["qber"]) if row["qber"] not in ("", "None") else None,
            final_key_bits=int(row["final_key_bits"]),
            key_per_pulse=float(row["key_per_pulse"]),
            expected_key_bits=int(row["expected_key_bits"]),
            aborted=row["aborted"] == "True",
            abort_reason=row["abort_reason"],
        )
        return Timed(point=point, elapsed_s=float(row["elapsed_s"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise SweepError(f"cannot read row {row}: {exc!r}") from None


def read_results(path: Path) -> list[Timed]:
    """The complete rows of a sweep CSV (a last line cut short by a kill is skipped)."""
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames != CSV_FIELDS:
            raise SweepError(
                f"{path}: not a distance-sweep CSV of this version (columns {reader.fieldnames})"
            )
        rows = []
        for row in reader:
            if None in row or any(v is None for v in row.values()):
                continue  # a line cut short
            rows.append(_parse(row))
    return rows


def _key(spec: PointSpec | DistancePoint) -> tuple[str, float, int, int]:
    return (spec.protocol, spec.distance_km, spec.pulses, spec.seed)


# --------------------------------------------------------------------------- progress


def point_cost(spec: PointSpec) -> float:
    """Relative work of a point: a round costs per detection, E91's per-pair path per pair as well, and
    every round a little to start."""
    return expected_detections(spec) + (0.1 * spec.pulses if spec.protocol == "e91" else 0.0) + 1e5


class SweepProgress:
    """Lines on stderr: points done / total, each point's result, and an ETA weighted by each point's
    expected detections (a 1e10-pulse point costs a hundred 1e8 ones)."""

    def __init__(self, specs: list[PointSpec], stream: IO[str], *, already_done: int = 0) -> None:
        self.stream = stream
        self.total = len(specs) + already_done
        self.done = already_done
        self._cost = {_key(s): point_cost(s) for s in specs}
        self._remaining = sum(self._cost.values())
        self._spent = 0.0
        self._started = time.monotonic()

    def started(self, how: str) -> None:
        self.stream.write(f"sweep: {self.total - self.done} points to run on {how}\n")
        self.stream.flush()

    def point(self, result: Timed) -> None:
        self.done += 1
        cost = self._cost.get(_key(result.point), 0.0)
        self._spent += cost
        self._remaining -= cost
        elapsed = time.monotonic() - self._started
        eta = elapsed * self._remaining / self._spent if self._spent > 0 else float("nan")
        p = result.point
        outcome = (
            f"aborted ({p.abort_reason})"
            if p.aborted
            else f"{p.final_key_bits:,} bits ({p.key_per_pulse:.3e}/pulse; expected {p.expected_key_bits:,})"
        )
        qber = f"QBER {p.qber:.2%}" if p.qber is not None else "QBER -"
        self.stream.write(
            f"[{self.done}/{self.total}] {p.protocol} {p.distance_km:g} km {p.pulses:.0e}: {outcome}, {qber},"
            f" {result.elapsed_s:.1f} s; elapsed {_clock(elapsed)}, ETA {_clock(eta)}\n"
        )
        self.stream.flush()


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):  # nothing measured yet
        return "-"
    s = round(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


# --------------------------------------------------------------------------- executors


def _ignore_sigint() -> None:
    # Ctrl-C reaches the whole process group: the parent alone handles it (one message, no worker
    # tracebacks) and stops the workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _local(specs: list[PointSpec], workers: int) -> Iterator[Timed]:
    # spawn: a worker must not inherit the parent's threads or its big arrays (fork would copy both).
    context = multiprocessing.get_context("spawn")
    executor = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_ignore_sigint)
    finished = False
    try:
        futures: dict[Future[Timed], PointSpec] = {executor.submit(timed_point, spec): spec for spec in specs}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield _result(future.result, futures[future])
        finished = True
    finally:
        if finished:
            executor.shutdown(wait=True)
        else:
            _stop(executor)


def _stop(executor: ProcessPoolExecutor) -> None:
    """Interrupted or failed: drop the queued points and end the running ones now (a 1e10-pulse point
    would otherwise hold the exit for a minute)."""
    # Python 3.14 has executor.terminate_workers(); 3.11 and 3.12 expose the processes only privately
    # (and drop them at shutdown: take them first).
    terminate = getattr(executor, "terminate_workers", None)
    if terminate is not None:
        terminate()
        return
    processes = list((getattr(executor, "_processes", None) or {}).values())
    executor.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()
    for process in processes:
        process.join()


def _result(get: Callable[[], Timed], spec: PointSpec) -> Timed:
    try:
        return get()
    except Exception as exc:
        raise SweepError(f"point {spec.label} failed: {type(exc).__name__}: {exc}") from exc


def connect_dask(address: str, timeout_s: float = SCHEDULER_TIMEOUT_S) -> Any:
    """A `dask.distributed.Client` on the scheduler at `address` (imported only here: an optional extra)."""
    try:
        from distributed import Client
    except ImportError:
        raise SweepError(
            "--scheduler needs dask.distributed, which is not installed: pip install 'qlinkmed[cluster]'"
        ) from None
    try:
        return Client(address, timeout=timeout_s, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SweepError(
            f"cannot reach the Dask scheduler at {address} within {timeout_s:g} s: {reason}"
        ) from None


def _dask(specs: list[PointSpec], client: Any) -> Iterator[Timed]:
    from distributed import as_completed

    futures = {client.submit(timed_point, spec, pure=False): spec for spec in specs}
    finished = False
    try:
        for future in as_completed(list(futures), loop=client.loop):
            yield _result(future.result, futures[future])
        finished = True
    finally:
        if not finished:  # interrupted or a point failed: the cluster drops the rest
            client.cancel(list(futures))


# --------------------------------------------------------------------------- the sweep


def run_points(
    specs: list[PointSpec],
    csv_path: Path,
    *,
    workers: int = 2,
    scheduler: str | None = None,
    scheduler_timeout_s: float = SCHEDULER_TIMEOUT_S,
    resume: bool = False,
    stream: IO[str],
    client: Any = None,
) -> list[Timed]:
    """Run every point not already in the CSV (with `resume`), appending each result as it arrives;
    returns all the rows (resumed ones first). `client`: a connected Dask client (tests), else one is
    made for `scheduler`; neither: a local spawn pool of `workers` processes."""
    if workers < 1:
        raise SweepError(f"--workers must be at least 1, got {workers}")
    previous = read_results(csv_path) if resume else []
    done = {_key(r.point) for r in previous}
    # Largest first: the long points start at once and the short ones fill the workers' gaps at the end.
    todo = sorted((s for s in specs if _key(s) not in done), key=point_cost, reverse=True)
    progress = SweepProgress(todo, stream, already_done=len(specs) - len(todo))
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    fresh = not (resume and csv_path.exists())
    results = [r for r in previous if _key(r.point) in {_key(s) for s in specs}]
    own_client = False
    if todo and client is None and scheduler is not None:
        client = connect_dask(scheduler, scheduler_timeout_s)
        own_client = True
    try:
        with csv_path.open("w" if fresh else "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
            if fresh:
                writer.writeheader()
                handle.flush()
            if not todo:
                return results
            if client is not None:
                progress.started(f"the Dask cluster at {scheduler or client.scheduler.address}")
                stream_of_results = _dask(todo, client)
            else:
                progress.started(f"{workers} local worker process{'es' if workers > 1 else ''}")
                stream_of_results = _local(todo, workers)
            for result in stream_of_results:
                writer.writerow(_row(result))
                # Flushed per point: a sweep killed later keeps every row it reported.
                handle.flush()
                results.append(result)
                progress.point(result)
    finally:
        if own_client:
            client.close()
    return results
