"""`qlink testbed init|run|wan|endpoints`: a complete two-facility deployment on loopback, written to a
directory and run in the foreground, for a first look at qlink and for demonstrations; with WAN proxy
ports, its links run through emulated wide-area delay, loss and partitions that `testbed wan` changes
from another shell; with gateways, each facility takes DICOM, HL7 v2 over MLLP and FHIR and forwards to a
local PACS, interface engine and FHIR server. `endpoints` prints every address (JSON for scripts)."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import shlex
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..daemon_http import ApiError, call

if TYPE_CHECKING:
    from qlinkmed.qlinkd.testbed.deployment import Deployment
    from qlinkmed.qlinkd.testbed.launcher import ProcessGroup
    from qlinkmed.qlinkd.testbed.wan import WanSpec
    from qlinkmed.qlinkd.testbed.wan_links import WanLinks

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


def _wan_spec(text: str) -> WanSpec:
    from qlinkmed.qlinkd.errors import ConfigError
    from qlinkmed.qlinkd.testbed.wan import WanSpec

    try:
        return WanSpec.parse(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(f"{exc.field}: {exc.message}") from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text}")
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
        help="pulses or pairs per round (1e4..2e8; default 2e7 for BB84, 2e7 pairs for E91, for bb84-decoy "
        "the smallest round expected to key comfortably at the fibre)",
    )
    init.add_argument(
        "--distance-km",
        type=float,
        default=10.0,
        help="fibre length of the channel (10); bb84-decoy peers are configured with it as fibre_km",
    )
    init.add_argument(
        "--wan-proxies",
        action="store_true",
        help="route the classical link and both data links through proxy ports, so that "
        "`testbed run --wan` can emulate a wide-area network on them",
    )
    init.add_argument(
        "--gateways",
        action="store_true",
        help="enable every hospital gateway at both facilities (DICOM SCP, MLLP listener, FHIR REST), each "
        "forwarding to a local PACS, interface engine and FHIR server on free ports (`testbed endpoints`)",
    )
    init.add_argument(
        "--json", action="store_true", help="print every endpoint as JSON (as `testbed endpoints --json`)"
    )
    init.set_defaults(run=run_init)
    endpoints = sub.add_parser(
        "endpoints",
        help="print every endpoint of DIR: listeners, URLs, AE titles and ports of the gateways",
        description="Print every endpoint of the deployment in DIR, read from its configuration files: "
        "per facility the local API, metrics, KME, data plane, and each gateway with its AE titles, ports, "
        "FHIR base URLs and the destinations it forwards to.",
    )
    endpoints.add_argument("dir", type=Path, metavar="DIR", help="directory written by `qlink testbed init`")
    endpoints.add_argument("--json", action="store_true", help="print them as JSON")
    endpoints.set_defaults(run=run_endpoints)
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
    run.add_argument(
        "--wan",
        type=_wan_spec,
        default=None,
        metavar="DELAY[,JITTER,LOSS,RATE]",
        help="emulate a WAN on the classical and data links, per direction: one-way delay, uniform "
        "jitter, loss (each loss stalls a chunk one retransmission timeout) and rate, e.g. 25ms or "
        "25ms,5ms,0.5%%,100mbit (needs a DIR written with --wan-proxies; 0ms without this option)",
    )
    run.add_argument(
        "--wan-seed",
        type=int,
        default=None,
        help="seed of the emulated jitter and loss, to repeat a run (default: a fresh one)",
    )
    run.set_defaults(run=run_run)
    wan = sub.add_parser(
        "wan",
        help="cut, restore or flap the emulated WAN links of a running `testbed run --wan`, or show them",
        description="Talk to the `qlink testbed run` serving DIR (through DIR/wan.sock): cut partitions "
        "the links (nothing is delivered, new connections wait), restore ends a partition or a flap, flap "
        "cuts them for --down seconds at the start of every --period, status shows each link.",
    )
    wan.add_argument("dir", type=Path, metavar="DIR", help="directory of the running testbed")
    wan.add_argument(
        "wan_action", choices=("cut", "restore", "flap", "status"), metavar="cut|restore|flap|status"
    )
    wan.add_argument(
        "--classical", action="store_true", help="act on the classical link only (default: every link)"
    )
    wan.add_argument("--period", type=_seconds, default=None, help="flap: seconds from one cut to the next")
    wan.add_argument("--down", type=_seconds, default=None, help="flap: seconds each cut lasts")
    wan.add_argument("--json", action="store_true", help="print the links as JSON")
    wan.set_defaults(run=run_wan)


# ---- init ------------------------------------------------------------------------------------------------
def run_init(args: argparse.Namespace) -> int:
    root: Path = args.dir.resolve()
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        print(f"qlink testbed init: error: {args.dir} exists and is not an empty directory", file=sys.stderr)
        return EXIT_USAGE
    from qlinkmed.qlinkd.errors import ConfigError, PkiError
    from qlinkmed.qlinkd.ops.config import load_facility_config
    from qlinkmed.qlinkd.testbed.deployment import endpoints, write_loopback_deployment

    try:
        deployment = write_loopback_deployment(
            root,
            protocol=args.protocol,
            pulses_per_round=args.pulses,
            distance_km=args.distance_km,
            wan_proxies=args.wan_proxies,
            gateways=args.gateways,
        )
        # The round size the daemons will use (a bb84-decoy default depends on the fibre).
        first = load_facility_config(next(iter(deployment.facilities.values())))
        found = endpoints(deployment)
    except (OSError, PkiError, ConfigError) as exc:
        print(f"qlink testbed init: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if args.json:
        print(json.dumps(found, indent=2))
        return EXIT_OK
    peer = first.peers[0]
    print(start_instructions(deployment, protocol=args.protocol, pulses=peer.pulses_per_round))
    if args.gateways:
        print(format_endpoints(found))
    if peer.decoy is not None:
        print(peer.decoy.summary())
    return EXIT_OK


# ---- endpoints -------------------------------------------------------------------------------------------
def run_endpoints(args: argparse.Namespace) -> int:
    from qlinkmed.qlinkd.errors import ConfigError
    from qlinkmed.qlinkd.testbed.deployment import endpoints, read_deployment

    try:
        found = endpoints(read_deployment(args.dir.resolve()))
    except ConfigError as exc:
        print(f"qlink testbed endpoints: config error: {exc.field}: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(found, indent=2) if args.json else format_endpoints(found))
    return EXIT_OK


def _hostport(address: dict[str, Any]) -> str:
    return f"{address['host']}:{address['port']}"


def format_endpoints(found: dict[str, Any]) -> str:
    """`endpoints` as text: one block per facility, and how to send to each gateway."""
    lines = [f"channel service  {_hostport(found['channel']['listen'])}  admin {found['channel']['admin']}"]
    for name, f in found["facilities"].items():
        lines.append(f"{name}:")
        lines.append(f"  local API        {f['local_api']}  (metrics {f['metrics']})")
        data = "none" if f["data"] is None else _hostport(f["data"])
        lines.append(f"  KME              {f['kme']}  data plane {data}")
        if (dicom := f["dicom"]) is not None:
            host, port = dicom["scp"]["host"], dicom["scp"]["port"]
            for route in dicom["routes"]:
                lines.append(
                    f"  DICOM SCP        {host}:{port} AE {dicom['ae_title']}: call AE {route['called_ae']} "
                    f"to send to {route['peer']}  (storescu -aec {route['called_ae']} {host} {port} FILE...)"
                )
            for d in dicom["destinations"]:
                lines.append(
                    f"  PACS (forward)   {d['host']}:{d['port']} AE {d['ae_title']}, called as "
                    f"{dicom['ae_title']}  (storescp -aet {d['ae_title']} {d['port']})"
                )
        if (mllp := f["mllp"]) is not None:
            if mllp["listen"] is not None:
                listen = mllp["listen"]
                lines.append(
                    f"  MLLP listener    {_hostport(listen)}  (mllp_send --loose --port {listen['port']} "
                    f"--file MSG.hl7 {listen['host']})"
                )
            for d in mllp["destinations"]:
                lines.append(f"  engine (forward) {d['host']}:{d['port']}  (an MLLP receiver)")
        if (fhir := f["fhir"]) is not None:
            for url in fhir["base_urls"].values():
                lines.append(f"  FHIR base        {url}  (token: {fhir['token_file']}, made at first start)")
            for d in fhir["destinations"]:
                lines.append(f"  FHIR (forward)   {d['base_url']}")
    return "\n".join(lines)


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
    if deployment.routes:
        root = q(str(deployment.root))
        lines[2] = f"  qlink testbed run {root} --wan 25ms    (25 ms one way: a 50 ms round trip)"
        lines[3] = "or each process in its own terminal (its links need the proxies `testbed run` runs):"
        lines += [
            "and cut, restore or flap its links from another shell:",
            f"  qlink testbed wan {root} cut|restore|status",
            f"  qlink testbed wan {root} flap --period 10 --down 2",
        ]
    return "\n".join(lines)


# ---- run -------------------------------------------------------------------------------------------------
def run_run(args: argparse.Namespace) -> int:
    from qlinkmed.qlinkd.errors import ConfigError
    from qlinkmed.qlinkd.testbed.deployment import read_deployment
    from qlinkmed.qlinkd.testbed.launcher import ProcessGroup

    try:
        deployment = read_deployment(args.dir.resolve())
    except ConfigError as exc:
        print(f"qlink testbed run: config error: {exc.field}: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    if args.wan is not None and not deployment.routes:
        print(
            f"qlink testbed run: error: --wan needs WAN proxy ports: {args.dir} was written without them "
            "(write a new one with `qlink testbed init DIR --wan-proxies`)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    group = ProcessGroup(deployment)
    # The signal guard is outermost: a signal that arrives while the testbed stops must not cut the
    # cleanup short (that left the daemons running, orphaned, under timeout(1)).
    with _sigterm_stops() as quiet, contextlib.ExitStack() as stack:
        try:
            try:
                # The proxies come up before the daemons, so their first dial reaches a listener.
                links = _start_wan(deployment, args) if deployment.routes else None
                if links is not None:
                    stack.callback(links.close)  # runs after the processes have stopped
                group.start_all(timeout=args.timeout)
            except (RuntimeError, TimeoutError, OSError, ConfigError) as exc:
                print(f"qlink testbed run: {str(exc).splitlines()[0]}", file=sys.stderr)
                print(f"logs: {deployment.root}/*.log", file=sys.stderr)
                return EXIT_FAILURE
            print(addresses(deployment), flush=True)
            if links is not None:
                print(wan_addresses(links), flush=True)
            return _stream(group)
        except (KeyboardInterrupt, _Stop):
            return EXIT_OK
        finally:
            quiet()
            group.stop_all()
            print("testbed stopped", flush=True)


def _start_wan(deployment: Deployment, args: argparse.Namespace) -> WanLinks:
    from qlinkmed.qlinkd.testbed.wan import WanSpec
    from qlinkmed.qlinkd.testbed.wan_links import CONTROL_SOCKET, WanLinks

    spec = args.wan if args.wan is not None else WanSpec(delay_s=0.0)
    # The emulated network's jitter and loss are no secret: a seeded generator, so a run can be repeated.
    rng = random.Random(args.wan_seed) if spec.random else None
    links = WanLinks(
        deployment,
        spec,
        rng=rng,
        control=deployment.root / CONTROL_SOCKET,
        on_command=lambda line: print(f"{time.strftime('%H:%M:%S')}  {line}", flush=True),
    )
    links.start()
    return links


def wan_addresses(links: WanLinks) -> str:
    """Where `testbed run` says the WAN proxies are and how to drive them."""
    from qlinkmed.qlinkd.testbed.wan_links import describe

    lines = [f"  WAN emulation  {describe(links.spec)}, each direction; control {links.control}"]
    for name, route in links.deployment.routes.items():
        listener = "classical" if name == "classical" else "data"
        lines.append(
            f"  wan {name:<20} {route.sender} -> 127.0.0.1:{route.port} -> "
            f"{route.receiver} {listener} 127.0.0.1:{route.target}"
        )
    lines.append(f"  (qlink testbed wan {shlex.quote(str(links.deployment.root))} cut|restore|flap|status)")
    return "\n".join(lines)


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


# ---- wan -------------------------------------------------------------------------------------------------
def run_wan(args: argparse.Namespace) -> int:
    from qlinkmed.qlinkd.errors import ConfigError
    from qlinkmed.qlinkd.testbed.wan_links import CONTROL_SOCKET, control

    action = args.wan_action
    prog = "qlink testbed wan"
    if action == "flap":
        if args.period is None or args.down is None:
            print(f"{prog}: error: flap needs --period S and --down S", file=sys.stderr)
            return EXIT_USAGE
        if not args.down < args.period:
            print(
                f"{prog}: error: --down ({args.down:g} s) must be shorter than --period ({args.period:g} s)",
                file=sys.stderr,
            )
            return EXIT_USAGE
    elif args.period is not None or args.down is not None:
        print(f"{prog}: error: --period and --down go with flap only", file=sys.stderr)
        return EXIT_USAGE
    if action == "status" and args.classical:
        print(f"{prog}: error: --classical goes with cut, restore and flap", file=sys.stderr)
        return EXIT_USAGE
    request: dict[str, Any] = {"action": action, "scope": "classical" if args.classical else "all"}
    if action == "flap":
        request |= {"period_s": args.period, "down_s": args.down}
    root = args.dir.resolve()
    try:
        answer = control(root, request)
    except ConfigError as exc:
        print(f"{prog}: error: {exc.message}", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as exc:
        print(
            f"{prog}: error: no `qlink testbed run --wan` serves {args.dir} (cannot connect to "
            f"{root / CONTROL_SOCKET}: {exc.strerror or exc})",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    if args.json:
        print(json.dumps(answer, indent=2))
    else:
        print(format_wan(answer))
    return EXIT_OK


def format_wan(answer: dict[str, Any]) -> str:
    """The control socket's answer, one line per link."""
    lines = [f"WAN emulation: {answer.get('spec')}, each direction"]
    for link in answer.get("links", []):
        state = "CUT" if link["cut"] else "up"
        lines.append(
            f"  {link['name']:<18} {link['sender']} -> {link['receiver']}  {state:<4} ({link['mode']})  "
            f"connections {link['connections']}  delivered {link['upstream_delivered']:,} B up / "
            f"{link['downstream_delivered']:,} B down  stalls {link['stalls']}  held {link['held']}"
        )
    return "\n".join(lines)


@contextlib.contextmanager
def _sigterm_stops() -> Iterator[Callable[[], None]]:
    """SIGTERM (systemd, a test harness) and SIGINT (Ctrl-C) stop the testbed cleanly: the first raises
    _Stop, and once the testbed is stopping (the first signal, or the `quiet()` this yields) later ones
    are ignored until the context ends, so the cleanup inside it runs to the end. timeout(1) signals its
    child and then the child's whole process group: a second SIGTERM a moment after the first is usual."""
    stopping = False

    def quiet() -> None:
        nonlocal stopping
        stopping = True

    def stop(signum: int, frame: object) -> None:
        if stopping:
            return
        quiet()
        raise _Stop

    # SIGINT too, explicitly: a parent that ignores SIGINT (a test runner, `nohup`, a background job)
    # passes the ignoring on, and Python then never turns Ctrl-C into KeyboardInterrupt.
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield quiet
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
