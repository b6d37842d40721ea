"""DICOM gateway benchmark (issue 17): a CT study of --instances synthetic 512x512 16-bit slices (~0.5 MB
each) sent by dcmtk's `storescu` to facility A's SCP, routed to facility B, forwarded by B to a dcmtk
`storescp`; beside it, in the same run, `storescu` straight to `storescp`. Not a test: it prints figures
(medians over --runs; the machine may be shared). QKD rounds are paused at the pool's high watermark
during the runs, as in bench_dataplane.

    python bench/bench_dicom_gateway.py [--instances 500] [--runs 3] [--quiet-s 30]

Per run, through the gateway: `storescu`'s wall time (the modality sees every instance durable at A),
then until B's ledger records the study delivered to the PACS (the data plane from A to B, B's inbox at
rest, and the C-STORE forward): the end-to-end time the throughput is computed from (study bytes /
seconds from storescu's start to delivery). Direct: `storescu` -> `storescp` wall time. Every run checks
that each instance's data set at the PACS is byte for byte the one in the file storescu sent. Needs dcmtk.

Each run also prints the study's three legs from the daemons' own records (A's outgoing `queued_at`, B's
ledger `added` and `finished`): into A, A -> B at rest, and B's forward to the PACS (with its time an
instance), and the load average, since the machine may be shared. The direct figure is itself held back
by the PACS: `storescp` writes each C-STORE response in two pieces with Nagle on, and `storescu` acknowledges
the first only when its delayed-ACK timer fires (~40 ms an instance on Linux); B's forwarding socket
acknowledges at once (qlinkd/gateways/dicom_socket.py).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import shutil
import socket
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import _deploy as d

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from qlinkmed.qlinkd.testbed.deployment import Deployment, free_ports, write_loopback_deployment
from qlinkmed.qlinkd.testbed.launcher import ProcessGroup
from tests.dicom_factory import make_ct_study

PULSES = 700_000
HIGH_WATERMARK_BITS = 400_000
"""The pool fills to this and rounds pause (resuming only below a tenth of it): the studies move with the
link at rest, the steady state of a full pool, as bench_dataplane measures by default. Each study takes
one session key of 256 bits at each end."""


def dataset_bytes(part10: bytes) -> bytes:
    """What follows the File Meta Information (group 0002, explicit VR little endian) of a Part 10 file."""
    pos = 132
    while pos + 8 <= len(part10):
        group = struct.unpack_from("<H", part10, pos)[0]
        if group != 0x0002:
            break
        vr = part10[pos + 4 : pos + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN"):
            pos += 12 + struct.unpack_from("<I", part10, pos + 8)[0]
        else:
            pos += 8 + struct.unpack_from("<H", part10, pos + 6)[0]
    return part10[pos:]


@contextlib.contextmanager
def storescp(port: int, out: Path) -> Iterator[None]:
    out.mkdir(parents=True)
    process = subprocess.Popen(
        ["storescp", "+B", "+xa", "-aet", "PACS", "-od", str(out), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        d.wait_for(lambda: listening(port), 10, "storescp listening")
        yield
    finally:
        process.terminate()
        process.wait(10)


def listening(port: int) -> bool:
    # A bare TCP connection: storescp logs a failed association and goes on listening.
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


def storescu(called: str, port: int, study: Path) -> float:
    started = time.monotonic()
    subprocess.run(
        ["storescu", "-aet", "CT01", "-aec", called, "+sd", "127.0.0.1", str(port), str(study)],
        check=True,
        capture_output=True,
    )
    return time.monotonic() - started


def check_bit_exact(expected: list[bytes], out: Path) -> None:
    got = sorted(dataset_bytes(p.read_bytes()) for p in out.iterdir())
    if got != expected:
        raise SystemExit(f"NOT bit-exact: {len(got)} instances at the PACS, {len(expected)} sent")


@contextlib.contextmanager
def gateway_deployment(
    root: Path, scp_port: int, pacs_port: int, quiet_s: float
) -> Iterator[tuple[Deployment, ProcessGroup]]:
    deployment = write_loopback_deployment(
        root,
        pulses_per_round=PULSES,
        low_watermark_bits=HIGH_WATERMARK_BITS // 10,
        high_watermark_bits=HIGH_WATERMARK_BITS,
    )
    with deployment.facilities[d.A].open("a") as f:
        f.write(
            f'\n[gateway.dicom]\nae_title = "QLINK_A"\nlisten = "127.0.0.1:{scp_port}"\nquiet_s = {quiet_s}\n'
            f'[[gateway.dicom.route]]\ncalled_ae = "TO_B"\npeer = "{d.B}"\n'
        )
    with deployment.facilities[d.B].open("a") as f:
        f.write(
            f'\n[gateway.dicom]\nae_title = "QLINK_B"\nlisten = "127.0.0.1:0"\n'
            '[[gateway.dicom.destination]]\nname = "pacs"\nae_title = "PACS"\n'
            f'address = "127.0.0.1:{pacs_port}"\n'
        )
    with ProcessGroup(deployment) as group:
        for name in d.NAMES:
            group.start(name)
        for name in d.NAMES:
            group.wait_ready(name)
        yield deployment, group


def _newest(path: Path, query: str) -> tuple[float, ...] | None:
    """The first row `query` gives from a daemon's SQLite file (read-only), None if there is none yet."""
    if not path.exists():
        return None
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = db.execute(query).fetchone()
        return None if row is None else tuple(float(v) for v in row)
    except sqlite3.OperationalError:
        return None
    finally:
        db.close()


