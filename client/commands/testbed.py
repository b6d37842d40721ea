"""`qlink testbed init|run`: a complete two-facility deployment on loopback, written to a directory and run
in the foreground, for a first look at qlink and for demonstrations."""

from __future__ import annotations

import argparse
import contextlib
import shlex
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..daemon_http import ApiError, call

if TYPE_CHECKING:
    from qlinkmed.qlinkd.testbed.deployment import Deployment
    from qlinkmed.qlinkd.testbed.launcher import ProcessGroup

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
STATUS_INTERVAL_S = 1.0
"""How often `testbed run` prints a status line."""
MIN_PULSES, MAX_PULSES = 10_000, 200_000_000  # qlinkd.config.PeerConfig.pulses_per_round


class _Stop(Exception):
    """SIGTERM arrived: stop the testbed as Ctrl-C would."""


def _pulses(text: str) -> int:
    try:
        value = int(float(text)) if "e" in text.lower() else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not MIN_PULSES <= value <= MAX_PULSES:
        raise argparse.ArgumentTypeError(f"must be in {MIN_PULSES:,}..{MAX_PULSES:,}, got {text}")
    return value


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True, parser_class=type(parser))
    init = sub.add_parser(
        "init",
        help="write a loopback deployment (CA, certificates, pre-shared key, three configurations)",
        description="Write a complete two-facility deployment on 127.0.0.1 into DIR, which must be new or "
        "empty, and print the commands that start it.",
    )
    init.add_argument("dir", type=Path, metavar="DIR", help="directory to create")
    init.add_argument(
        "--protocol",
        choices=("bb84", "bb84-decoy", "e91"),
        default="bb84",
        help="QKD protocol (bb84); bb84-decoy: weak coherent pulses with decoy states",
    )
    init.add_argument(
        "--pulses",
        type=_pulses,
        default=None,
        help="pulses or pairs per round (1e4..2e8; default 1e6 for BB84, 2e7 pairs for E91, for bb84-decoy "
        "the smallest round expected to key comfortably at the fibre)",
    )
    init.add_argument(
        "--distance-km",
        type=float,
        default=10.0,
        help="fibre length of the channel (10); bb84-decoy peers are configured with it as fibre_km",
    )
    init.set_defaults(run=run_init)
    run = sub.add_parser(
        "run",
        help="start the channel service and both daemons of DIR; status every second until Ctrl-C",
        description="Start the deployment written by `qlink testbed init DIR`, wait until every process is "
        "ready, print its addresses and a status line every second; Ctrl-C stops everything.",
    )
    run.add_argument("dir", type=Path, metavar="DIR", help="directory written by `qlink testbed init`")
    run.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for each process to be ready (30)"
    )
    run.set_defaults(run=run_run)


