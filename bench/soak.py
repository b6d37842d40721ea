"""Soak test: both daemons and the channel service under continuous rounds, a steady ETSI 014 consumer and
a steady EHR sender for an hour through an emulated WAN; memory, file descriptors, pools, messages and
latency checked at the end.

    python bench/soak.py                          # 60 minutes, 10 ms one way (20 ms round trip)
    python bench/soak.py --minutes 5 --json       # the short proof run

A fresh deployment whose classical link and data links go through the user-space WAN emulator
(qlinkd/testbed/wan.py; --wan, default 10ms one way). The high watermark is out of reach, so rounds never
pause. Once both pools hold key, the load starts and runs for --minutes in all:
- an ETSI 014 consumer: every second, enc_keys for 1 key of 256 bits at A (master pacs-hospital-a), then
  dec_keys by id at B (slave pacs-hospital-b); a fifth of the keys is asked for again at B, which must
  refuse;
- an EHR sender: --rate messages a second (default 5) from A to B through A's data API (POST /v1/ehr,
  no wait: the call returns once the message is durably queued), FHIR R5 Bundles and HL7 v2.5 ORU^R01
  results in turn, on a fixed schedule (a late call is not made up by a burst).

Resident memory (VmRSS) and open file descriptors of the three processes are read from /proc every 10 s.
A daemon's RSS swings by ~10 % within a minute as rounds allocate and free their arrays, so one sample is
not a level: each checkpoint (start, 10 min, end) is the median of the samples in the minute before it,
and the growth is the end's against the one after the warm-up (--warmup, default 10 minutes from 20
minutes up, the issue's start/10 min/60 min checkpoints; 1 minute for shorter runs), the goal being at most
10 %. The least-squares slope of RSS after the warm-up (MiB an hour) is printed beside it: a leak is a
slope, a warm-up is a step. EHR latency is from the moment just before the
sender's POST at A (wall clock) to the stored_at of B's transfer_received audit record: when B's inbox
commit of the message had returned, i.e. when the message is visible in B's inbox (same host, same
clock). At the end the sender stops, every message must be delivered (A's record) and be in B's inbox
once and bit-exact (each one fetched back and compared); the consumer fetches the keys still owed; the
processes are stopped and both key stores compared (same committed rounds, bytes by SHA-256; one
authentication key stream; no key handed out or delivered twice). Exit status 1 when anything is off.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import _checks as c
import _deploy as d

from qlinkmed.client.commands.demo import _metric
from qlinkmed.client.daemon_http import ApiError
from qlinkmed.client.data_http import DataTarget
from qlinkmed.client.demo_data import FHIR_BUNDLE, HL7_ORU

KEY_BITS = 64_000
"""Key both pools hold before the load starts."""
READY_TIMEOUT_S = 180.0
SAMPLE_EVERY_S = 10.0
LEVEL_WINDOW_S = 60.0
"""A checkpoint's RSS and descriptors: the median of the samples in the minute up to it."""
DELIVERY_TIMEOUT_S = 300.0
"""How long after the sender stops every message may take to be delivered."""
DRAIN_S = 60.0
GROWTH_GOAL = 0.10
MESSAGES = ((FHIR_BUNDLE, "bundle.json"), (HL7_ORU, "result.hl7"))


@dataclass(slots=True)
class Sent:
    transfer_id: str
    kind: int
    """Index into MESSAGES."""
    at: float
    """Wall clock just before the POST."""


