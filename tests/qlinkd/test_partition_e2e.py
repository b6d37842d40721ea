"""A network partition end to end: the channel service and both daemons as real processes on loopback, the
classical link and both data links through the user-space WAN emulator, cut for a few seconds while
rounds run, an ETSI 014 client takes keys, and a study and EHR messages are queued; then restored. The
link must come back by itself, the pools stay identical, no key is delivered twice, and every transfer
arrives once and bit-exact. The same code as `bench/partition.py` (which runs 5 s and 60 s cuts), with
a short cut."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.paths import REPO

# The script imports its helpers as sibling modules, as it does when run from bench/.
if str(REPO / "bench") not in sys.path:
    sys.path.insert(0, str(REPO / "bench"))
import _deploy as deploy
import partition

CUT_S = 4.0
"""Long enough that a round in flight at the cut stalls and the client's keys wait for their notices."""


def test_a_partition_heals_with_pools_identical_keys_once_and_transfers_once(tmp_path: Path) -> None:
    report = partition.run_cut(tmp_path, CUT_S, "2ms", megabytes=3.0, ehr=5, pulses=700_000, seed=3)

    assert not report.problems, report.problems
    assert not report.tracebacks, report.tracebacks
    # The traffic went through the emulator, and the cut held it: no round committed at either end
    # between the cut and the restore beyond the one that may have been committing at the cut.
    assert report.wan_bytes["classical"] > 0
    assert report.wan_bytes[f"data.{deploy.A}"] > 0
    for facility in (deploy.A, deploy.B):
        assert report.committed_at_restore[facility] <= report.committed_at_cut[facility] + 1
    # Both daemons answered their status through the cut, and no alarm was raised by a network fault.
    for facility in (deploy.A, deploy.B):
        assert report.during_cut[facility], facility
        assert all(seen.alarm is None for seen in report.during_cut[facility])
    # A round committed at both ends after the restore.
    assert report.restore_to_round_s is not None
    # Keys before, during and after the cut; each handed out and delivered once, equal at both ends.
    keys = report.keys
    assert keys is not None
    assert report.keys_before > 0 and report.keys_after > 0
    assert keys.keys_handed >= report.keys_before + report.keys_during + report.keys_after
    assert keys.handed_twice == keys.fetched_twice == 0
    assert keys.keys_fetched == keys.keys_handed
    assert keys.mismatched == keys.shared_bytes == 0
    assert keys.refetch_asked > 0
    assert keys.refetch_refused == keys.refetch_asked
    assert keys.pools_equal, keys.pool_differences
    # The study queued at the cut and the EHR messages queued during it: each once, bit-exact.
    assert report.restore_to_delivered_s is not None
    study = report.study
    assert study is not None
    assert study.state == "delivered"
    assert study.files > 1
    assert study.bit_exact == study.files
    assert study.inbox_records == study.received_lines == study.delivered_lines == 1
    assert report.ehr_queued == 5
    assert [(a.state, a.bit_exact, a.inbox_records, a.received_lines) for a in report.ehr] == [
        ("delivered", 1, 1, 1)
    ] * 5
    # B holds each message once and A sent and recorded each once.
    assert [a.delivered_lines for a in report.ehr] == [1] * 5


def test_ehr_messages_queued_during_a_partition_are_each_sent_once(tmp_path: Path) -> None:
    # Regression (issue 16): A sent the first message twice when its answer arrived while a message it
    # let overtake was in flight (dataplane/sender.py, _send_pending_ehr).
    # pq_hybrid: every EHR message goes under AEAD (streamed), never as a one-time-pad frame.
    report = partition.run_cut(
        tmp_path, 2.0, "2ms", megabytes=1.0, ehr=3, pulses=700_000, seed=5, pq_hybrid=True
    )

    assert report.restore_to_delivered_s is not None
    assert [(a.state, a.inbox_records, a.received_lines) for a in report.ehr] == [("delivered", 1, 1)] * 3
    # A recorded each delivery once: it sent each message once.
    assert [a.delivered_lines for a in report.ehr] == [1, 1, 1]
