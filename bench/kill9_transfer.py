"""kill -9 during a large study: the receiving daemon is SIGKILLed again and again while a ~500 MB DICOM
study streams to it, and the study still arrives exactly once, bit-exact.

    .venv/bin/python bench/kill9_transfer.py                       # 10 kills, ~500 MB
    .venv/bin/python bench/kill9_transfer.py --kills 3 --megabytes 120

A fresh loopback deployment runs; once both pools hold key, a synthetic CT study (512 x 512 slices of
~525 KB, written to a temporary directory) is queued at hospital-a without waiting for delivery. Then,
--kills times: poll hospital-b's inbox until the study's durable position (received_bytes) has advanced
far enough since the last restart, SIGKILL hospital-b, restart it and wait for READY=1.

Spacing. The receiver acknowledges (and records as durable) every 16 MiB counted from where a session
resumes, so received_bytes moves in steps of about 16.8 MB here. A fixed threshold of total / (kills + 2)
per kill is rounded up to whole steps every time (42 MB becomes 50 MB for 500 MB and 10 kills) and the
study finishes before the last kill. Instead each kill waits for an even share of what is left, spread
over the kills still to come plus one final stretch: (total - position at restart) / (kills left + 1).
Every kill then lands mid-transfer and the transfer progresses between kills. A kill that cannot land
because the study is already complete is reported and fails the run.

After the kills the script waits for A to record the delivery, fetches every file from B's inbox and
compares SHA-256 and bytes with the originals, counts B's inbox records and transfer_received audit lines
for the transfer (exactly one each), and looks for tracebacks in the process logs, once before and once
after stopping everything with SIGTERM. Exit status 1 when anything is off.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import _deploy as d
from _checks import inbox_entry, make_study, outgoing_state, owned_bits

from qlinkmed.client.commands.demo import _token
from qlinkmed.client.commands.send import upload
from qlinkmed.client.data_http import DataTarget
from qlinkmed.qlinkd.dataplane.receiver import SYNC_BYTES
from qlinkmed.qlinkd.testbed.readers import reader_token

KEY_BITS = 64_000
"""Key both pools hold before the study is queued (each data session takes 256 bits)."""
LOW_WATERMARK_BITS, HIGH_WATERMARK_BITS = 500_000, 1_000_000
"""Key generation pauses once the pools are full, so it does not compete with the transfer for the CPU."""
READY_TIMEOUT_S = 60.0
POLL_S = 0.005
"""Inbox polling while the study streams: an acknowledgement step takes about 0.1 s at full speed."""
STALL_S = 120.0
"""A durable position that does not move for this long ends the kill loop as a stall."""


@dataclass(slots=True)
class Kill:
    received_bytes: int
    """B's durable position when it was killed."""
    ready_s: float
    """Restart (process spawned) to READY=1."""
    position_after: int
    """B's durable position as first reported after the restart (must not be below received_bytes)."""
    resumed_s: float | None = None
    """READY=1 to the next advance of the durable position (None: none within READY_TIMEOUT_S)."""


@dataclass(slots=True)
class Report:
    kills_asked: int
    instances: int
    total_bytes: int
    transfer_id: str = ""
    kills: list[Kill] = field(default_factory=list)
    missed: list[str] = field(default_factory=list)
    """Kills that could not land mid-transfer, and why."""
    queued_s: float = 0.0
    transfer_s: float = 0.0
    """Queued to A's record of the delivery."""
    wall_s: float = 0.0
    final_state: str = "unknown"
    bit_exact: int = 0
    inbox_records: int = 0
    received_lines: int = 0
    delivered_lines: int = 0
    regressions: int = 0
    tracebacks: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def _moved(b: DataTarget, tid: str, position: int) -> bool:
    entry = inbox_entry(b, tid)
    return entry is not None and (entry["received_bytes"] > position or entry["state"] != "receiving")


def _poll_until_advanced(b: DataTarget, tid: str, threshold: float, total: int) -> tuple[int, str]:
    """Poll B's inbox until the durable position reaches `threshold`: (position, state). Returns early
    when the study is complete (every byte held, or delivered or refused), or with state "stalled" when
    the position has not moved for STALL_S."""
    last, moved_at = -1, time.monotonic()
    while True:
        entry = inbox_entry(b, tid)
        position, state = (-1, "missing") if entry is None else (int(entry["received_bytes"]), entry["state"])
        if state not in ("receiving", "missing") or position >= total or position >= threshold:
            return position, state
        if position != last:
            last, moved_at = position, time.monotonic()
        elif time.monotonic() - moved_at > STALL_S:
            return position, "stalled"
        time.sleep(POLL_S)


