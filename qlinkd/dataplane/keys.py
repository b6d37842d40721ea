"""Where data-plane sessions get QKD key: the facility's own pool, through the same carving and notices
as ETSI GS QKD 014 deliveries (so every byte goes to one use, once, and both pools stay identical).

The data plane acts as an internal pair of SAEs named ``qlinkd:<facility>``. The colon is outside the SAE
ID alphabet, so no ETSI client can ever ask for these keys.
"""

from __future__ import annotations

from typing import Protocol

from qlinkmed.qlinkd.pool.keystore import KeyStore
from qlinkmed.qlinkd.pool.kme import StoreKeyManager
from qlinkmed.qlinkd.pool.values import DeliveredKey

SESSION_KEY_BITS = 256


def data_sae(facility: str) -> str:
    return f"qlinkd:{facility}"


class KeySource(Protocol):
    def take(self, peer: str, size_bits: int) -> DeliveredKey:
        """One key of `size_bits` from our own rounds; InsufficientKey (nothing taken) when short."""
        ...

    async def fetch(self, peer: str, key_ids: list[str], timeout: float) -> list[DeliveredKey]:
        """The keys the peer took for us, once their notices arrive; KeyNotFound after `timeout`."""
        ...


class PoolKeys:
    def __init__(self, facility: str, manager: StoreKeyManager, store: KeyStore) -> None:
        self._facility = facility
        self._manager = manager
        self._store = store

    def take(self, peer: str, size_bits: int) -> DeliveredKey:
        return self._manager.enc_keys(
            peer,
            number=1,
            size_bits=size_bits,
            master_sae=data_sae(self._facility),
            slave_sae=data_sae(peer),
        )[0]

    async def fetch(self, peer: str, key_ids: list[str], timeout: float) -> list[DeliveredKey]:
        await self._manager.wait_notice(key_ids, timeout)
        return self._store.fetch_keys(
            peer, key_ids, master_sae=data_sae(peer), slave_sae=data_sae(self._facility)
        )
