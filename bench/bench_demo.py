"""`qlink demo` wall time (issue 17, item 9: the demo shows the whole hospital path and stays quick). Not a
test: it runs whole `qlink demo --json` processes, as a user does, and prints each run's wall time with
the times the demo reports for its steps, then the medians. The machine is shared, so compare figures
taken in the same run: --qlink-root runs another symlink tree mapping `qlinkmed.*` (e.g. a checkout of
an older commit) alternately with this one, for a before/after figure.

    python bench/bench_demo.py [--runs 3] [--qlink-root DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

THIS_ROOT = os.environ.get("PYTHONPATH", "")


def run_demo(root: str) -> tuple[float, dict[str, Any]]:
    """One `qlink demo --json` process with `root` on PYTHONPATH: (wall seconds, its summary)."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "qlinkmed.client", "demo", "--json"],
        env={**os.environ, "PYTHONPATH": root},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"qlink demo failed ({done.returncode}):\n{done.stderr[-2000:]}")
    summary: dict[str, Any] = json.loads(done.stdout)
    return wall, summary


def describe(wall: float, s: dict[str, Any]) -> str:
    line = f"wall {wall:6.2f} s  key ready {s['first_key_s']:6.2f} s"
    if "dicom_gateway" in s:
        dg, hl7 = s["dicom_gateway"], s["hl7_gateway"]
        line += (
            f"  modality->PACS {dg['at_pacs_ms']:7.1f} ms (stored at A {dg['stored_at_a_ms']:6.1f} ms)"
            f"  ADT ACK {hl7['acked_ms']:6.2f} ms, at engine {hl7['at_engine_ms']:6.1f} ms"
        )
    return (
        line
        + f"  upload study {s['study']['seconds'] * 1e3:7.1f} ms  EHR median {s['ehr']['median_ms']:.2f} ms"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3, help="runs of each tree (3)")
    parser.add_argument("--qlink-root", type=Path, help="another tree to run alternately (before/after)")
    args = parser.parse_args()
    trees = {"this": THIS_ROOT} | ({"other": str(args.qlink_root)} if args.qlink_root else {})
    walls: dict[str, list[float]] = {name: [] for name in trees}
    for i in range(args.runs):
        for name, root in trees.items():
            wall, summary = run_demo(root)
            walls[name].append(wall)
            load = os.getloadavg()[0]
            print(f"{name:5} run {i + 1}: {describe(wall, summary)}  (load {load:.1f})", flush=True)
    for name, values in walls.items():
        print(f"{name}: median wall {statistics.median(values):.2f} s over {len(values)} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
