"""Partition test: the classical link and both data links are cut for a while and restored, with rounds
running, an ETSI 014 client taking keys and a study and EHR messages queued; the link must come back by
itself, the pools must stay identical, no key may be delivered twice and every transfer must arrive once
and bit-exact.

    python bench/partition.py                        # a 5 s and a 60 s cut, 5 ms one-way
    python bench/partition.py --cut 600 --json       # the 10-minute cut (about 11 min in all)
    python bench/partition.py --cut 5 --wan 25ms,5ms,0.5%,100mbit

For each --cut, a fresh deployment whose classical link (A dials B) and data links (A to B, B to A) go
through the user-space WAN emulator (qlinkd/testbed/wan.py; the channel, the KMEs and the local APIs stay
direct). Once both pools hold key, an ETSI 014 client starts (enc_keys at A as master pacs-hospital-a,
dec_keys at B by key id as slave pacs-hospital-b, a fifth of the keys asked again at B, which must refuse)
and runs before, during and after the cut. A synthetic CT study (--megabytes) is queued from A to B, and
at once every link is cut (a partition holds data and new connections, as a dead path does: nothing is
refused); --ehr FHIR messages are queued at A during the cut. Both daemons' /v1/status is sampled every
0.25 s through the cut (state, connected, alarm). Then the links are restored and the script waits for a
round committed at both ends beyond what each had at the restore (their local API's
last_committed_round), and for A to record every transfer delivered. Checked, after the client has
fetched the keys owed and the processes have stopped: both stores hold the same committed rounds (ids,
owners, offsets, bytes by SHA-256) and one authentication key stream; no key id handed out or delivered
twice, every fetched key equal at both ends, every second fetch refused; the study and each EHR message
delivered once (one inbox record, one transfer_received audit line) and bit-exact; no traceback in any
log. Exit status 1 when anything is off.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import _checks as c
import _deploy as d

from qlinkmed.client.commands.send import upload
from qlinkmed.client.data_http import DataTarget
from qlinkmed.client.demo_data import FHIR_BUNDLE

KEY_BITS = 64_000
"""Key both pools hold before anything is queued (data sessions take 256 bits, EHR pads more)."""
READY_TIMEOUT_S = 120.0
RECOVERY_TIMEOUT_S = 120.0
"""How long after the restore a round may take to commit at both ends before the link counts as stuck."""
DELIVERY_TIMEOUT_S = 300.0
"""How long after the restore every queued transfer may take to be delivered."""
SAMPLE_S = 0.25
"""How often both daemons' status is read during the cut."""
CLIENT_PACE_S = 0.1
"""The ETSI client asks for 1-2 keys every 0.1 s: steady use that a cut of minutes does not exhaust."""
DRAIN_S = 60.0
"""How long the client may take, after the run, to fetch the keys still owed at B."""
KEYS_BEFORE = 5
"""Keys the client must have fetched at B before the cut (the "before" part of before/during/after)."""


@dataclass(slots=True)
class Seen:
    """One status a daemon reported during the cut, and when it was first and last seen."""

    state: str
    connected: bool
    alarm: str | None
    auth_starved: bool
    first_s: float
    """Seconds from the cut to the first sample showing it."""
    last_s: float
    samples: int = 1


