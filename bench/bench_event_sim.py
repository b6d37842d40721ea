"""Wall time and peak memory of `qlink sim bb84 --source wcp` on the event-driven and per-pulse paths.

    .venv/bin/python bench/bench_event_sim.py                  # 1e9 and 1e10 event-driven, 1e8 per pulse
    .venv/bin/python bench/bench_event_sim.py --pulses 1e10    # one event-driven run

Each run is the real command in a child process (`python -m qlinkmed.client sim bb84 ...`), measured as
/usr/bin/time -v would: wall clock from start to exit, and the child's maximum resident set size from
wait4. Goals (issue 15): 1e10 pulses at 50 km within 60 s and 1.5 GiB on a 2-core machine. The
channel-only line times ``emulate_bb84_events`` alone in a child, to separate the emulator's share from
the post-processing (sifting, Cascade, privacy amplification) that the whole round also does.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

GOAL_SECONDS = 60.0
GOAL_BYTES = 1.5 * 2**30

CHANNEL_ONLY = """
import sys, numpy as np
from qlinkmed.qcore.channel import Eavesdropper
from qlinkmed.qcore.channel_events import emulate_bb84_events
from qlinkmed.qcore.channel_model import ChannelModel
from qlinkmed.qcore.params import DecoySource, SourceKind
from qlinkmed.qcore.randomness import RandomSource
n, km = int(float(sys.argv[1])), float(sys.argv[2])
_, seen, _ = emulate_bb84_events(n, model=ChannelModel(distance_km=km), source=SourceKind.WCP,
    decoy=DecoySource(), eve=Eavesdropper(), rng=np.random.default_rng(1), alice=RandomSource.seeded(2),
    bob=RandomSource.seeded(3))
print(seen.bits.size)
"""


def _measure(argv: list[str]) -> tuple[float, int, str]:
    """(wall seconds, max RSS bytes, stdout) of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    out = proc.stdout.read() if proc.stdout else ""
    if os.waitstatus_to_exitcode(status) not in (0, 3):
        raise SystemExit(f"{' '.join(argv)} failed: {proc.stderr.read() if proc.stderr else ''}")
    return wall, usage.ru_maxrss * 1024, out


def _sim(pulses: str, km: float, *, per_pulse: bool) -> list[str]:
    argv = [sys.executable, "-m", "qlinkmed.client", "sim", "bb84", "--source", "wcp", "--qubits", pulses]
    argv += ["--distance-km", str(km), "--seed", "1"]
    return argv + (["--per-pulse"] if per_pulse else [])


def _line(label: str, wall: float, rss: int, goal: bool) -> str:
    verdict = ""
    if goal:
        ok = wall <= GOAL_SECONDS and rss <= GOAL_BYTES
        verdict = (
            "  goal met" if ok else f"  goal ({GOAL_SECONDS:.0f} s, {GOAL_BYTES / 2**30:.1f} GiB) missed"
        )
    return f"{label:<44} {wall:8.1f} s {rss / 2**30:8.2f} GiB{verdict}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pulses", action="append", help="event-driven pulse counts (default 1e9, 1e10)")
    parser.add_argument("--distance-km", type=float, default=50.0)
    parser.add_argument("--per-pulse", default="1e8", help="per-pulse reference count ('' to skip)")
    args = parser.parse_args()
    km = args.distance_km
    print(f"qlink sim bb84 --source wcp --distance-km {km:g}: wall time, peak RSS")
    for pulses in args.pulses or ["1e9", "1e10"]:
        wall, rss, _ = _measure([sys.executable, "-c", CHANNEL_ONLY, pulses, str(km)])
        print(_line(f"event-driven channel only, {pulses} pulses", wall, rss, goal=False))
        wall, rss, _ = _measure(_sim(pulses, km, per_pulse=False))
        print(_line(f"event-driven round, {pulses} pulses", wall, rss, goal=float(pulses) >= 1e10))
    if args.per_pulse:
        wall, rss, _ = _measure(_sim(args.per_pulse, km, per_pulse=True))
        print(_line(f"per-pulse round, {args.per_pulse} pulses", wall, rss, goal=False))


if __name__ == "__main__":
    main()
