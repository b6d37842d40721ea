"""kill -9 test: the key pools stay identical, and no key is delivered twice, while the daemons are
SIGKILLed in the middle of rounds and key deliveries.

    .venv/bin/python bench/kill9.py                # 20 kills
    .venv/bin/python bench/kill9.py --kills 5 --json

A deployment runs; a client thread asks facility A's KME for keys (ETSI 014 enc_keys as master SAE
pacs-hospital-a for slave pacs-hospital-b) and fetches each at facility B (dec_keys as the slave),
recording every key ID and value it receives, and now and then asks B again for a key it already
fetched (which B must refuse). Meanwhile, --kills times: wait until the link commits a round, wait a
random 0.2-1.5 s (seeded) so a round or a delivery is in flight, SIGKILL one daemon (A and B in turn),
restart it and wait for READY=1, then for a round established after the restart.

At the end the client drains the keys still owed, everything is stopped cleanly (SIGTERM) and both
durable stores are compared. KeyStore exposes link states, pool levels by owner and the outbox, used as
such; it has no listing of rounds or of delivered keys, so those are read from the SQLite tables
directly, read-only (rounds, round_outcomes, auth, incoming, fetched). Checked: both pools hold the same
committed rounds (round ids, owners, start offsets, remaining bytes, and the bytes themselves, compared by
SHA-256), one authentication key stream (a stop in the middle of a round may leave one end ahead by the
tags it already spent, which the next hello skips at the other; the bytes left must agree), no key ID
handed out twice by A or delivered twice by B, every key fetched at B equals the one A handed out, no
two keys share bytes, and no audit log recorded a pool divergence.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import _deploy as d
from _checks import KeyClient, StoreView, compare, notices_owed, read_store

from qlinkmed.qlinkd.testbed.deployment import Deployment
from qlinkmed.qlinkd.testbed.settle import settle_stopped_stores

RECOVERY_TIMEOUT_S = 60.0
"""How long a restarted pair may take to establish a round again before the kill counts as a stall."""
DRAIN_TIMEOUT_S = 30.0
"""How long the client keeps fetching keys still owed at B after the last kill."""


# ---- the run --------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class KillReport:
    kills: int
    """SIGKILLs delivered."""
    seconds: float
    """Wall time from the first kill cycle to the comparison."""
    ready_s: list[float]
    """Per kill: restart -> READY=1."""
    recovered_s: list[float | None]
    """Per kill: READY=1 -> the next round established (None: not within RECOVERY_TIMEOUT_S)."""
    stalls: int
    """Kills after which no round was established within RECOVERY_TIMEOUT_S (must be 0)."""
    reconcile_committed: int
    """Pending rounds the restarted pair committed on reconnect (link_up records, both sides)."""
    reconcile_discarded: int
    """Pending rounds the restarted pair discarded on reconnect."""
    rounds_aborted: int
    """Rounds aborted in both audit logs (a kill mid-round aborts it on the survivor)."""
    pool_divergences: int
    """pool_divergence records in both audit logs (must be 0)."""
    keys_handed: int
    """Keys A's KME handed to the master SAE."""
    keys_fetched: int
    """Keys B's KME delivered to the slave SAE."""
    keys_unfetched: int
    """Keys handed out at A that the client never got from B."""
    unfetched_fetched_at_b: int
    """Of those, how many B's store records as delivered: the answer was lost to a kill (at most once)."""
    incoming_left_at_b: int
    """Keys B holds for the slave that the client never saw from A: A's answer was lost to a kill."""
    handed_twice: int
    """Key IDs A handed out more than once (must be 0)."""
    fetched_twice: int
    """Key IDs B delivered more than once (must be 0)."""
    refetch_asked: int
    """Second fetches of an already delivered key the client made."""
    refetch_refused: int
    """Of those, how many B refused (must be all)."""
    mismatched: int
    """Keys fetched at B whose bytes differ from A's (must be 0)."""
    shared_bytes: int
    """Pairs of distinct keys with equal bytes (must be 0)."""
    client_errors: dict[str, int]
    """What the client met while daemons were down or short of key."""
    pools_equal: bool
    """Both stores hold the same committed rounds, bytes included, and one authentication key stream."""
    pool_differences: list[str]
    """What differs, if anything."""
    committed_rounds: int
    """Committed rounds still holding key, as A sees them."""
    last_committed: dict[str, int]
    """Highest committed round id per facility."""
    auth_lead_bytes: int
    """How far one end's authentication key position is ahead of the other's at the stop (tags of a
    round in flight; the next hello skips them)."""


def _established(deployment: Deployment, facility: str) -> int:
    return sum(r.get("event") == "round_established" for r in d.read_audit(deployment, facility))


def _established_beyond(deployment: Deployment, count: int) -> Callable[[], bool]:
    """Whether A has established more than `count` rounds (a condition for `d.wait_for`)."""
    return lambda: _established(deployment, d.A) > count