@dataclass(slots=True)
class CutReport:
    cut_s: float
    wan: str
    study_bytes: int = 0
    study_files: int = 0
    study_at_cut: int = -1
    """Bytes of the study B held durably when the links were cut (-1: no record yet)."""
    ehr_queued: int = 0
    during_cut: dict[str, list[Seen]] = field(default_factory=dict)
    """Per facility, each distinct (state, connected, alarm, auth_starved) status seen during the cut."""
    committed_at_cut: dict[str, int] = field(default_factory=dict)
    committed_at_restore: dict[str, int] = field(default_factory=dict)
    restore_to_round_s: float | None = None
    """Restore to a round committed at both ends beyond what each had at the restore (None: stuck)."""
    restore_to_delivered_s: float | None = None
    """Restore to A's record of every queued transfer delivered (None: not within DELIVERY_TIMEOUT_S)."""
    keys_before: int = 0
    """Keys the client had from A when the links were cut."""
    keys_during: int = 0
    """Keys A handed out during the cut (their notices wait for the link)."""
    keys_after: int = 0
    """Keys A handed out from the restore to the end."""
    keys: c.KeyCheck | None = None
    study: c.Arrival | None = None
    ehr: list[c.Arrival] = field(default_factory=list)
    wan_bytes: dict[str, int] = field(default_factory=dict)
    """Bytes each proxy delivered (both directions): proof the traffic went through the emulator."""
    tracebacks: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ehr_once_and_exact(self) -> int:
        return sum(a.once_and_exact for a in self.ehr)

    @property
    def ok(self) -> bool:
        return (
            self.restore_to_round_s is not None
            and self.restore_to_delivered_s is not None
            and self.keys is not None
            and self.keys.ok
            and self.keys_before > 0
            and self.keys_after > 0
            and self.study is not None
            and self.study.once_and_exact
            and self.ehr_once_and_exact == self.ehr_queued
            and not self.tracebacks
            and not self.problems
        )


def _sample(deployment: Any, seen: dict[str, list[Seen]], since: float) -> None:
    now = time.monotonic() - since
    for facility in (d.A, d.B):
        status = d.link_status(deployment, facility)
        if status is None:
            continue
        key = (status["state"], status["connected"], status["alarm"], status["auth_starved"])
        history = seen.setdefault(facility, [])
        last = history[-1] if history else None
        if last is not None and (last.state, last.connected, last.alarm, last.auth_starved) == key:
            last.last_s, last.samples = now, last.samples + 1
        else:
            history.append(Seen(*key, first_s=now, last_s=now))


def _both_committed_beyond(deployment: Any, marks: dict[str, int]) -> bool:
    return all(d.last_committed(deployment, f) > marks[f] for f in (d.A, d.B))


def _queue_ehr(a: DataTarget, count: int) -> list[str]:
    tids = []
    for i in range(count):
        status, body = a.json("POST", f"/v1/ehr?to={d.B}&name=bundle-{i}.json&wait=0", body=FHIR_BUNDLE)
        if status != 202 or body.get("state") != "queued":
            raise RuntimeError(f"EHR message {i} not queued: HTTP {status} {body}")
        tids.append(body["transfer_id"])
    return tids


