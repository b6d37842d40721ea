"""`qlink sim sweep`: the points run on a local process pool or a Dask cluster give the rows a serial run
gives, progress shows on stderr, every row reaches the CSV as it arrives (an interrupted sweep keeps them
and --resume runs the rest), and bad input is refused with one line naming it."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qlinkmed.client.sweep_plots import (
    DaemonPoint,
    SweepInputError,
    daemon_points_document,
    draw_distance_plot,
    read_daemon_points,
)
from qlinkmed.client.sweep_runner import CSV_FIELDS, SweepError, read_results, run_points
from qlinkmed.qcore.sweep import SWEEP_PROTOCOLS, DistancePoint, run_point, sweep_points, theory_curves
from tests.cli import qlink
from tests.paths import REPO

PNG = b"\x89PNG\r\n\x1a\n"


def _by_key(points: list[DistancePoint]) -> dict[tuple[str, float, int], DistancePoint]:
    return {(p.protocol, p.distance_km, p.pulses): p for p in points}


@pytest.fixture(scope="module")
def small_sweep() -> tuple[list, dict]:
    """Six tiny points (every protocol at 0 and 40 km) and their rows run one after another."""
    specs, _ = sweep_points([0.0, 40.0], [300_000], SWEEP_PROTOCOLS, seed=5)
    return specs, _by_key([run_point(s) for s in specs])


def test_local_pool_gives_the_serial_rows_and_reports_progress(small_sweep: tuple, tmp_path: Path) -> None:
    specs, serial = small_sweep
    progress = io.StringIO()
    results = run_points(specs, tmp_path / "points.csv", workers=2, stream=progress)
    assert _by_key([r.point for r in results]) == serial
    # The CSV holds the same rows, read back.
    assert _by_key([r.point for r in read_results(tmp_path / "points.csv")]) == serial
    lines = progress.getvalue().splitlines()
    assert lines[0] == "sweep: 6 points to run on 2 local worker processes"
    assert [line.split("]")[0] for line in lines[1:]] == [f"[{i}/6" for i in range(1, 7)]
    assert all("ETA" in line and " km " in line for line in lines[1:])


def test_dask_local_cluster_gives_the_serial_rows(small_sweep: tuple, tmp_path: Path) -> None:
    from distributed import LocalCluster

    specs, serial = small_sweep
    progress = io.StringIO()
    with LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address="127.0.0.1:0"
    ) as cluster:
        results = run_points(
            specs, tmp_path / "points.csv", scheduler=cluster.scheduler_address, stream=progress
        )
        address = cluster.scheduler_address
    assert _by_key([r.point for r in results]) == serial
    assert progress.getvalue().splitlines()[0] == f"sweep: 6 points to run on the Dask cluster at {address}"
    assert "[6/6]" in progress.getvalue()


def test_cli_writes_points_curves_and_plot(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    code, stdout, stderr = qlink(
        capsys,
        *("sim", "sweep", "--out", str(out), "--distances", "0,30", "--pulses", "2e5,4e5"),
        *("--protocols", "single-photon,e91", "--no-eve", "--curve-max-km", "60", "--workers", "1"),
        *("--daemon-points", str(REPO / "docs" / "data" / "daemon_points.json"), "--json"),
    )
    assert code == 0, stderr
    doc = json.loads(stdout)
    assert len(doc["points"]) == 8
    assert {(p["protocol"], p["distance_km"], p["pulses"]) for p in doc["points"]} == {
        (p, d, n) for p in ("single-photon", "e91") for d in (0.0, 30.0) for n in (200_000, 400_000)
    }
    assert (out / "keyrate_vs_distance.png").read_bytes()[:8] == PNG
    assert [f.rsplit("/", 1)[1] for f in doc["files"]] == [
        "keyrate_vs_distance.csv",
        "keyrate_curves.csv",
        "keyrate_vs_distance.png",
    ]
    header = (out / "keyrate_curves.csv").read_text().splitlines()[0].split(",")
    assert header == [
        "distance_km",
        "asymptotic_single-photon",
        "asymptotic_e91",
        "finite_single-photon_2e+05",
        "finite_single-photon_4e+05",
        "finite_e91_2e+05",
        "finite_e91_4e+05",
    ]
    assert "[8/8]" in stderr and "Traceback" not in stderr


def test_interrupted_sweep_keeps_its_rows_and_resume_runs_the_rest(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    distances = "0,2,4,6,8,10,12,14"
    args = ["sim", "sweep", "--out", str(out), "--no-eve", "--protocols", "single-photon"]
    args += ["--distances", distances, "--pulses", "1e7", "--workers", "1"]
    # `qlink ARGS` with Ctrl-C handled as at a terminal, even when this test runs where SIGINT is ignored
    # (a background job: its children inherit the ignore and Python then installs no handler).
    launcher = (
        "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        f"sys.argv = ['qlink', *{args!r}]; runpy.run_module('qlinkmed.client', run_name='__main__')"
    )
    argv = [sys.executable, "-c", launcher]
    # Its own session, so that SIGINT goes to the sweep and its worker as Ctrl-C at a terminal would.
    proc = subprocess.Popen(
        argv, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    seen = []
    assert proc.stderr is not None
    for line in proc.stderr:
        seen.append(line)
        if line.startswith("[1/8]"):
            os.killpg(proc.pid, signal.SIGINT)
            break
    _, rest = proc.communicate(timeout=120)
    stderr = "".join(seen) + rest
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "--resume" in stderr and "Traceback" not in stderr
    kept = read_results(out / "keyrate_vs_distance.csv")
    assert 1 <= len(kept) < 8
    resume = [sys.executable, "-m", "qlinkmed.client", *args, "--resume"]
    resumed = subprocess.run(resume, capture_output=True, text=True, timeout=300, check=False)
    assert resumed.returncode == 0, resumed.stderr
    assert f"sweep: {8 - len(kept)} points to run" in resumed.stderr
    rows = read_results(out / "keyrate_vs_distance.csv")
    assert [r.point for r in rows[: len(kept)]] == [r.point for r in kept]
    assert sorted(r.point.distance_km for r in rows) == [float(d) for d in distances.split(",")]


def test_a_row_cut_short_by_a_kill_is_not_read(small_sweep: tuple, tmp_path: Path) -> None:
    specs, _ = small_sweep
    path = tmp_path / "points.csv"
    run_points(specs[:2], path, workers=1, stream=io.StringIO())
    path.write_text(path.read_text() + "single-photon,0.0,300000,12")
    assert len(read_results(path)) == 2
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(SweepError, match=r"other\.csv: not a distance-sweep CSV"):
        read_results(tmp_path / "other.csv")
    assert CSV_FIELDS[-1] == "elapsed_s"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--distances", "0,abc"], "argument --distances: expected a number, got 'abc'"),
        (["--distances", "0,,5"], "argument --distances: expected a comma-separated list"),
        (["--distances", "-5"], "argument --distances: must be in [0, 1000]"),
        (["--pulses", "1e8,0"], "argument --pulses: must be positive"),
        (["--protocols", "single-photon,bb92"], "--protocols: unknown 'bb92'; expected some of"),
        (["--protocols", "e91", "--e91-pulses", "1e11"], "--e91-pulses: 1e+11 pairs"),
    ],
)
def test_bad_arguments_are_named(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, args: list[str], needle: str
) -> None:
    code, _, stderr = qlink(capsys, "sim", "sweep", "--out", str(tmp_path), "--no-eve", *args)
    assert code == 2
    assert needle in stderr and "Traceback" not in stderr
    assert not (tmp_path / "keyrate_vs_distance.csv").exists()


def test_points_beyond_the_memory_budget_are_refused_or_skipped(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    base = ["sim", "sweep", "--out", str(tmp_path), "--no-eve", "--protocols", "single-photon"]
    base += ["--curve-max-km", "10", "--workers", "1", "--distances", "0"]
    # 1e12 pulses at 0 km: about 1e11 detections, terabytes of post-processing.
    code, _, stderr = qlink(capsys, *base, "--pulses", "1e12")
    assert code == 2
    assert "single-photon 0 km 1e+12 pulses" in stderr and "--skip-oversized" in stderr
    assert "Traceback" not in stderr
    assert not (tmp_path / "keyrate_vs_distance.csv").exists()
    code, _, stderr = qlink(capsys, *base, "--pulses", "1e12,1e5", "--skip-oversized")
    assert code == 0, stderr
    assert "note: left out over the" in stderr and "single-photon 0 km 1e+12 pulses" in stderr
    assert [r.point.pulses for r in read_results(tmp_path / "keyrate_vs_distance.csv")] == [100_000]


def test_unreachable_scheduler_is_named(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    code, _, stderr = qlink(
        capsys,
        *("sim", "sweep", "--out", str(tmp_path), "--no-eve", "--distances", "0", "--pulses", "1e5"),
        *("--protocols", "decoy", "--scheduler", address, "--scheduler-timeout", "2"),
    )
    assert code == 2
    assert f"cannot reach the Dask scheduler at {address} within 2 s" in stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1


def test_scheduler_without_dask_installed_says_what_to_install(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A None entry in sys.modules makes `import distributed` raise ImportError, as on a machine without it.
    monkeypatch.setitem(sys.modules, "distributed", None)
    code, _, stderr = qlink(
        capsys,
        *("sim", "sweep", "--out", str(tmp_path), "--no-eve", "--distances", "0", "--pulses", "1e5"),
        *("--protocols", "decoy", "--scheduler", "tcp://127.0.0.1:1"),
    )
    assert code == 2
    assert "--scheduler needs dask.distributed" in stderr and "qlinkmed[cluster]" in stderr
    assert "Traceback" not in stderr


def test_daemon_points_round_trip_and_bad_files_are_named(tmp_path: Path) -> None:
    points = [
        DaemonPoint(
            protocol="bb84-decoy",
            distance_km=10.0,
            pulses_per_round=700_000,
            rounds=12,
            key_bits=40_000,
            key_bits_per_pulse=40_000 / (12 * 700_000),
            sustained_bits_per_s=2_000.0,
        )
    ]
    path = tmp_path / "daemon.json"
    path.write_text(json.dumps(daemon_points_document(points, command="test")))
    assert read_daemon_points(path) == points
    doc = json.loads(path.read_text())
    del doc["points"][0]["rounds"]
    path.write_text(json.dumps(doc))
    with pytest.raises(SweepInputError, match=r"points\[0\]\.rounds is missing"):
        read_daemon_points(path)
    with pytest.raises(SweepInputError, match="cannot read"):
        read_daemon_points(tmp_path / "absent.json")
    curves = theory_curves(np.linspace(0, 20, 5), pulses=[10**6], protocols=["e91"])
    assert draw_distance_plot(tmp_path / "plot.png", [], curves, points).read_bytes()[:8] == PNG


def test_the_docs_daemon_points_are_readable() -> None:
    points = read_daemon_points(REPO / "docs" / "data" / "daemon_points.json")
    assert {p.protocol for p in points} >= {"bb84", "e91"}
    assert all(p.rounds > 0 for p in points)
    assert any(p.key_bits > 0 for p in points)