def delivered(deployment: Deployment) -> int:
    row = _newest(
        deployment.root / "state" / d.B / "forwards.sqlite3",
        "SELECT COUNT(*) FROM forwards WHERE state = 'delivered'",
    )
    return 0 if row is None else int(row[0])


def phases(deployment: Deployment, started: float) -> tuple[float, float, float]:
    """The newest study's legs from the daemons' own records (wall-clock seconds): into A until A queued
    it (storescu, then the association's end closing the study), A -> B until B's inbox held it at rest
    (A's outbox, the data plane, B's validation and at-rest sealing), and B's forward to the PACS."""
    state = deployment.root / "state"
    queued = _newest(state / d.A / "transfers.sqlite3", "SELECT queued_at FROM outgoing ORDER BY seq DESC")
    forward = _newest(
        state / d.B / "forwards.sqlite3", "SELECT added, finished FROM forwards ORDER BY seq DESC"
    )
    if queued is None or forward is None:
        raise SystemExit("the daemons' records do not hold the study")
    return queued[0] - started, forward[0] - queued[0], forward[1] - forward[0]


def studies_at_pacs(deployment: Deployment, count: int) -> bool:
    return delivered(deployment) >= count


def rounds_paused(deployment: Deployment) -> bool:
    # Alice (hospital-a, the smaller id) starts the rounds: her link reports the pause.
    return bool((d.link_status(deployment, d.A) or {}).get("rounds_paused"))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--instances", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quiet-s", type=float, default=30.0)
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # progress shows as it comes
    for tool in ("storescu", "storescp"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: apt-get install dcmtk")
    with tempfile.TemporaryDirectory(prefix="qlink-bench-dicom-") as tmp:
        root = Path(tmp)
        study = root / "study"
        study.mkdir()
        made = time.monotonic()
        expected = []
        for i, data in enumerate(make_ct_study(args.instances, 512, 512, seed=42)):
            (study / f"ct{i:04d}.dcm").write_bytes(data)
            expected.append(dataset_bytes(data))
        expected.sort()
        size = sum(p.stat().st_size for p in study.iterdir())
        mb = size / 1e6
        print(f"study: {args.instances} instances, {mb:.1f} MB (made in {time.monotonic() - made:.1f} s)")
        scp_port, pacs_port = free_ports(2)
        direct, gateway, modality, forwards = [], [], [], []
        with gateway_deployment(root / "deploy", scp_port, pacs_port, args.quiet_s) as (deployment, group):
            filling = d.wait_for(functools.partial(rounds_paused, deployment), 1800, "rounds paused")
            print(
                f"pool filled to {HIGH_WATERMARK_BITS:,} bits, rounds paused, in {filling:.0f} s", flush=True
            )
            for run in range(args.runs):
                # Direct first, then the gateway, alternating run by run under the same load.
                out = root / f"direct{run}"
                with storescp(pacs_port, out):
                    direct.append(storescu("PACS", pacs_port, study))
                check_bit_exact(expected, out)
                shutil.rmtree(out)
                out = root / f"gateway{run}"
                with storescp(pacs_port, out):
                    started, wall = time.monotonic(), time.time()
                    modality.append(storescu("TO_B", scp_port, study))
                    d.wait_for(functools.partial(studies_at_pacs, deployment, run + 1), 600, "at the PACS")
                    gateway.append(time.monotonic() - started)
                check_bit_exact(expected, out)
                shutil.rmtree(out)
                into_a, a_to_b, forward = phases(deployment, wall)
                forwards.append(forward)
                peaks = ", ".join(f"{k} {v:.0f} MiB" for k, v in d.peak_rss_mib(group).items())
                print(
                    f"run {run + 1}: direct {direct[-1]:.2f} s; gateway {gateway[-1]:.2f} s "
                    f"(storescu done after {modality[-1]:.2f} s; queued at A after {into_a:.1f} s, "
                    f"A -> B at rest {a_to_b:.1f} s, forward to the PACS {forward:.1f} s = "
                    f"{1000 * forward / args.instances:.0f} ms an instance); load {os.getloadavg()[0]:.1f}; "
                    f"peak RSS so far: {peaks}"
                )
        med_direct, med_gateway, med_modality = map(statistics.median, (direct, gateway, modality))
        n = args.instances

        def rate(seconds: float) -> str:
            return f"{mb / seconds:7.1f} MB/s {n / seconds:7.1f} inst/s"

        print(f"median of {args.runs} runs, every instance bit-exact at the PACS:")
        print(f"  direct storescu -> storescp:        {rate(med_direct)}")
        gain = 100 * med_direct / med_gateway
        print(f"  storescu -> A -> B -> storescp:     {rate(med_gateway)}  ({gain:.0f} % of direct)")
        print(f"  storescu -> A's SCP (durable at A): {rate(med_modality)}")
        print(f"  B's forward to the PACS alone:      {rate(statistics.median(forwards))}")
        print(f"load average (1, 5, 15 min) at the end: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
