"""The durable half of a link event: what the key store must hold before the link machine's next frames
may leave. One function, shared by the asyncio shell and the in-memory test pair, so the tests exercise
exactly the persistence the daemon does."""

from __future__ import annotations

from qlinkmed.qlinkd.link.events import (
    AuthAdvanced,
    CommitRound,
    DiscardRound,
    Event,
    HelloReceived,
    NoticeAcked,
    NoticeReceived,
    RoundStarted,
    StorePending,
)
from qlinkmed.qlinkd.link.machine import LinkConnection
from qlinkmed.qlinkd.pool.keystore import KeyStore
from qlinkmed.qlinkd.pool.values import ReconcileResult


def persist(
    store: KeyStore, link: LinkConnection, peer: str, event: Event, now: float
) -> ReconcileResult | None:
    """Apply `event` to `store` and feed back what the machine waits for. Returns the reconcile result
    for a hello (the caller logs and audits it), None otherwise. Events with no durable side are left
    to the caller. A peer's key notice that does not match our pool raises ``StoreError`` and is not
    acknowledged."""
    match event:
        case HelloReceived(remote=remote):
            result = store.reconcile(peer, remote)
            # The peer may have spent authentication key we never saw it use (it crashed after the
            # write-ahead): skip past it, never reuse it.
            if remote.auth_position > store.link_state(peer).auth_position:
                store.advance_auth(peer, remote.auth_position)
            link.hello_done(
                next_round=result.next_round, auth=store.auth_store(peer), outbox=store.outbox(peer)
            )
            return result
        case RoundStarted(round_id=round_id):
            store.note_round_started(peer, round_id)
        case AuthAdvanced(position=position):
            store.advance_auth(peer, position)
        case StorePending(round_id=round_id, owner=owner, key=key, auth_refill=refill):
            store.store_pending(peer, round_id, owner=owner, key=key, auth_refill=refill)
            link.stored(round_id, now)
        case CommitRound(round_id=round_id):
            # The machine paid the refill into its in-memory authentication store already.
            store.commit(peer, round_id)
        case DiscardRound(round_id=round_id):
            store.discard_pending(peer, round_id)
        case NoticeReceived(notice=notice):
            store.accept_notice(peer, notice)
            link.notice_stored(notice.key_id)
        case NoticeAcked(key_id=key_id):
            store.ack_notice(peer, key_id)
    return None
