"""Where data-plane sessions get QKD key: the facility's own pool, through the same carving and notices
as ETSI GS QKD 014 deliveries (so every byte goes to one use, once, and both pools stay identical).

The data plane acts as an internal pair of SAEs named ``qlinkd:<facility>``. The colon is outside the SAE
ID alphabet, so no ETSI client can ever ask for these keys.

Also the one place a session's traffic keys are derived from that key, with the ML-KEM-768 secret mixed
in when the session uses the post-quantum hybrid.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from qlinkmed.qlinkd.pool.keystore import KeyStore
from qlinkmed.qlinkd.pool.kme import StoreKeyManager
from qlinkmed.qlinkd.pool.values import DeliveredKey
from qlinkmed.qlinkd.seal import Direction, Opener, Sealer, SendState, TrafficKey, derive_traffic_key
from qlinkmed.qlinkd.seal.hybrid import KemSecret, derive_hybrid_traffic_key

SESSION_KEY_BITS = 256
EMULATED = "emulated"
"""The ``key_source`` of a peer keyed by this daemon's own (emulated) QKD link and pool."""
KEM_NAME = "ML-KEM-768"
"""The post-quantum KEM of the hybrid, as status and the audit log name it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionKeyed:
    """A data session's traffic keys are derived and its Ready sent (receiver) or opened (sender)."""

    peer: str
    role: Literal["sender", "receiver"]
    key_ids: tuple[str, ...]
    """The QKD keys the traffic keys came from (identifiers, never material)."""
    pq_hybrid: bool
    """An ML-KEM-768 secret was mixed into the traffic keys."""


def traffic_keys(
    material: bytes, key_ids: Sequence[str], *, master: bool, kem: KemSecret | None, now: float
) -> tuple[Sealer, Opener]:
    """This end's sealer and opener for one session: from the QKD key `material` alone, or with the
    ML-KEM-768 secret `kem` mixed in (the keys stay secret if either does). `master`: the sending end."""

    def derive(direction: Direction) -> TrafficKey:
        if kem is None:
            return derive_traffic_key(material, key_ids, direction=direction)
        return derive_hybrid_traffic_key(material, key_ids, direction=direction, kem=kem)

    out, back = (
        (Direction.MASTER_TO_SLAVE, Direction.SLAVE_TO_MASTER)
        if master
        else (Direction.SLAVE_TO_MASTER, Direction.MASTER_TO_SLAVE)
    )
    # A key dies with its connection, so its counters need no durable state: a new connection always means
    # a new key.
    sealer = Sealer(derive(out), state=SendState(next_counter=0, bytes_sealed=0, started_at=now))
    return sealer, Opener(derive(back), started_at=now)


def data_sae(facility: str) -> str:
    return f"qlinkd:{facility}"


class KeySource(Protocol):
    name: str
    """Where the keys come from, as status and the audit log say it: ``emulated`` or ``etsi014``."""

    async def take(self, peer: str, size_bits: int, *, single: bool = False) -> list[DeliveredKey]:
        """At least `size_bits` bits of fresh key for a session or a pad, as one or more keys whose
        material is used concatenated in this order (their IDs travel in that order); with `single`, one
        key or none. InsufficientKey (nothing taken) when the pool is short; KmeError when an external KME
        cannot supply them."""
        ...

    async def fetch(self, peer: str, key_ids: list[str], timeout: float) -> list[DeliveredKey]:
        """The keys the peer took for us, once their notices arrive; KeyNotFound after `timeout`."""
        ...


class PoolKeys:
    name = EMULATED

    def __init__(self, facility: str, manager: StoreKeyManager, store: KeyStore) -> None:
        self._facility = facility
        self._manager = manager
        self._store = store

    async def take(self, peer: str, size_bits: int, *, single: bool = False) -> list[DeliveredKey]:
        return self._manager.enc_keys(
            peer,
            number=1,
            size_bits=size_bits,
            master_sae=data_sae(self._facility),
            slave_sae=data_sae(peer),
        )

    async def fetch(self, peer: str, key_ids: list[str], timeout: float) -> list[DeliveredKey]:
        await self._manager.wait_notice(key_ids, timeout)
        return self._store.fetch_keys(
            peer, key_ids, master_sae=data_sae(peer), slave_sae=data_sae(self._facility)
        )


class PeerKeySources:
    """The data plane's one ``KeySource``: each peer's own (`by_peer`), the `default` for the rest."""

    name = "per-peer"

    def __init__(self, default: KeySource, by_peer: Mapping[str, KeySource]) -> None:
        self._default = default
        self._by_peer = dict(by_peer)

    def of(self, peer: str) -> KeySource:
        return self._by_peer.get(peer, self._default)

    def source_name(self, peer: str) -> str:
        return self.of(peer).name

    async def take(self, peer: str, size_bits: int, *, single: bool = False) -> list[DeliveredKey]:
        return await self.of(peer).take(peer, size_bits, single=single)

    async def fetch(self, peer: str, key_ids: list[str], timeout: float) -> list[DeliveredKey]:
        return await self.of(peer).fetch(peer, key_ids, timeout)


def source_name(keys: KeySource, peer: str) -> str:
    """Where `keys` takes `peer`'s keys from (``emulated`` or ``etsi014``)."""
    return keys.source_name(peer) if isinstance(keys, PeerKeySources) else keys.name