def kill_cycles(started: d.Started, kills: int, *, seed: int = 1) -> KillReport:
    deployment, group = started.deployment, started.group
    rng = random.Random(seed)
    d.wait_for(lambda: _established(deployment, d.A) > 0, RECOVERY_TIMEOUT_S, "the first round")
    client = KeyClient(deployment, seed)
    client.start()
    begin = time.monotonic()
    ready: list[float] = []
    recovered: list[float | None] = []
    for i in range(kills):
        victim = d.A if i % 2 == 0 else d.B
        time.sleep(rng.uniform(0.2, 1.5))  # the random instant of the kill, not a wait for readiness
        group.kill(victim, signal.SIGKILL)
        before = _established(deployment, d.A)
        group.start(victim)
        ready.append(group.wait_ready(victim))
        try:
            recovered.append(
                d.wait_for(
                    _established_beyond(deployment, before), RECOVERY_TIMEOUT_S, "a round after restart"
                )
            )
        except TimeoutError:
            recovered.append(None)
    client.finish(DRAIN_TIMEOUT_S)
    # The notices A owes B must be acknowledged before the pools can be compared.
    with contextlib.suppress(TimeoutError):
        d.wait_for(
            lambda: notices_owed(deployment) == 0,
            DRAIN_TIMEOUT_S,
            "notices acknowledged",
        )
    audits = {f: d.read_audit(deployment, f) for f in (d.A, d.B)}
    group.stop_all()
    settle_stopped_stores(deployment)  # a stop between one end's commit and the other's
    views = {f: read_store(deployment, f) for f in (d.A, d.B)}
    differences = compare(views[d.A], views[d.B])
    log = client.log
    unfetched = [k for k in log.handed if k not in log.fetched]
    materials = list(log.handed.values())
    ups = [r for f in audits for r in audits[f] if r.get("event") == "link_up"]
    return KillReport(
        kills=kills,
        seconds=time.monotonic() - begin,
        ready_s=ready,
        recovered_s=recovered,
        stalls=sum(r is None for r in recovered),
        reconcile_committed=sum(len(r.get("committed", [])) for r in ups),
        reconcile_discarded=sum(len(r.get("discarded", [])) for r in ups),
        rounds_aborted=sum(r.get("event") == "round_aborted" for f in audits for r in audits[f]),
        pool_divergences=sum(r.get("event") == "pool_divergence" for f in audits for r in audits[f]),
        keys_handed=len(log.handed),
        keys_fetched=len(log.fetched),
        keys_unfetched=len(unfetched),
        unfetched_fetched_at_b=sum(k in views[d.B].fetched for k in unfetched),
        incoming_left_at_b=len(views[d.B].incoming - log.handed.keys()),
        handed_twice=log.handed_twice,
        fetched_twice=log.fetched_twice,
        refetch_asked=log.refetch_attempts,
        refetch_refused=log.refetch_refused,
        mismatched=sum(log.handed.get(k) != v for k, v in log.fetched.items()),
        shared_bytes=len(materials) - len(set(materials)),
        client_errors=dict(log.errors),
        pools_equal=not differences,
        pool_differences=differences,
        committed_rounds=len(views[d.A].rounds),
        last_committed={f: views[f].last_committed for f in views},
        auth_lead_bytes=abs(views[d.A].auth_position - views[d.B].auth_position),
    )


def _stat(values: Sequence[float | None]) -> str:
    got = [v for v in values if v is not None]
    if not got:
        return "-"
    return f"median {d.median(got):.2f} s, max {max(got):.2f} s"


def print_report(report: KillReport) -> None:
    print(f"kill -9: {report.kills} SIGKILLs (A and B in turn) in {report.seconds:.1f} s")
    print(f"restart -> READY: {_stat(report.ready_s)}")
    print(f"READY -> next round established: {_stat(report.recovered_s)}; stalls {report.stalls}")
    print(
        f"on reconnect: {report.reconcile_committed} pending rounds committed, "
        f"{report.reconcile_discarded} discarded; {report.rounds_aborted} rounds aborted; "
        f"pool divergences {report.pool_divergences}"
    )
    print(
        f"keys: {report.keys_handed} handed out at A, {report.keys_fetched} fetched at B, "
        f"{report.keys_unfetched} never fetched ({report.unfetched_fetched_at_b} of them delivered by B "
        f"to an answer lost in a kill); {report.incoming_left_at_b} held at B whose enc_keys answer was lost"
    )
    print(
        f"duplicates: handed twice {report.handed_twice}, fetched twice {report.fetched_twice}, "
        f"second fetches refused {report.refetch_refused}/{report.refetch_asked}; "
        f"mismatched values {report.mismatched}; keys sharing bytes {report.shared_bytes}"
    )
    print(f"client errors: {report.client_errors}")
    print(
        f"pools: {'identical' if report.pools_equal else 'DIFFERENT'} "
        f"({report.committed_rounds} committed rounds holding key, last committed {report.last_committed}; "
        f"authentication key positions {report.auth_lead_bytes} bytes apart at the stop)"
    )
    for line in report.pool_differences:
        print(f"  {line}")


def ok(report: KillReport) -> bool:
    return (
        report.pools_equal
        and report.stalls == 0
        and report.pool_divergences == 0
        and report.handed_twice == report.fetched_twice == report.mismatched == report.shared_bytes == 0
        and report.refetch_refused == report.refetch_asked
        and report.keys_unfetched == report.unfetched_fetched_at_b
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--pulses", type=int, default=700_000, help="pulses per round")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    with d.running(pulses_per_round=args.pulses) as started:
        report = kill_cycles(started, args.kills, seed=args.seed)
    if args.json:
        print(json.dumps(asdict(report), indent=2))
    else:
        print_report(report)
    return 0 if ok(report) else 1


__all__ = ["KillReport", "StoreView", "compare", "kill_cycles", "ok"]

if __name__ == "__main__":
    sys.exit(main())