class EhrSender(threading.Thread):
    """POSTs one message every 1/rate seconds on a fixed schedule until stopped."""

    def __init__(self, a: DataTarget, rate: float) -> None:
        super().__init__(name="ehr-sender", daemon=True)
        self._a = a
        self._period = 1.0 / rate
        self.stop = threading.Event()
        self.sent: list[Sent] = []
        self.errors: Counter[str] = Counter()
        self.late = 0
        """Ticks whose POST started more than one period late (the API or the host was slow)."""

    def run(self) -> None:
        start = time.monotonic()
        tick = 0
        while not self.stop.is_set():
            due = start + tick * self._period
            if (lag := time.monotonic() - due) > 0:
                self.late += lag > self._period
                # Skip ticks missed by more than a period: a steady rate, never a catch-up burst.
                tick += int(lag // self._period)
            elif self.stop.wait(-lag):
                return
            kind = tick % len(MESSAGES)
            data, name = MESSAGES[kind]
            at = time.time()
            try:
                status, body = self._a.json("POST", f"/v1/ehr?to={d.B}&name={name}&wait=0", body=data)
            except ApiError as exc:
                self.errors[f"unreachable: {exc}"[:80]] += 1
            else:
                if status == 202 and body.get("state") == "queued":
                    self.sent.append(Sent(body["transfer_id"], kind, at))
                else:
                    self.errors[f"HTTP {status}"] += 1
            tick += 1


@dataclass(slots=True)
class SoakReport:
    minutes: float
    warmup_s: float
    wan: str
    rate: float
    samples: list[c.Usage] = field(default_factory=list)
    checkpoints: dict[str, c.Usage] = field(default_factory=dict)
    """"start", "after warm-up", "10 min", "end": each the median over the minute up to it."""
    rss_growth: dict[str, float] = field(default_factory=dict)
    """Per process: (end - after warm-up) / after warm-up, of the checkpoints' VmRSS."""
    rss_slope_mib_h: dict[str, float] = field(default_factory=dict)
    """Per process: least-squares slope of VmRSS over the samples after the warm-up, MiB an hour."""
    fd_growth: dict[str, int] = field(default_factory=dict)
    """Per process: open descriptors at the end minus after the warm-up (checkpoints)."""
    sent: int = 0
    send_errors: dict[str, int] = field(default_factory=dict)
    late_ticks: int = 0
    delivered_at_a: int = 0
    """Messages A recorded delivered (B's confirmation: transfer_delivered in A's audit log)."""
    delivered_twice_at_a: int = 0
    """Messages A recorded delivered more than once: it sent them again (B kept one copy)."""
    received_once: int = 0
    """Messages in B's inbox exactly once, with exactly one transfer_received record."""
    bit_exact: int = 0
    duplicated: int = 0
    lost: int = 0
    latency_ms: dict[str, float] = field(default_factory=dict)
    """p50, p99 and max, send -> durably in B's inbox."""
    otp_fallbacks: float = 0.0
    """Messages A sealed with AES-256-GCM because the pool could not pay for a one-time pad."""
    rounds: dict[str, int] = field(default_factory=dict)
    """Rounds established and aborted at A over the run."""
    key_bits_per_s: float = 0.0
    """Key the link distilled over the run (A's qlink_key_bits_total / run time)."""
    keys: c.KeyCheck | None = None
    tracebacks: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            self.keys is not None
            and self.keys.ok
            and self.sent > 0
            and self.lost == self.duplicated == 0
            and self.received_once == self.bit_exact == self.sent
            and all(g <= GROWTH_GOAL for g in self.rss_growth.values())
            and not self.tracebacks
            and not self.problems
        )


def _link(target: DataTarget) -> dict[str, Any]:
    status, body = target.json("GET", "/v1/status")
    if status != 200:
        raise RuntimeError(f"{target.url}/v1/status answered HTTP {status}")
    link: dict[str, Any] = body["links"][0]
    return link


def _metrics(target: DataTarget) -> str:
    return target.request("GET", "/metrics")[1].decode()


def _level(samples: list[c.Usage], at_s: float) -> c.Usage:
    """Each process's median RSS and descriptors over the samples in the minute up to `at_s` (the first
    sample alone for the start)."""
    window = [s for s in samples if at_s - LEVEL_WINDOW_S - 1.0 <= s.at_s <= at_s + 1.0] or samples[:1]
    names = {name for s in window for name in s.rss_mib}
    return c.Usage(
        at_s=window[-1].at_s,
        rss_mib={n: statistics.median(s.rss_mib[n] for s in window if n in s.rss_mib) for n in names},
        fds={n: round(statistics.median(s.fds[n] for s in window if n in s.fds)) for n in names},
    )


def _slope_mib_h(samples: list[c.Usage], name: str, after_s: float) -> float:
    points = [(s.at_s / 3600, s.rss_mib[name]) for s in samples if s.at_s >= after_s and name in s.rss_mib]
    if len(points) < 2:
        return float("nan")
    return statistics.linear_regression(*zip(*points, strict=True)).slope


