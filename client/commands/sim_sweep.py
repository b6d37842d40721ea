"""`qlink sim sweep`: key rate against distance (simulated points at several block sizes over the
finite-key curves, on a local process pool or a Dask cluster) and QBER/CHSH against an eavesdropper."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
EXIT_OK, EXIT_USAGE = 0, 2
"""As every `qlink sim` command: 0 done, 2 bad arguments or a sweep that cannot run."""


def _list_of(parse_one: Callable[[str], T], what: str) -> Callable[[str], list[T]]:
    def parse(text: str) -> list[T]:
        items = [t.strip() for t in text.split(",")]
        if not items or any(t == "" for t in items):
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {what}, got {text!r}")
        return [parse_one(t) for t in items]

    return parse


def add_sweep_flags(
    p: argparse.ArgumentParser,
    *,
    count: Callable[[str], int],
    number: Callable[..., Callable[[str], float]],
) -> None:
    """The sweep's flags. `count` and `number` are `qlink sim`'s argument types (a positive integer that
    may be written 1e8; a bounded float), passed in so that this module needs nothing else of it. Nothing
    here imports numpy: `qlink --help` stays light."""
    p.add_argument("--out", default="sweep-out", help="output directory (default ./sweep-out)")
    p.add_argument(
        "--distances",
        type=_list_of(number(0.0, 1000.0), "distances in km"),
        default=[0.0, 25.0, 50.0, 75.0, 100.0],
        help="fibre lengths of the simulated points, km (default 0,25,50,75,100)",
    )
    p.add_argument(
        "--pulses",
        type=_list_of(count, "pulse counts"),
        default=[10_000_000, 100_000_000],
        help="block sizes: simulated points and finite-key curves at each (default 1e7,1e8)",
    )
    p.add_argument(
        "--protocols",
        type=_list_of(str, "protocols"),
        default=None,
        help="any of single-photon,decoy,e91 (default all three)",
    )
    p.add_argument(
        "--e91-pulses",
        type=_list_of(count, "pair counts"),
        default=None,
        help="pairs of the simulated E91 points (default: the --pulses up to qcore.sweep.E91_MAX_PAIRS,"
        " 1e10)",
    )
    p.add_argument(
        "--curve-max-km", type=number(1.0, 1000.0), default=200.0, help="the curves' last distance (200)"
    )
    p.add_argument("--workers", type=count, default=2, help="local worker processes (default 2)")
    p.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        default=None,
        help="run the points on the Dask cluster whose scheduler is at ADDRESS (tcp://host:port) instead",
    )
    p.add_argument(
        "--scheduler-timeout",
        type=number(0.0, 3600.0, low_open=True),
        default=10.0,
        metavar="S",
        help="seconds to wait for the Dask scheduler to answer (default 10)",
    )
    p.add_argument(
        "--memory-budget",
        type=number(0.0, 1e6, low_open=True),
        default=None,
        metavar="GB",
        help="peak memory one point may need, GB (default: available memory / --workers)",
    )
    p.add_argument(
        "--skip-oversized",
        action="store_true",
        help="leave out the points over the memory budget (named on stderr) instead of refusing the sweep",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep the rows already in OUT/keyrate_vs_distance.csv and run only the missing points",
    )
    p.add_argument(
        "--daemon-points",
        metavar="FILE",
        default=None,
        help="points measured over the daemons (JSON) to plot",
    )
    p.add_argument("--no-eve", action="store_true", help="skip the QBER/CHSH-against-Eve sweep")
    p.add_argument(
        "--eve-qubits",
        type=count,
        default=2_000_000,
        help="pulses per BB84 point of the Eve sweep (2e6)",
    )
    p.add_argument(
        "--eve-pairs",
        type=count,
        default=20_000_000,
        help="pairs per E91 point of the Eve sweep (2e7)",
    )
    p.add_argument("--seed", type=int, default=1, help="sweep seed; each point's seed derives from it (1)")
    p.add_argument("--json", action="store_true", help="print the written files, notes and points as JSON")


def _sweep_error(message: str) -> int:
    print(f"qlink sim sweep: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def run_sweep(args: argparse.Namespace) -> int:
    import dataclasses
    from pathlib import Path

    import numpy as np

    from qlinkmed.client import sweep_plots
    from qlinkmed.client.sweep_runner import SweepError, available_memory_bytes, oversized, run_points
    from qlinkmed.qcore.errors import ConfigError
    from qlinkmed.qcore.sweep import SWEEP_PROTOCOLS, sweep_points, theory_curves

    out = Path(args.out)
    protocols = args.protocols if args.protocols is not None else list(SWEEP_PROTOCOLS)
    try:
        specs, notes = sweep_points(
            args.distances, args.pulses, protocols, seed=args.seed, e91_pulses=args.e91_pulses
        )
        daemon = sweep_plots.read_daemon_points(args.daemon_points) if args.daemon_points else []
    except ConfigError as exc:
        return _sweep_error(f"--{exc.field.replace('_', '-')}: {exc.message}")
    except sweep_plots.SweepInputError as exc:
        return _sweep_error(str(exc))
    if args.memory_budget is not None:
        budget, why = args.memory_budget * 1e9, f"--memory-budget {args.memory_budget:g} GB"
    else:
        available = available_memory_bytes()
        budget, why = available / args.workers, f"{available / 1e9:.1f} GB available / {args.workers} workers"
    too_big = oversized(specs, budget)
    if too_big:
        listed = "; ".join(f"{s.label} (~{need / 1e9:.1f} GB)" for s, need in too_big)
        if not args.skip_oversized:
            return _sweep_error(
                f"{len(too_big)} point(s) need more memory than one worker has"
                f" ({budget / 1e9:.1f} GB: {why}): {listed}; drop them, or pass --skip-oversized"
            )
        dropped = {id(s) for s, _ in too_big}
        specs = [s for s in specs if id(s) not in dropped]
        notes.append(f"left out over the {budget / 1e9:.1f} GB memory budget ({why}): {listed}")
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    csv_path = out / "keyrate_vs_distance.csv"
    started = time.perf_counter()
    try:
        results = run_points(
            specs,
            csv_path,
            workers=args.workers,
            scheduler=args.scheduler,
            scheduler_timeout_s=args.scheduler_timeout,
            resume=args.resume,
            stream=sys.stderr,
        )
    except SweepError as exc:
        return _sweep_error(str(exc))
    except KeyboardInterrupt:
        print(
            f"qlink sim sweep: interrupted; the points finished so far are in {csv_path}"
            " (rerun with --resume to run only the rest)",
            file=sys.stderr,
        )
        return 130
    elapsed = time.perf_counter() - started
    points = [r.point for r in results]
    print(f"sweep: {len(points)} points in {elapsed:.1f} s; drawing the curves", file=sys.stderr)
    grid = np.linspace(0.0, args.curve_max_km, round(args.curve_max_km * 2) + 1)
    curves = theory_curves(
        grid, pulses=sorted({*args.pulses, *(s.pulses for s in specs)}), protocols=protocols
    )
    files = [csv_path, sweep_plots.write_curves_csv(out / "keyrate_curves.csv", curves)]
    files.append(sweep_plots.draw_distance_plot(out / "keyrate_vs_distance.png", points, curves, daemon))
    if not args.no_eve:
        files += sweep_plots.write_eve_sweep(
            out, qubits=args.eve_qubits, e91_pairs=args.eve_pairs, seed=args.seed
        )
    if args.json:
        doc = {
            "files": [str(f) for f in files],
            "notes": notes,
            "elapsed_s": elapsed,
            "points": [dataclasses.asdict(r.point) | {"elapsed_s": r.elapsed_s} for r in results],
        }
        print(json.dumps(doc, indent=2))
    else:
        for f in files:
            print(f)
    return EXIT_OK