# ---- init ------------------------------------------------------------------------------------------------
def run_init(args: argparse.Namespace) -> int:
    root: Path = args.dir.resolve()
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        print(f"qlink testbed init: error: {args.dir} exists and is not an empty directory", file=sys.stderr)
        return EXIT_USAGE
    from qlinkmed.qlinkd.errors import ConfigError, PkiError
    from qlinkmed.qlinkd.ops.config import load_facility_config
    from qlinkmed.qlinkd.testbed.deployment import write_loopback_deployment

    try:
        deployment = write_loopback_deployment(
            root, protocol=args.protocol, pulses_per_round=args.pulses, distance_km=args.distance_km
        )
        # The round size the daemons will use (a bb84-decoy default depends on the fibre).
        first = load_facility_config(next(iter(deployment.facilities.values())))
    except (OSError, PkiError, ConfigError) as exc:
        print(f"qlink testbed init: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    peer = first.peers[0]
    print(start_instructions(deployment, protocol=args.protocol, pulses=peer.pulses_per_round))
    if peer.decoy is not None:
        print(peer.decoy.summary())
    return EXIT_OK


def start_instructions(deployment: Deployment, *, protocol: str, pulses: int) -> str:
    """What `testbed init` prints: the exact commands that start and watch the deployment."""
    q = shlex.quote
    names = list(deployment.facilities)
    first = deployment.facilities[names[0]]
    lines = [
        f"wrote a loopback testbed to {deployment.root}: {protocol.upper()}, {pulses:,} pulses per round, "
        f"facilities {' and '.join(names)}",
        "start everything in the foreground:",
        f"  qlink testbed run {q(str(deployment.root))}",
        "or each process in its own terminal:",
        f"  qlink-channel --config {q(str(deployment.channel))}",
        *(f"  qlinkd --config {q(str(path))}" for path in deployment.facilities.values()),
        "then watch it and attack it:",
        f"  qlink status --config {q(str(first))}",
        f"  qlink keys --config {q(str(first))}",
        f"  qlink eve attach --channel-config {q(str(deployment.channel))}",
        f"  qlink eve detach --channel-config {q(str(deployment.channel))}",
    ]
    return "\n".join(lines)


# ---- run -------------------------------------------------------------------------------------------------
def run_run(args: argparse.Namespace) -> int:
    from qlinkmed.qlinkd.ops.config import ConfigError
    from qlinkmed.qlinkd.testbed.deployment import read_deployment
    from qlinkmed.qlinkd.testbed.launcher import ProcessGroup

    try:
        deployment = read_deployment(args.dir.resolve())
    except ConfigError as exc:
        print(f"qlink testbed run: config error: {exc.field}: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    group = ProcessGroup(deployment)
    try:
        with _sigterm_stops():
            try:
                group.start_all(timeout=args.timeout)
            except (RuntimeError, TimeoutError) as exc:
                print(f"qlink testbed run: {str(exc).splitlines()[0]}", file=sys.stderr)
                print(f"logs: {deployment.root}/*.log", file=sys.stderr)
                return EXIT_FAILURE
            print(addresses(deployment), flush=True)
            return _stream(group)
    except (KeyboardInterrupt, _Stop):
        return EXIT_OK
    finally:
        group.stop_all()
        print("testbed stopped", flush=True)


def addresses(deployment: Deployment) -> str:
    lines = [f"testbed {deployment.root} is running (Ctrl-C stops it)"]
    lines.append(f"  channel admin  {deployment.admin_url}")
    for name in deployment.facilities:
        lines.append(f"  {name}  local {deployment.local_url(name)}  kme {deployment.kme_url(name)}")
    return "\n".join(lines)


def _stream(group: ProcessGroup) -> int:
    deployment = group.deployment
    next_at = time.monotonic()
    while True:
        for child in group.children.values():
            code = child.process.poll()
            if code is not None:
                print(
                    f"qlink testbed run: {child.name} exited with code {code}; log: {child.log_path}",
                    file=sys.stderr,
                )
                return EXIT_FAILURE
        stamp = time.strftime("%H:%M:%S")
        for name in deployment.facilities:
            try:
                _, status = call(f"{deployment.local_url(name)}/v1/status")
            except ApiError as exc:
                print(f"{stamp}  {name}: unreachable ({exc.reason})", flush=True)
                continue
            for link in status.get("links", []):
                print(f"{stamp}  {status_line(name, link)}", flush=True)
        next_at += STATUS_INTERVAL_S
        time.sleep(max(0.0, next_at - time.monotonic()))


def status_line(facility: str, link: dict[str, Any]) -> str:
    """One line per link and second: pool, rounds, the last round and any alarm."""
    rounds = link.get("rounds", {})
    last = link.get("last_round")
    qber = last.get("qber") if last else None
    line = (
        f"{facility} -> {link.get('peer')}  {link.get('state')}  pool {link.get('pool_bits', 0):,} bits  "
        f"rounds {rounds.get('established', 0)} ok / {rounds.get('aborted', 0)} aborted  "
        f"last QBER {'-' if qber is None else format(qber, '.2%')}"
    )
    if last and not last.get("established"):
        line += f"  round #{last.get('round')} ABORTED ({last.get('reason')})"
    if link.get("alarm"):
        line += f"  ALARM {link['alarm']}"
    return line


@contextlib.contextmanager
def _sigterm_stops() -> Iterator[None]:
    """SIGTERM (systemd, a test harness) and SIGINT (Ctrl-C) stop the testbed cleanly."""

    def stop(signum: int, frame: object) -> None:
        raise _Stop

    # SIGINT too, explicitly: a parent that ignores SIGINT (a test runner, `nohup`, a background job)
    # passes the ignoring on, and Python then never turns Ctrl-C into KeyboardInterrupt.
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
