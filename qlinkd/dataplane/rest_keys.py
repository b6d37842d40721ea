"""Where the keys of EHR messages at rest live: the facility's key store (keys.sqlite3), by transfer ID,
never beside the inbox files they open (so the inbox directory may sit on shared storage).

A message's key is a quantum one-time pad cut from the pool for the link with its sender, in rounds this
facility owns, through the same carving and notices as every other key (`keys.py`): the notice names the
slave SAE ``qlinkd:discard``, so the peer carves the same bytes and deletes them, and both pools stay
identical. When the pool is short the message is stored under AES-256-GCM instead, and that key (derived
from the session's QKD key) is kept in the same table. Forgetting the key shreds the message.
"""

from __future__ import annotations

from qlinkmed.qlinkd.content import qotp_at_rest
from qlinkmed.qlinkd.dataplane.keys import data_sae
from qlinkmed.qlinkd.pool.keystore import KeyStore
from qlinkmed.qlinkd.pool.kme import StoreKeyManager


class RestKeys:
    """The at-rest keys of one facility. Synchronous (the key store is): use from the event loop."""

    def __init__(self, facility: str, manager: StoreKeyManager, store: KeyStore) -> None:
        self._facility = facility
        self._manager = manager
        self._store = store

    def __repr__(self) -> str:
        return "RestKeys(keys=(hidden))"

    def cut_pad(self, peer: str, transfer_id: str, length: int) -> bytes:
        """The pad of a message of `length` bytes from `peer` (one held already for the transfer is
        returned again). InsufficientKey (nothing consumed) when the pool is short."""
        return self._manager.take_pad(
            peer,
            transfer_id=transfer_id,
            size_bytes=qotp_at_rest.pad_bytes(length),
            master_sae=data_sae(self._facility),
        )

    def pool_bits(self, peer: str) -> int:
        """The bits a pad may be cut from now (this facility's rounds with `peer`)."""
        return self._store.pool_bits(peer, owner=self._facility)

    def keep(self, peer: str, transfer_id: str, form: str, key: bytes) -> bytes:
        """Keep a key not cut from the pool; returns the key held for the transfer."""
        return self._store.keep_at_rest_key(peer, transfer_id=transfer_id, form=form, key=key)

    def held(self, transfer_id: str) -> tuple[str, bytes] | None:
        """(form, key) of the transfer's at-rest file, None when no key is held."""
        return self._store.at_rest_key(transfer_id)

    def forget(self, transfer_id: str) -> bool:
        return self._store.forget_at_rest_key(transfer_id)

    def transfers(self) -> list[str]:
        return self._store.at_rest_transfers()
