"""HL7 v2 over MLLP end to end: N messages from a sending interface engine at facility A to the receiving
interface engine behind facility B, with ACKs checked at both ends, nothing lost, order kept, and the
latency from send to the engine's receipt.

    .venv/bin/python bench/bench_mllp.py                      # 10,000 messages
    .venv/bin/python bench/bench_mllp.py --kill9 5 --json     # and kill -9 the receiving daemon 5 times

A loopback deployment runs (channel service, two daemons) with A's MLLP listener and B's forwarding to
hl7apy's MLLPServer (answering with python-hl7's ACKs: independent code at both ends). The sender is
python-hl7's MLLPClient on one long-lived connection, one message at a time (MLLP's own discipline), each
as soon as the last is ACKed or at --rate messages a second (a backlog behind the data plane makes the
unpaced latency a queueing figure): each ADT^A01 carries a unique MSH-10. With --kill9 K, B is SIGKILLed
K times, evenly over the run (whenever the engine has received another N/(K+1) messages, plus a random
0-0.3 s so the kill lands anywhere: in a data session, between the inbox and the ledger, or between the
engine's ACK and the ledger's "delivered"), and restarted at once.

Checked: every message ACKed AA at A reaches the engine (0 lost); with the engine's repeats dropped by
MSH-10 (HL7's duplicate detection), each arrives once and in the order sent. Delivery from B to the
engine is at least once: a kill after the engine's ACK and before B records it sends that message again
after the restart (reported as "repeats").
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import _deploy as d
from hl7.client import MLLPClient

from qlinkmed.client.commands.demo import _token
from qlinkmed.client.data_http import DataTarget
from qlinkmed.qlinkd.gateways.hl7_ack import parse_ack
from qlinkmed.qlinkd.gateways.mllp_framing import MessageFramed, MllpDecoder
from qlinkmed.qlinkd.testbed.deployment import free_ports, write_loopback_deployment
from qlinkmed.qlinkd.testbed.launcher import ProcessGroup

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # tests/ is a package of the repository, not of the installed qlinkmed
    sys.path.insert(0, str(ROOT))
from tests.qlinkd.gateways.mllp_engine import Engine  # noqa: E402

KEY_BITS = 64_000
DRAIN_TIMEOUT_S = 600.0


@dataclass(frozen=True, slots=True, kw_only=True)
class MllpReport:
    messages: int
    acked_aa: int
    """Messages A answered AA (durable at A)."""
    other_acks: dict[str, int]
    """Any other answer A gave (must be empty)."""
    received_unique: int
    """Distinct MSH-10s the engine received."""
    lost: int
    """ACKed AA at A, never at the engine (must be 0)."""
    repeats: int
    """Receipts at the engine of an MSH-10 it already had (a kill between its ACK and B's ledger)."""
    order_kept: bool
    """The engine's first receipts of each MSH-10 are in the order they were sent."""
    kills: int
    ready_s: list[float]
    """Per kill: restart of B -> READY=1."""
    seconds: float
    """First send -> last message at the engine."""
    messages_per_s: float
    ack_p50_ms: float
    """Send -> AA at A (the sending engine's wait)."""
    ack_p99_ms: float
    latency_p50_ms: float
    """Send -> the message at B's interface engine."""
    latency_p99_ms: float
    latency_max_ms: float


def adt(i: int) -> bytes:
    control = f"B{i:07d}"
    return (
        f"MSH|^~\\&|ADT1|HOSP_A|LAB|HOSP_B|20240101120000||ADT^A01^ADT_A01|{control}|P|2.5\r"
        f"EVN|A01|20240101120000\rPID|1||P{i:07d}^^^HOSP_A^MR||DOE^JOHN||19700101|M\rPV1|1|I|W1^101^1\r"
    ).encode()


class Sender(threading.Thread):
    def __init__(self, port: int, count: int, rate: float) -> None:
        super().__init__(name="mllp-sender", daemon=True)
        self.port = port
        self.count = count
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.sent: list[float] = []
        self.acked: list[float] = []
        self.codes: list[str] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with MLLPClient("127.0.0.1", self.port) as client:
                start = time.monotonic()
                for i in range(self.count):
                    message = adt(i)
                    pause = start + i * self.interval - time.monotonic()
                    if pause > 0:
                        time.sleep(pause)  # the sending engine's pace
                    self.sent.append(time.monotonic())
                    answer = client.send_message(message)
                    self.acked.append(time.monotonic())
                    frames = [e.message for e in MllpDecoder().feed(answer) if isinstance(e, MessageFramed)]
                    reply = parse_ack(frames[0]) if frames else None
                    ok = reply is not None and reply.control_id == f"B{i:07d}"
                    self.codes.append(reply.code if ok and reply else "?")
        except BaseException as exc:  # reported by the main thread
            self.error = exc


def _reached(engine: Engine, count: int) -> bool:
    return len(engine.received) >= count


def _owned_bits(target: DataTarget) -> int:
    try:
        status, body = target.json("GET", "/v1/status")
    except Exception:
        return 0
    return int(body["links"][0]["pool_bits_owned"]) if status == 200 else 0


def run(
    count: int, kills: int, *, seed: int, pulses: int, rate: float = 0.0, root: Path | None = None
) -> MllpReport:
    rng = random.Random(seed)  # when the kills land: reproducible, not a secret
    with tempfile.TemporaryDirectory(prefix="qlink-bench-mllp-") as tmp:
        deployment = write_loopback_deployment(
            root or Path(tmp) / "deploy",
            pulses_per_round=pulses,
        )
        listen_port, engine_port = free_ports(2)
        with deployment.facilities[d.A].open("a") as config:
            config.write(
                f'\n[gateway.mllp]\nlisten = "127.0.0.1:{listen_port}"\n'
                f'[[gateway.mllp.route]]\npeer = "{d.B}"\n'
            )
        with deployment.facilities[d.B].open("a") as config:
            config.write(
                f'\n[gateway.mllp]\n[[gateway.mllp.destination]]\nname = "engine"\n'
                f'address = "127.0.0.1:{engine_port}"\nack_timeout_s = 10\n'
            )
        engine = Engine(port=engine_port).start()
        try:
            with ProcessGroup(deployment) as group:
                for name in d.NAMES:
                    group.start(name)
                for name in d.NAMES:
                    group.wait_ready(name)
                a = DataTarget(deployment.local_url(d.A), _token(deployment, d.A))
                b = DataTarget(deployment.local_url(d.B), _token(deployment, d.B))
                d.wait_for(
                    lambda: _owned_bits(a) >= KEY_BITS and _owned_bits(b) >= KEY_BITS,
                    120,
                    "key in both pools",
                )
                sender = Sender(listen_port, count, rate)
                sender.start()
                ready: list[float] = []
                for k in range(1, kills + 1):
                    target = k * count // (kills + 1)
                    d.wait_for(partial(_reached, engine, target), DRAIN_TIMEOUT_S, f"{target} at the engine")
                    time.sleep(rng.uniform(0.0, 0.3))  # the random instant of the kill, not a wait
                    group.kill(d.B, signal.SIGKILL)
                    group.start(d.B)
                    ready.append(group.wait_ready(d.B, timeout=60))
                sender.join(DRAIN_TIMEOUT_S)
                if sender.error is not None:
                    raise RuntimeError(f"the sender failed: {sender.error!r}")
                acked = [f"B{i:07d}" for i, code in enumerate(sender.codes) if code == "AA"]
                wanted = set(acked)

                deadline = time.monotonic() + DRAIN_TIMEOUT_S
                while not wanted <= set(engine.control_ids()) and time.monotonic() < deadline:
                    time.sleep(0.2)
                group.stop_all()
        finally:
            engine.stop()
        ids = engine.control_ids()
        first: dict[str, float] = {}
        order: list[str] = []
        for control, at in zip(ids, engine.arrived, strict=True):
            if control not in first:
                first[control] = at
                order.append(control)
        sent_at = {f"B{i:07d}": t for i, t in enumerate(sender.sent)}
        latencies = [1000 * (first[c] - sent_at[c]) for c in acked if c in first]
        ack_ms = [1000 * (t1 - t0) for t0, t1 in zip(sender.sent, sender.acked, strict=False)]
        others: dict[str, int] = {}
        for code in sender.codes:
            if code != "AA":
                others[code] = others.get(code, 0) + 1
        span = (max(first.values()) - sender.sent[0]) if first else float("nan")
        return MllpReport(
            messages=count,
            acked_aa=len(acked),
            other_acks=others,
            received_unique=len(first),
            lost=len(wanted - first.keys()),
            repeats=len(ids) - len(first),
            order_kept=[c for c in order if c in wanted] == acked,
            kills=kills,
            ready_s=ready,
            seconds=span,
            messages_per_s=len(first) / span if first else 0.0,
            ack_p50_ms=d.percentile(ack_ms, 0.5),
            ack_p99_ms=d.percentile(ack_ms, 0.99),
            latency_p50_ms=d.percentile(latencies, 0.5),
            latency_p99_ms=d.percentile(latencies, 0.99),
            latency_max_ms=max(latencies) if latencies else float("nan"),
        )


def ok(report: MllpReport) -> bool:
    return (
        report.acked_aa == report.messages
        and not report.other_acks
        and report.lost == 0
        and report.order_kept
        and report.received_unique == report.messages
    )


def print_report(r: MllpReport) -> None:
    print(f"HL7 over MLLP: {r.messages} ADT^A01 messages, A's listener -> B -> hl7apy MLLPServer")
    print(
        f"ACKs at A: {r.acked_aa} AA, others {r.other_acks or 'none'}; "
        f"p50 {r.ack_p50_ms:.1f} ms, p99 {r.ack_p99_ms:.1f} ms"
    )
    print(
        f"at the engine: {r.received_unique} distinct MSH-10s, lost {r.lost}, repeats {r.repeats} "
        f"(dropped by MSH-10), order {'kept' if r.order_kept else 'BROKEN'}"
    )
    print(
        f"send -> engine: p50 {r.latency_p50_ms:.1f} ms, p99 {r.latency_p99_ms:.1f} ms, "
        f"max {r.latency_max_ms:.0f} ms; "
        f"{r.messages_per_s:.0f} messages/s over {r.seconds:.1f} s"
    )
    if r.kills:
        print(f"kill -9 of B: {r.kills} times; restart -> READY {', '.join(f'{s:.2f}' for s in r.ready_s)} s")
    print("OK" if ok(r) else "FAILED")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument(
        "--kill9", type=int, default=0, metavar="K", help="SIGKILL the receiving daemon K times"
    )
    parser.add_argument(
        "--rate", type=float, default=0.0, help="messages per second (0: each as soon as the last is ACKed)"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--pulses", type=int, default=700_000, help="pulses per round")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--root", type=Path, help="write the deployment here and keep it (logs, audit)")
    args = parser.parse_args(argv)
    report = run(
        args.messages, args.kill9, seed=args.seed, pulses=args.pulses, rate=args.rate, root=args.root
    )
    if args.json:
        print(json.dumps(asdict(report), indent=2))
    else:
        print_report(report)
    return 0 if ok(report) else 1


if __name__ == "__main__":
    sys.exit(main())