def run_cut(
    root: Path,
    cut_s: float,
    wan: str,
    *,
    megabytes: float,
    ehr: int,
    pulses: int,
    seed: int,
    **options: Any,
) -> CutReport:
    """One cut of `cut_s` seconds on a fresh deployment (`options` go to write_loopback_deployment)."""
    report = CutReport(cut_s=cut_s, wan=wan)
    entries = c.make_study(root / "study", megabytes, seed)
    originals = [path.read_bytes() for path, _ in entries]
    report.study_bytes, report.study_files = sum(len(o) for o in originals), len(originals)
    with d.running(root / "deploy", wan=wan, pulses_per_round=pulses, **options) as started:
        links = started.wan
        if links is None:  # running() starts the proxies whenever wan is given; this keeps the types honest
            raise RuntimeError("running(wan=...) started no WAN proxies")
        deployment = started.deployment
        a, b = c.data_targets(deployment)
        d.wait_for(
            lambda: min(c.owned_bits(a), c.owned_bits(b)) >= KEY_BITS, READY_TIMEOUT_S, "key in both pools"
        )
        client = c.KeyClient(deployment, seed, pace_s=CLIENT_PACE_S, numbers=(1, 2))
        client.start()
        try:
            d.wait_for(lambda: len(client.log.fetched) >= KEYS_BEFORE, READY_TIMEOUT_S, "keys before the cut")
            result = upload(a, d.B, "study", entries, entries[0][1].study_uid, wait=0, show_progress=False)
            study_id = result["transfer_id"]
            # The cut follows the upload at once: the study is queued, or partly sent, when the links go.
            links.cut()
            cut_at = time.monotonic()
            report.keys_before = len(client.log.handed)
            report.committed_at_cut = {f: d.last_committed(deployment, f) for f in (d.A, d.B)}
            entry = c.inbox_entry(b, study_id)
            report.study_at_cut = -1 if entry is None else int(entry["received_bytes"])
            ehr_ids = _queue_ehr(a, ehr)
            report.ehr_queued = len(ehr_ids)
            while time.monotonic() - cut_at < cut_s:  # the cut itself: its length is what is measured
                _sample(deployment, report.during_cut, cut_at)
                time.sleep(SAMPLE_S)
            report.committed_at_restore = {f: d.last_committed(deployment, f) for f in (d.A, d.B)}
            report.keys_during = len(client.log.handed) - report.keys_before
            links.restore()
            restored_at = time.monotonic()
            with contextlib.suppress(TimeoutError):
                report.restore_to_round_s = d.wait_for(
                    lambda: _both_committed_beyond(deployment, report.committed_at_restore),
                    RECOVERY_TIMEOUT_S,
                    "a round after the restore",
                )
            if c.wait_delivered(deployment, {study_id, *ehr_ids}, DELIVERY_TIMEOUT_S, every=0.05) is not None:
                report.restore_to_delivered_s = time.monotonic() - restored_at
            handed_at_restore = report.keys_before + report.keys_during
            # The "after" part: keys handed out and fetched again once the link is back.
            with contextlib.suppress(TimeoutError):
                d.wait_for(
                    lambda: len(client.log.fetched) > handed_at_restore + KEYS_BEFORE,
                    RECOVERY_TIMEOUT_S,
                    "keys after the restore",
                )
            report.keys_after = len(client.log.handed) - handed_at_restore
            records = c.read_records(deployment)
            report.study = c.check_arrival(b, study_id, originals, records)
            report.ehr = [c.check_arrival(b, tid, [FHIR_BUNDLE], records) for tid in ehr_ids]
            report.tracebacks = c.tracebacks(started)
        finally:
            report.keys = c.settle_and_compare(started, client, DRAIN_S)
        report.wan_bytes = {
            name: s.upstream_delivered + s.downstream_delivered for name, s in links.statistics().items()
        }
    if report.restore_to_round_s is None:
        report.problems.append(
            f"no round committed at both ends within {RECOVERY_TIMEOUT_S:g} s of the restore"
        )
    if report.restore_to_delivered_s is None:
        report.problems.append(f"not every transfer delivered within {DELIVERY_TIMEOUT_S:g} s of the restore")
    if report.wan_bytes.get("classical", 0) == 0:
        report.problems.append("no byte crossed the classical proxy: the link bypassed the emulator")
    return report


# ---- output ---------------------------------------------------------------------------------------------
def _seen(history: list[Seen]) -> str:
    parts = []
    for s in history:
        link = "up" if s.connected else "down"
        alarm = f", ALARM {s.alarm}" if s.alarm else ""
        starved = ", auth starved" if s.auth_starved else ""
        parts.append(f"{s.state}/{link}{alarm}{starved} @{s.first_s:.1f}-{s.last_s:.1f}s")
    return "; ".join(parts) or "-"


def _secs(value: float | None) -> str:
    return "STUCK" if value is None else f"{value:.2f} s"


