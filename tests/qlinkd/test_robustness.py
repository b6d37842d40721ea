"""CI-sized runs of the robustness scripts in bench/: the port fuzzer (300 hostile inputs across every
listening port) and the kill -9 test (3 SIGKILL cycles), against real daemon processes on loopback.

The full-size runs (`bench/fuzz_ports.py`, 10,000 inputs; `bench/kill9.py`, 20 kills) are the same code
with bigger numbers."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.paths import REPO

# The scripts import their shared helper as a sibling module, as they do when run from bench/; mypy finds
# them the same way (`./dev types` puts bench/ on its search path).
if str(REPO / "bench") not in sys.path:
    sys.path.insert(0, str(REPO / "bench"))
import _deploy as deploy
import fuzz_ports
import kill9

PULSES = 700_000
"""Pulses per round: the smallest the default 10 km deployment distils reliably, so rounds come fast."""


@pytest.mark.slow
def test_fuzzing_every_port_crashes_nothing_and_the_link_keeps_distilling(tmp_path: Path) -> None:
    with deploy.running(
        tmp_path / "deploy",
        pulses_per_round=PULSES,
        channel_connections_per_link=fuzz_ports.CHANNEL_CONNECTIONS_PER_LINK,
    ) as started:
        report = fuzz_ports.fuzz(started, 300, seed=7, check_every=100)

    assert report.crashes == 0
    assert all(report.alive.values())
    assert sum(report.sent.values()) == 300
    assert {name.split("/")[0] for name in report.sent} == {
        "quantum",
        "classical",
        "local-a",
        "local-b",
        "kme-a",
        "kme-b",
    }
    # Other links unaffected: every check saw a new committed round; the link recovered after phase 2.
    assert report.checks == 3
    assert report.stalls == 0
    assert report.rounds_committed > 0
    assert report.key_bits > 0
    assert report.recovered_s is not None
    # No port stopped accepting connections.
    assert not any("connect-failed" in outcomes for outcomes in report.outcomes.values())
    # The answers the daemons owe: a refused certificate is 403 (and logged), an unknown SAE 401.
    assert set(report.outcomes.get("classical/wrong-cert-upgrade", {})) <= {"http-403"}
    assert report.logged_closes.get("hospital-b: classical connection refused", 0) == report.sent.get(
        "classical/wrong-cert-upgrade", 0
    )
    for kme in ("kme-a", "kme-b"):
        assert set(report.outcomes.get(f"{kme}/facility-cert", {})) <= {"http-401"}
    assert set(report.outcomes.get("quantum/oversize-length", {})) <= {"closed"}
    # Every malformed channel connection that got past TLS was closed with a logged reason.
    assert report.expected_channel_closes > 0
    assert report.logged_closes["channel: closing channel connection"] == report.expected_channel_closes
    # Every websocket session with a bad frame was closed by the daemon, which logged why.
    assert report.ws_sessions == sum(
        n for c, o in report.outcomes.items() if c.startswith("classical/ws-") for n in o.values()
    )
    assert all(
        outcome.startswith("ws-close-")
        for c, o in report.outcomes.items()
        if c.startswith("classical/ws-")
        for outcome in o
    )
    assert report.logged_closes["hospital-b: link to hospital-a closed"] >= report.ws_sessions
    assert report.other_tracebacks == 0


@pytest.mark.slow
def test_kill9_keeps_pools_identical_and_delivers_each_key_once(tmp_path: Path) -> None:
    with deploy.running(tmp_path / "deploy", pulses_per_round=PULSES) as started:
        report = kill9.kill_cycles(started, 3, seed=3)

    assert report.kills == 3
    assert report.stalls == 0
    assert report.pools_equal, report.pool_differences
    assert report.committed_rounds > 0
    assert report.last_committed["hospital-a"] == report.last_committed["hospital-b"]
    assert report.pool_divergences == 0
    assert report.keys_handed > 0
    assert report.keys_fetched > 0
    assert report.handed_twice == 0
    assert report.fetched_twice == 0
    assert report.mismatched == 0
    assert report.shared_bytes == 0
    assert report.refetch_asked > 0
    assert report.refetch_refused == report.refetch_asked
    # A key never fetched is one B delivered into an answer a kill cut off: delivered at most once.
    assert report.keys_unfetched == report.unfetched_fetched_at_b
    assert kill9.ok(report)


AUTH_LEFT = bytes(range(200))
"""Unused authentication key bytes of a made-up store."""


def _view(
    rounds: list[tuple[int, str, int, int, str]], *, auth_position: int = 96, auth: bytes = AUTH_LEFT
) -> kill9.StoreView:
    return kill9.StoreView(
        last_committed=3,
        pending_round=0,
        next_round=4,
        auth_position=auth_position,
        auth_material=auth,
        pool_bits_owned_by={"hospital-a": 8, "hospital-b": 0},
        outbox=0,
        rounds=rounds,
        committed_outcomes={1, 2, 3},
        incoming=set(),
        fetched=set(),
    )


def test_the_pool_comparison_sees_a_single_differing_round() -> None:
    same = [(3, "hospital-a", 0, 1, "digest")]
    assert kill9.compare(_view(same), _view(same)) == []
    differences = kill9.compare(_view(same), _view([(3, "hospital-a", 0, 1, "other digest")]))
    assert len(differences) == 1
    assert differences[0].startswith("committed rounds differ")


def test_the_pool_comparison_allows_an_end_ahead_on_the_same_authentication_key_stream() -> None:
    rounds = [(3, "hospital-a", 0, 1, "digest")]
    behind = _view(rounds)
    # A stop between an end spending a round's tag and the other end checking it: same stream, one ahead.
    ahead = _view(rounds, auth_position=96 + 48, auth=AUTH_LEFT[48:])
    assert kill9.compare(behind, ahead) == []
    assert kill9.compare(ahead, behind) == []
    # The same positions over different bytes are not one stream.
    forked = _view(rounds, auth_position=96 + 48, auth=bytes(b ^ 1 for b in AUTH_LEFT[48:]))
    differences = kill9.compare(behind, forked)
    assert len(differences) == 1
    assert differences[0].startswith("authentication key")