def _verify_messages(report: SoakReport, started: d.Started, b: DataTarget, sent: list[Sent]) -> None:
    c.wait_delivered(started.deployment, {s.transfer_id for s in sent}, DELIVERY_TIMEOUT_S, every=1.0)
    records = c.read_records(started.deployment)
    report.delivered_at_a = sum(records.delivered[s.transfer_id] > 0 for s in sent)
    report.delivered_twice_at_a = sum(records.delivered[s.transfer_id] > 1 for s in sent)
    latencies = []
    for s in sent:
        arrival = c.check_arrival(b, s.transfer_id, [MESSAGES[s.kind][0]], records)
        report.received_once += arrival.inbox_records == arrival.received_lines == 1
        report.duplicated += arrival.inbox_records > 1 or arrival.received_lines > 1
        report.lost += arrival.inbox_records == 0
        report.bit_exact += arrival.state == "delivered" and arrival.bit_exact == arrival.files
        if s.transfer_id in records.stored_at:
            latencies.append((records.stored_at[s.transfer_id] - s.at) * 1e3)
    report.latency_ms = {
        "p50": d.percentile(latencies, 0.5),
        "p99": d.percentile(latencies, 0.99),
        "max": max(latencies, default=float("nan")),
    }


def run(root: Path, args: argparse.Namespace) -> SoakReport:
    total_s = args.minutes * 60
    warmup_s = args.warmup * 60 if args.warmup is not None else (600.0 if args.minutes >= 20 else 60.0)
    report = SoakReport(minutes=args.minutes, warmup_s=warmup_s, wan=args.wan, rate=args.rate)
    with d.running(root / "deploy", wan=args.wan, pulses_per_round=args.pulses) as started:
        deployment, group = started.deployment, started.group
        a, b = c.data_targets(deployment)
        d.wait_for(
            lambda: min(c.owned_bits(a), c.owned_bits(b)) >= KEY_BITS, READY_TIMEOUT_S, "key in both pools"
        )
        client = c.KeyClient(deployment, args.seed, pace_s=1.0, numbers=(1, 1))
        sender = EhrSender(a, args.rate)
        rounds_before = _link(a)["rounds"]
        bits_before = _metric(_metrics(a), "qlink_key_bits_total", d.B)
        fallbacks_before = _metric(_metrics(a), "qlink_otp_fallbacks_total")
        load_start = time.monotonic()
        client.start()
        sender.start()
        try:
            report.samples.append(c.usage(group, 0.0))
            next_sample = SAMPLE_EVERY_S
            while (elapsed := time.monotonic() - load_start) < total_s:
                # The soak's length is the thing measured: wait for the next sample or the end.
                time.sleep(max(0.0, min(next_sample, total_s) - elapsed))
                elapsed = time.monotonic() - load_start
                if not all(d.alive(group).values()):
                    report.problems.append(f"a process died at {elapsed:.0f} s: {d.alive(group)}")
                    break
                report.samples.append(c.usage(group, elapsed))
                next_sample += SAMPLE_EVERY_S
            run_s = time.monotonic() - load_start
            sender.stop.set()
            sender.join(30)
            rounds_after = _link(a)["rounds"]
            report.rounds = {k: rounds_after[k] - rounds_before[k] for k in ("established", "aborted")}
            report.key_bits_per_s = (_metric(_metrics(a), "qlink_key_bits_total", d.B) - bits_before) / run_s
            report.otp_fallbacks = _metric(_metrics(a), "qlink_otp_fallbacks_total") - fallbacks_before
            report.sent, report.send_errors, report.late_ticks = (
                len(sender.sent),
                dict(sender.errors),
                sender.late,
            )
            _verify_messages(report, started, b, sender.sent)
            report.tracebacks = c.tracebacks(started)
        finally:
            sender.stop.set()
            report.keys = c.settle_and_compare(started, client, DRAIN_S)
    last_s = report.samples[-1].at_s
    report.checkpoints = {
        "start": _level(report.samples, 0.0),
        "after warm-up": _level(report.samples, warmup_s),
        "10 min": _level(report.samples, min(600.0, last_s)),
        "end": _level(report.samples, last_s),
    }
    start, end = report.checkpoints["after warm-up"], report.checkpoints["end"]
    if last_s < warmup_s + LEVEL_WINDOW_S:
        report.problems.append("the run ended within a minute of the warm-up: nothing to compare")
    for name, rss in start.rss_mib.items():
        if name in end.rss_mib:
            report.rss_growth[name] = end.rss_mib[name] / rss - 1
            report.rss_slope_mib_h[name] = _slope_mib_h(report.samples, name, warmup_s)
            report.fd_growth[name] = end.fds[name] - start.fds[name]
    if report.delivered_at_a != report.sent:
        report.problems.append(
            f"{report.sent - report.delivered_at_a} messages not delivered per A's records"
        )
    return report