def rows(report: CutReport) -> list[tuple[str, str]]:
    k = report.keys
    study = report.study
    out = [
        ("WAN (one way)", report.wan),
        ("status at A during the cut", _seen(report.during_cut.get(d.A, []))),
        ("status at B during the cut", _seen(report.during_cut.get(d.B, []))),
        (
            "last committed round at cut / restore",
            f"{report.committed_at_cut} / {report.committed_at_restore}",
        ),
        ("restore -> round committed at both ends", _secs(report.restore_to_round_s)),
        ("restore -> every transfer delivered", _secs(report.restore_to_delivered_s)),
        (
            "study",
            f"{report.study_bytes / 1e6:.1f} MB, {report.study_files} files, "
            f"{report.study_at_cut:,} B at B when cut; "
            + (
                "-"
                if study is None
                else f"{study.state}, {study.bit_exact}/{study.files} bit-exact, "
                f"{study.inbox_records} inbox record(s), {study.received_lines} transfer_received at B, "
                f"{study.delivered_lines} transfer_delivered at A"
            ),
        ),
        (
            "EHR queued during the cut",
            f"{report.ehr_once_and_exact}/{report.ehr_queued} delivered once, bit-exact",
        ),
        (
            "keys handed before / during / after",
            f"{report.keys_before} / {report.keys_during} / {report.keys_after}",
        ),
    ]
    if k is not None:
        out += [
            (
                "ETSI 014 keys",
                f"{k.keys_handed} handed at A, {k.keys_fetched} fetched at B, twice {k.handed_twice}/"
                f"{k.fetched_twice}, mismatched {k.mismatched}, refetch refused {k.refetch_refused}/"
                f"{k.refetch_asked}, unfetched {k.keys_unfetched}",
            ),
            (
                "pools",
                ("identical" if k.pools_equal else "DIFFERENT " + "; ".join(k.pool_differences))
                + f" ({k.committed_rounds} rounds holding key, last committed {k.last_committed})",
            ),
            ("client errors", str(k.client_errors) or "-"),
        ]
    out.append(("bytes through the proxies", str(report.wan_bytes)))
    out.append(("verdict", "PASS" if report.ok else "FAIL"))
    return out


def print_reports(reports: list[CutReport]) -> None:
    for report in reports:
        print(f"--- cut {report.cut_s:g} s")
        table = rows(report)
        width = max(len(name) for name, _ in table)
        for name, value in table:
            print(f"{name:<{width}}  {value}")
        for problem in report.problems:
            print(f"PROBLEM: {problem}")
        for where, excerpt in report.tracebacks.items():
            print(f"TRACEBACK in {where}.log:\n{excerpt}")


def as_json(report: CutReport) -> dict[str, Any]:
    body = asdict(report)
    body["ok"] = report.ok
    body["ehr_once_and_exact"] = report.ehr_once_and_exact
    return body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--cut",
        type=float,
        action="append",
        metavar="S",
        help="cut length in seconds, repeatable (default 5 and 60)",
    )
    parser.add_argument(
        "--wan", default="5ms", help="each link, DELAY[,JITTER,LOSS,RATE] (default 5ms one way)"
    )
    parser.add_argument("--megabytes", type=float, default=5.0, help="study size in MB (default 5)")
    parser.add_argument("--ehr", type=int, default=10, help="EHR messages queued during the cut (default 10)")
    parser.add_argument("--pulses", type=int, default=700_000, help="pulses per round")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--pq-hybrid",
        action="store_true",
        help="pq_hybrid = true on both ends: every EHR message goes under AEAD, never a one-time pad",
    )
    parser.add_argument(
        "--keep", type=Path, metavar="DIR", help="run in DIR (new) and keep it, logs included"
    )
    parser.add_argument("--json", action="store_true", help="print the reports as JSON")
    args = parser.parse_args(argv)
    cuts = args.cut or [5.0, 60.0]
    if any(cut <= 0 for cut in cuts):
        parser.error("--cut must be a positive number of seconds")
    if args.ehr < 0 or args.megabytes <= 0:
        parser.error("--ehr must be >= 0 and --megabytes > 0")
    reports = []
    with contextlib.ExitStack() as stack:
        if args.keep is not None:
            args.keep.mkdir(parents=True)
            base = args.keep
        else:
            base = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="qlink-partition-")))
        for i, cut in enumerate(cuts):
            reports.append(
                run_cut(
                    base / f"cut-{i}-{cut:g}s",
                    cut,
                    args.wan,
                    megabytes=args.megabytes,
                    ehr=args.ehr,
                    pulses=args.pulses,
                    seed=args.seed + i,
                    pq_hybrid=args.pq_hybrid,
                )
            )
    if args.json:
        print(json.dumps([as_json(r) for r in reports], indent=2))
    else:
        print_reports(reports)
    return 0 if all(r.ok for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