def kill_cycles(started: d.Started, b: DataTarget, report: Report) -> None:
    group, tid, total = started.group, report.transfer_id, report.total_bytes
    baseline = 0
    for i in range(report.kills_asked):
        kills_left = report.kills_asked - i
        threshold = baseline + max(1, (total - baseline) // (kills_left + 1))
        position, state = _poll_until_advanced(b, tid, threshold, total)
        if state == "stalled":
            report.problems.append(f"kill {i + 1}: no progress for {STALL_S:g} s at {position:,} bytes")
            return
        if state != "receiving" or position >= total:
            report.missed.append(
                f"kill {i + 1}: the study is already complete ({state}, {position:,} of {total:,} bytes "
                f"durable; the threshold was {threshold:,})"
            )
            return
        group.kill(d.B, signal.SIGKILL)
        spawned = time.monotonic()
        group.start(d.B)
        group.wait_ready(d.B, READY_TIMEOUT_S)
        ready = time.monotonic()
        after = inbox_entry(b, tid)
        position_after = int(after["received_bytes"]) if after is not None else -1
        if position_after < position:
            report.regressions += 1
        kill = Kill(position, ready - spawned, position_after)
        report.kills.append(kill)
        baseline = max(position_after, position)
        with contextlib.suppress(TimeoutError):
            d.wait_for(
                functools.partial(_moved, b, tid, baseline), READY_TIMEOUT_S, "progress after the restart"
            )
            kill.resumed_s = time.monotonic() - ready


def verify(started: d.Started, b: DataTarget, entries: list[tuple[Path, Any]], report: Report) -> None:
    tid = report.transfer_id
    entry = inbox_entry(b, tid)
    if entry is None or entry["state"] != "delivered":
        report.problems.append(f"B's inbox entry is {entry and entry['state']}, not delivered")
        return
    for f, (path, info) in zip(entry["file_list"], entries, strict=True):
        status, data, _ = b.request("GET", f"/v1/inbox/{tid}/files/{f['index']}", timeout=120.0)
        original = path.read_bytes()
        if (
            status == 200
            and hashlib.sha256(data).hexdigest() == info.sha256 == f["sha256"]
            and data == original
        ):
            report.bit_exact += 1
        elif len(report.problems) < 10:
            report.problems.append(
                f"file {f['index']} ({path.name}): HTTP {status}, {len(data):,} bytes differ"
            )
    report.inbox_records = sum(e["transfer_id"] == tid for e in b.json("GET", "/v1/inbox")[1]["inbox"])
    deployment = started.deployment
    report.received_lines = sum(
        r.get("event") == "transfer_received" and r.get("transfer") == tid
        for r in d.read_audit(deployment, d.B)
    )
    report.delivered_lines = sum(
        r.get("event") == "transfer_delivered" and r.get("transfer") == tid
        for r in d.read_audit(deployment, d.A)
    )


def run(root: Path, args: argparse.Namespace) -> Report:
    begin = time.monotonic()
    entries = make_study(root / "study", args.megabytes, args.seed)
    report = Report(
        kills_asked=args.kills, instances=len(entries), total_bytes=sum(i.size for _, i in entries)
    )
    started_ctx = d.running(
        root / "deploy",
        pulses_per_round=args.pulses,
        low_watermark_bits=LOW_WATERMARK_BITS,
        high_watermark_bits=HIGH_WATERMARK_BITS,
    )
    with started_ctx as started:
        deployment = started.deployment
        a = DataTarget(deployment.local_url(d.A), _token(deployment, d.A))
        b = DataTarget(deployment.local_url(d.B), reader_token(deployment, d.B))  # a user reads the inbox
        d.wait_for(
            lambda: min(owned_bits(a), owned_bits(b)) >= KEY_BITS, READY_TIMEOUT_S, "key in both pools"
        )
        queued_at = time.monotonic()
        result = upload(a, d.B, "study", entries, entries[0][1].study_uid, wait=0, show_progress=False)
        report.queued_s = time.monotonic() - queued_at
        report.transfer_id = result["transfer_id"]
        if result.get("state") == "queued":
            kill_cycles(started, b, report)
        else:
            report.problems.append(f"upload answered {result}")
        with contextlib.suppress(TimeoutError):
            d.wait_for(
                lambda: outgoing_state(a, report.transfer_id) != "queued", args.timeout, "the delivery"
            )
        report.final_state = outgoing_state(a, report.transfer_id)
        report.transfer_s = time.monotonic() - queued_at
        if report.final_state == "delivered":
            verify(started, b, entries, report)
        else:
            entry = inbox_entry(b, report.transfer_id)
            report.problems.append(f"A's record is {report.final_state}; B's inbox entry: {entry}")
        seen = _scan_logs(started, report, "during the run", {})
    _scan_logs(started, report, "at shutdown (SIGTERM)", seen)
    for name, child in started.group.children.items():
        if child.process.returncode != 0:
            report.problems.append(f"{name} exited with {child.process.returncode} on SIGTERM")
    report.wall_s = time.monotonic() - begin
    return report


def _scan_logs(started: d.Started, report: Report, phase: str, skip: dict[str, int]) -> dict[str, int]:
    """Record each process log's first traceback after the `skip[name]` characters already scanned;
    returns how far each log was scanned."""
    scanned = {}
    for name, child in started.group.children.items():
        log = child.log()
        start = log.find("Traceback", skip.get(name, 0))
        if start >= 0:
            report.tracebacks[f"{name}.log, {phase}"] = log[max(0, start - 800) : start + 3000]
        scanned[name] = len(log)
    return scanned


def ok(report: Report) -> bool:
    return (
        len(report.kills) == report.kills_asked
        and not report.missed
        and report.regressions == 0
        and report.final_state == "delivered"
        and report.bit_exact == report.instances
        and report.inbox_records == report.received_lines == report.delivered_lines == 1
        and not report.tracebacks
        and not report.problems
    )


def print_report(report: Report) -> None:
    total = report.total_bytes
    print(f"study {report.transfer_id}: {report.instances} instances, {total:,} bytes ({total / 1e6:.1f} MB)")
    print(f"kills done: {len(report.kills)} of {report.kills_asked} (SIGKILL of {d.B}, the receiver)")
    for n, k in enumerate(report.kills, 1):
        resumed = "-" if k.resumed_s is None else f"{k.resumed_s:.2f} s"
        print(
            f"  kill {n:2d}: received_bytes {k.received_bytes:>13,} ({k.received_bytes / total:6.1%})"
            f"  restart->ready {k.ready_s:.2f} s  durable after restart {k.position_after:,}"
            f"  ready->progress {resumed}"
        )
    for line in report.missed:
        print(f"  KILL NOT POSSIBLE: {line}")
    ready = [k.ready_s for k in report.kills]
    if ready:
        print(f"restart->ready: median {statistics.median(ready):.2f} s, max {max(ready):.2f} s")
    print(
        f"upload (queued at {d.A}): {report.queued_s:.1f} s; queued -> delivered: {report.transfer_s:.1f} s"
    )
    print(f"total wall time: {report.wall_s:.1f} s")
    print(f"final state: {report.final_state}")
    print(f"files bit-exact: {report.bit_exact} of {report.instances} (SHA-256 and bytes)")
    duplicates = max(0, report.inbox_records - 1) + max(0, report.received_lines - 1)
    print(
        f"duplicates: {duplicates} (inbox records for the transfer {report.inbox_records}, transfer_received "
        f"lines at {d.B} {report.received_lines}, transfer_delivered lines at {d.A} {report.delivered_lines})"
    )
    print(f"durable position went backwards after a restart: {report.regressions} time(s)")
    for problem in report.problems:
        print(f"PROBLEM: {problem}")
    for where, excerpt in report.tracebacks.items():
        print(f"TRACEBACK in {where}:\n{excerpt}")
    print("PASS" if ok(report) else "FAIL")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--megabytes", type=float, default=500.0, help="study size in MB (10^6 bytes)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic study")
    parser.add_argument("--pulses", type=int, default=700_000, help="pulses per round")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the delivery")
    parser.add_argument(
        "--keep", type=Path, metavar="DIR", help="run in DIR (new) and keep it, logs included"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    if args.kills < 1:
        parser.error("--kills must be at least 1")
    # Every kill needs at least one acknowledgement step of progress, and the study one more after it.
    if args.megabytes * 1e6 < (args.kills + 1) * SYNC_BYTES:
        parser.error(f"--megabytes is too small for {args.kills} mid-transfer kills")
    if args.keep is not None:
        args.keep.mkdir(parents=True)
        report = run(args.keep, args)
    else:
        with tempfile.TemporaryDirectory(prefix="qlink-kill9-transfer-") as tmp:
            report = run(Path(tmp), args)
    if args.json:
        print(json.dumps(asdict(report) | {"ok": ok(report)}, indent=2))
    else:
        print_report(report)
    return 0 if ok(report) else 1


if __name__ == "__main__":
    sys.exit(main())
