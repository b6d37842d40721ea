"""Wall time and peak memory of `qlink sim bb84 --source wcp` on the event-driven and per-pulse paths.

    .venv/bin/python bench/bench_event_sim.py                  # 1e10 and 1e9 event-driven, 1e8 per pulse
    .venv/bin/python bench/bench_event_sim.py --25km           # and 1e10 at 25 km (about 4x the detections)
    .venv/bin/python bench/bench_event_sim.py --pulses 1e10    # one event-driven run
    .venv/bin/python bench/bench_event_sim.py --e91            # E91 at 0 km: 1e9 pairs, 1e8 per pair
    .venv/bin/python bench/bench_event_sim.py --e91 --pairs 1e10 --per-pulse ''   # 1e10 pairs only

Each run is the real command in a child process (`python -m qlinkmed.client sim bb84 ...`), measured as
/usr/bin/time -v would: wall clock from start to exit, and the child's maximum resident set size from
wait4. Goals (issue 15): 1e10 pulses at 50 km within 60 s and 1.5 GiB on a 2-core machine. The
channel-only line times ``emulate_bb84_events`` alone in a child, to separate the emulator's share from
the post-processing (sifting, Cascade, privacy amplification) that the whole round also does. Each round
line also gives the detections and the peak per detection, and checks that both ends hold the same key.
Run one case at a time on a shared machine: the 25 km case peaks near 4 GB.

`--e91` measures `qlink sim e91` at 0 km instead (the E91 case of issue 15): the event-driven round, which
draws the coincidences only (about 1.1e-2 a pair), at 1e9 pairs, and the per-pair reference beside it at
1e8 pairs (28 bytes a pair; about 3 GB). Its lines give coincidences (event path) or Bob's detections
(per-pair path) in the "det" column, and the CHSH value.
"""

from __future__ import annotations

import argparse
import json
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
    argv += ["--distance-km", str(km), "--seed", "1", "--json"]
    return argv + (["--per-pulse"] if per_pulse else [])


def _sim_e91(pairs: str, *, per_pulse: bool) -> list[str]:
    argv = [sys.executable, "-m", "qlinkmed.client", "sim", "e91", "--qubits", pairs, "--distance-km", "0"]
    return argv + ["--seed", "1", "--json"] + (["--per-pulse"] if per_pulse else [])


def _line(label: str, wall: float, rss: int, goal: bool, report: dict[str, object] | None = None) -> str:
    verdict = ""
    if goal:
        ok = wall <= GOAL_SECONDS and rss <= GOAL_BYTES
        verdict = (
            "  goal met" if ok else f"  goal ({GOAL_SECONDS:.0f} s, {GOAL_BYTES / 2**30:.1f} GiB) missed"
        )
    extra = ""
    if report is not None:
        detected = int(str(report["detected"]))
        key = int(str(report["final_key_bits"]))
        extra = f" {detected:>12,} det {rss / max(detected, 1):6.0f} B/det key {key:>11,}"
        if report.get("chsh_s") is not None:
            extra += f" S {float(str(report['chsh_s'])):.3f}"
        if not report["keys_equal"]:
            extra += "  KEYS DIFFER"
    return f"{label:<44} {wall:8.1f} s {rss / 2**30:8.2f} GiB{extra}{verdict}"


def _round(label: str, pulses: str, km: float, *, per_pulse: bool, goal: bool) -> None:
    wall, rss, out = _measure(_sim(pulses, km, per_pulse=per_pulse))
    print(_line(label, wall, rss, goal, json.loads(out)), flush=True)


def _e91(pairs: list[str], per_pair: str) -> None:
    print("qlink sim e91 --distance-km 0: wall time, peak RSS (one child process each)")
    for n in pairs:
        wall, rss, out = _measure(_sim_e91(n, per_pulse=False))
        print(_line(f"e91 event-driven round, {n} pairs", wall, rss, False, json.loads(out)), flush=True)
    if per_pair:
        wall, rss, out = _measure(_sim_e91(per_pair, per_pulse=True))
        print(_line(f"e91 per-pair round, {per_pair} pairs", wall, rss, False, json.loads(out)), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pulses", action="append", help="event-driven pulse counts (default 1e10, 1e9)")
    parser.add_argument("--distance-km", type=float, default=50.0)
    parser.add_argument("--per-pulse", default="1e8", help="per-pulse reference count ('' to skip)")
    parser.add_argument("--25km", dest="km25", action="store_true", help="also 1e10 pulses at 25 km")
    parser.add_argument("--channel-only", action="store_true", help="also time the emulator alone")
    parser.add_argument("--e91", action="store_true", help="measure qlink sim e91 at 0 km instead")
    parser.add_argument("--pairs", action="append", help="event-driven E91 pair counts (default 1e9)")
    args = parser.parse_args()
    if args.e91:
        _e91(args.pairs or ["1e9"], args.per_pulse)
        return
    km = args.distance_km
    print(f"qlink sim bb84 --source wcp --distance-km {km:g}: wall time, peak RSS (one child process each)")
    for pulses in args.pulses or ["1e10", "1e9"]:
        if args.channel_only:
            wall, rss, _ = _measure([sys.executable, "-c", CHANNEL_ONLY, pulses, str(km)])
            print(_line(f"event-driven channel only, {pulses} pulses", wall, rss, goal=False), flush=True)
        goal = float(pulses) >= 1e10
        _round(f"event-driven round, {pulses} pulses", pulses, km, per_pulse=False, goal=goal)
    if args.per_pulse:
        _round(f"per-pulse round, {args.per_pulse} pulses", args.per_pulse, km, per_pulse=True, goal=False)
    if args.km25:
        _round("event-driven round, 1e10 pulses, 25 km", "1e10", 25.0, per_pulse=False, goal=False)


if __name__ == "__main__":
    main()
