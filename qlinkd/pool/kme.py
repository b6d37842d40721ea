"""The key manager behind the ETSI 014 API for one facility, over the durable key store.

A key handed to a master SAE here is carved from the rounds this facility owns; its notice (which pool
bytes went to which SAEs) is kept in the store's outbox and pushed to the peer through `notify_sent`. The
peer's KME carves the same bytes when it accepts the notice, and holds them for the slave SAE.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping

from qlinkmed.qlinkd.errors import ConfigError
from qlinkmed.qlinkd.pool.keystore import KeyStore
from qlinkmed.qlinkd.pool.values import DeliveredKey, KeyNotice

DEFAULT_POOL_CAPACITY_BITS = 1 << 24


def round_owner(round_id: int, facility: str, peer: str) -> str:
    """The facility that may hand out round `round_id`'s key as a master key: Alice (the facility ID that
    sorts first) owns the odd rounds, Bob the even ones."""
    alice, bob = sorted((facility, peer))
    return alice if round_id % 2 else bob


class StoreKeyManager:
    """`etsi.KeyManager` over a `KeyStore`. `sae_to_peer` maps each remote SAE ID to the facility it is
    attached to; `notify_sent(peer, notice)` is called for every key handed to a master, after the store
    has durably recorded it (it should only queue the notice: the outbox is replayed on reconnect)."""

    def __init__(
        self,
        store: KeyStore,
        *,
        facility: str,
        local_saes: Iterable[str],
        sae_to_peer: Mapping[str, str],
        notify_sent: Callable[[str, KeyNotice], None] | None = None,
        pool_capacity_bits: int = DEFAULT_POOL_CAPACITY_BITS,
    ) -> None:
        self.facility = facility
        self._store = store
        self._local = frozenset(local_saes)
        self._remote = dict(sae_to_peer)
        clash = self._local & self._remote.keys()
        if clash:
            raise ConfigError("local_saes", f"SAE IDs both local and remote: {sorted(clash)}")
        self._notify_sent = notify_sent
        self._capacity_bits = pool_capacity_bits
        self._arrived = asyncio.Event()

    def local_saes(self) -> frozenset[str]:
        return self._local

    def peer_of_sae(self, sae_id: str) -> str | None:
        return self._remote.get(sae_id)

    def status_counts(self, peer: str, key_size: int) -> tuple[int, int]:
        stored = self._store.pool_bits(peer, owner=self.facility) // key_size
        return stored, max(stored, self._capacity_bits // key_size)

    def enc_keys(
        self, peer: str, *, number: int, size_bits: int, master_sae: str, slave_sae: str
    ) -> list[DeliveredKey]:
        keys = self._store.take_keys(
            peer,
            owner=self.facility,
            number=number,
            size_bits=size_bits,
            master_sae=master_sae,
            slave_sae=slave_sae,
        )
        if self._notify_sent is not None:
            fresh = {k.key_id for k in keys}
            for notice in self._store.outbox(peer):
                if notice.key_id in fresh:
                    self._notify_sent(peer, notice)
        return keys

    def take_pad(self, peer: str, *, transfer_id: str, size_bytes: int, master_sae: str) -> bytes:
        """A pad at rest for transfer `transfer_id`, carved from this facility's rounds
        (`KeyStore.take_pad`); its notice goes to the peer like any master key's, so the peer carves and
        drops the same bytes. InsufficientKey when the pool is short."""
        pad, notice = self._store.take_pad(
            peer, owner=self.facility, transfer_id=transfer_id, size_bytes=size_bytes, master_sae=master_sae
        )
        if notice is not None and self._notify_sent is not None:
            self._notify_sent(peer, notice)
        return pad

    def notice_arrived(self) -> None:
        """The daemon calls this after `KeyStore.accept_notice`, to wake the dec_keys requests waiting."""
        self._arrived.set()
        self._arrived = asyncio.Event()

    def _known(self, key_id: str) -> bool:
        store = self._store
        return store.has_incoming(key_id) or store.has_fetched(key_id) or store.has_expired(key_id)

    async def wait_notice(self, key_ids: list[str], timeout: float) -> None:
        """Return once every key ID has arrived here (or was already fetched, or expired unfetched), or
        after `timeout` s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not all(self._known(k) for k in key_ids):
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            try:
                async with asyncio.timeout(remaining):
                    await self._arrived.wait()
            except TimeoutError:
                return

    def dec_keys(self, key_ids: list[str], *, master_sae: str, slave_sae: str) -> list[DeliveredKey]:
        return self._store.fetch_keys(
            self._remote.get(master_sae), key_ids, master_sae=master_sae, slave_sae=slave_sae
        )