# ---- output ---------------------------------------------------------------------------------------------
def print_report(report: SoakReport) -> None:
    points = report.checkpoints
    print(
        f"soak: {report.minutes:g} min through a {report.wan} one-way WAN, warm-up {report.warmup_s:.0f} s, "
        f"EHR at {report.rate:g}/s, 1 ETSI key/s"
    )
    if not points:
        return
    names = ["start", "after warm-up", "10 min", "end"]
    if report.warmup_s == 600.0 or points["10 min"].at_s < 599.0:
        names.remove("10 min")
    columns = [(t, points[t]) for t in names]
    print("RSS and descriptors: medians over the minute up to each checkpoint; growth = end / after warm-up")
    header = f"{'':<22}" + "".join(f"{f'{t} ({s.at_s:.0f} s)':>24}" for t, s in columns)
    print(header + f"{'growth':>9}{'slope':>14}")
    for name in d.NAMES:
        rss = "".join(f"{s.rss_mib.get(name, float('nan')):>20.1f} MiB" for _, s in columns)
        growth = report.rss_growth.get(name, float("nan"))
        slope = report.rss_slope_mib_h.get(name, float("nan"))
        print(f"{'RSS ' + name:<22}{rss}{growth:>+9.1%}{slope:>+8.1f} MiB/h")
        fds = "".join(f"{s.fds.get(name, -1):>24d}" for _, s in columns)
        print(f"{'open fds ' + name:<22}{fds}{report.fd_growth.get(name, 0):>+9d}")
    lat = report.latency_ms
    print(
        f"EHR: {report.sent} sent ({report.late_ticks} ticks late, errors {report.send_errors or 0}), "
        f"{report.delivered_at_a} delivered per A ({report.delivered_twice_at_a} twice), "
        f"{report.received_once} once in B's inbox, "
        f"{report.bit_exact} bit-exact, {report.lost} lost, {report.duplicated} duplicated; "
        f"{report.otp_fallbacks:.0f} sealed with AES-GCM for want of pad key"
    )
    print(
        f"EHR latency (POST at A -> durable in B's inbox): p50 {lat['p50']:.1f} ms, "
        f"p99 {lat['p99']:.1f} ms, max {lat['max']:.1f} ms"
    )
    print(
        f"rounds: {report.rounds.get('established', 0)} established, "
        f"{report.rounds.get('aborted', 0)} aborted; "
        f"{report.key_bits_per_s / 1e3:.2f} kbit/s of key"
    )
    k = report.keys
    if k is not None:
        print(
            f"ETSI 014: {k.keys_handed} keys handed at A, {k.keys_fetched} fetched at B, "
            f"twice {k.handed_twice}/{k.fetched_twice}, mismatched {k.mismatched}, "
            f"refetch refused {k.refetch_refused}/{k.refetch_asked}; "
            f"client errors {k.client_errors or 0}"
        )
        pools = "identical" if k.pools_equal else "DIFFERENT: " + "; ".join(k.pool_differences)
        print(f"pools: {pools} ({k.committed_rounds} rounds holding key, last committed {k.last_committed})")
    for problem in report.problems:
        print(f"PROBLEM: {problem}")
    for where, excerpt in report.tracebacks.items():
        print(f"TRACEBACK in {where}.log:\n{excerpt}")
    print("PASS" if report.ok else "FAIL")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=60.0, help="length of the load, warm-up included")
    parser.add_argument("--warmup", type=float, help="warm-up in minutes (default 10, 1 below 20 minutes)")
    parser.add_argument(
        "--wan", default="10ms", help="each link, DELAY[,JITTER,LOSS,RATE] (default 10ms one way)"
    )
    parser.add_argument("--rate", type=float, default=5.0, help="EHR messages a second (default 5)")
    parser.add_argument("--pulses", type=int, default=700_000, help="pulses per round")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--keep", type=Path, metavar="DIR", help="run in DIR (new) and keep it, logs included"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.rate <= 0:
        parser.error("--minutes and --rate must be positive")
    if args.warmup is not None and not 0 <= args.warmup < args.minutes:
        parser.error("--warmup must be at least 0 and shorter than --minutes")
    if args.keep is not None:
        args.keep.mkdir(parents=True)
        report = run(args.keep, args)
    else:
        with tempfile.TemporaryDirectory(prefix="qlink-soak-") as tmp:
            report = run(Path(tmp), args)
    if args.json:
        print(json.dumps(asdict(report) | {"ok": report.ok}, indent=2))
    else:
        print_report(report)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
