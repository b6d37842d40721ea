"""Settling a stopped deployment's two key stores exactly as the daemons' next hello would, so that tests
and benchmarks can compare them.

With rounds in flight a stop (SIGTERM, SIGKILL) often lands between one end's commit and the other's:
that end keeps the round pending until the next hello, which commits it (the peer has it) or drops it
(the peer never stored it). Comparing the stores before that would call a state the protocol allows a
divergence; comparing them after it checks what the link guarantees, and a real divergence still shows.
"""

from __future__ import annotations

from qlinkmed.qlinkd.pool.keystore import KeyStore
from qlinkmed.qlinkd.testbed.deployment import Deployment


def settle_stopped_stores(deployment: Deployment) -> list[int]:
    """Reconcile each facility's store with the other's state as it stood at the stop (``KeyStore.reconcile``
    and the skip past authentication key the peer spent, what ``link.persistence`` does with a hello), and
    return the rounds that were pending at either end. The daemons must be stopped."""
    first, second = sorted(deployment.facilities)
    peers = {first: second, second: first}
    stores = {f: KeyStore.open(deployment.root / "state" / f / "keys.sqlite3") for f in peers}
    try:
        states = {f: stores[f].link_state(peers[f]) for f in peers}
        for facility, store in stores.items():
            remote = states[peers[facility]]
            store.reconcile(peers[facility], remote)
            if remote.auth_position > store.link_state(peers[facility]).auth_position:
                store.advance_auth(peers[facility], remote.auth_position)
    finally:
        for store in stores.values():
            store.close()
    return sorted({s.pending_round for s in states.values() if s.pending_round})
