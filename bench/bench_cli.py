"""`qlink` command-line cost (issue 17, item 7): wall time of whole `qlink` processes against a running
loopback testbed, as a user or a script pays it. Not a test: it prints figures (medians over --runs; the
machine is shared, so compare figures taken in the same run or close together).

    python bench/bench_cli.py [--runs 10] [--messages 10] [--qlink-root DIR]

Figures:
- `qlink ehr send --to B FILE --config A`: one HL7 message per process, waiting for the peer's delivery
  confirmation (the default), and with --no-wait (start-up, upload, queueing only);
- `qlink ehr send` with --messages files in one process, per message (one connection, one POST each);
- `qlink status --config A` and `qlink --help` as the light-command floor.

--qlink-root runs the CLI from another symlink tree mapping `qlinkmed.*` (e.g. a checkout of an older
commit, for a before/after figure); the testbed's daemons always run from this tree. A CLI that cannot
send several files in one call is reported as such for the batch figure.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _deploy import A, B, link_status, running, wait_for

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
KEY_BITS = 200_000
"""Key in the pool before timing: enough one-time pad for every HL7 message sent."""


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed(argv: list[str], env: dict[str, str]) -> tuple[float, float, subprocess.CompletedProcess[str]]:
    """(wall seconds, CPU seconds of the process, the process)."""
    cpu, started = _cpu(), time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120, check=False)
    return time.perf_counter() - started, _cpu() - cpu, proc


def _medians_ms(argv: list[str], env: dict[str, str], runs: int) -> tuple[float, float, list[float]]:
    """(median wall ms, median CPU ms, every wall ms)."""
    walls, cpus = [], []
    for _ in range(runs):
        wall, cpu, proc = _timed(argv, env)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
        walls.append(wall * 1e3)
        cpus.append(cpu * 1e3)
    return statistics.median(walls), statistics.median(cpus), walls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--messages", type=int, default=10)
    parser.add_argument("--qlink-root", type=Path, help="symlink tree holding the qlinkmed package to time")
    args = parser.parse_args()
    env = dict(os.environ)
    if args.qlink_root is not None:
        env["PYTHONPATH"] = str(args.qlink_root)
    qlink = [sys.executable, "-m", "qlinkmed.client"]
    message = str(DATA / "oru_r01.hl7")
    with running(high_watermark_bits=1_000_000, low_watermark_bits=500_000) as started:
        deployment = started.deployment
        config = str(deployment.facilities[A])

        def full() -> bool:
            # At the high watermark rounds pause, so the daemons do no QKD work while the CLI is timed.
            status = link_status(deployment, A)
            return status is not None and status["pool_bits_owned"] >= KEY_BITS and status["rounds_paused"]

        wait_for(full, 300.0, "A's pool at its high watermark")
        send = [*qlink, "ehr", "send", "--to", B, "--config", config]
        print(f"qlink under test: {env.get('PYTHONPATH', '(installed)')}; {args.runs} runs each, median")
        print("figures: median wall time (what a user waits), median CPU time of the qlink process")
        _timed([*send, message], env)  # the first data session is opened here, not in a timed run
        for label, argv in (
            ("ehr send, 1 message, wait for delivery", [*send, message]),
            ("ehr send, 1 message, --no-wait", [*send, "--no-wait", message]),
            ("status --config", [*qlink, "status", "--config", config]),
            ("--help", [*qlink, "--help"]),
        ):
            wall, cpu, times = _medians_ms(argv, env, args.runs)
            spread = f"{min(times):.0f}..{max(times):.0f}"
            print(f"  {label:<42} {wall:6.0f} ms wall (min..max {spread}), {cpu:5.0f} ms CPU")
        batch = [*send, *([message] * args.messages)]
        seconds, cpu, proc = _timed(batch, env)
        if proc.returncode != 0:
            why = proc.stderr.strip()[:60]
            print(f"  ehr send, {args.messages} messages in one call: not supported ({why}...)")
        else:
            per = seconds * 1e3 / args.messages
            label = f"ehr send, {args.messages} messages in one call"
            took = f"{seconds * 1e3:6.0f} ms wall ({per:.0f} ms a message)"
            print(f"  {label:<42} {took}, {cpu * 1e3:5.0f} ms CPU")


if __name__ == "__main__":
    main()
