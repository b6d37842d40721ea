"""Settling a stopped deployment's stores as the next hello would (what the e2e tests and the benchmarks
compare): a round one end committed and the other holds pending is committed at both; a round only one
end stored is dropped."""

from __future__ import annotations

from pathlib import Path

from qlinkmed.qlinkd.pool.keystore import KeyStore
from qlinkmed.qlinkd.testbed.deployment import Deployment
from qlinkmed.qlinkd.testbed.settle import settle_stopped_stores

A, B = "hospital-a", "hospital-b"
PSK = bytes(range(256)) * 4
KEY, REFILL = b"k" * 32, b"r" * 48


def _deployment(root: Path) -> tuple[Deployment, dict[str, KeyStore]]:
    stores = {}
    for facility, peer in ((A, B), (B, A)):
        (root / "state" / facility).mkdir(parents=True)
        store = stores[facility] = KeyStore.open(root / "state" / facility / "keys.sqlite3")
        store.init_auth(peer, PSK)
    deployment = Deployment(
        root=root, channel=root / "channel.toml", facilities={A: root / "a", B: root / "b"}, ports={}, saes={}
    )
    return deployment, stores


def test_a_round_committed_at_one_end_and_pending_at_the_other_is_committed_at_both(tmp_path: Path) -> None:
    deployment, stores = _deployment(tmp_path)
    for facility, peer in ((A, B), (B, A)):
        stores[facility].store_pending(peer, 1, owner=A, key=KEY, auth_refill=REFILL)
    stores[B].commit(A, 1)  # B had A's confirmation; A stopped before B's arrived
    for store in stores.values():
        store.close()
    assert settle_stopped_stores(deployment) == [1]
    for facility, peer in ((A, B), (B, A)):
        store = KeyStore.open(tmp_path / "state" / facility / "keys.sqlite3")
        state = store.link_state(peer)
        assert (state.last_committed, state.pending_round) == (1, 0)
        assert store.pool_bits(peer) == 8 * len(KEY)
        assert store.auth_store(peer).snapshot() == (0, PSK + REFILL)
        store.close()


def test_a_round_only_one_end_stored_is_dropped_at_that_end(tmp_path: Path) -> None:
    deployment, stores = _deployment(tmp_path)
    stores[A].store_pending(B, 1, owner=A, key=KEY, auth_refill=REFILL)
    for store in stores.values():
        store.close()
    assert settle_stopped_stores(deployment) == [1]
    for facility, peer in ((A, B), (B, A)):
        store = KeyStore.open(tmp_path / "state" / facility / "keys.sqlite3")
        assert store.link_state(peer).pending_round == 0 and store.pool_bits(peer) == 0
        store.close()
