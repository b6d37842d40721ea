"""The key pool's value types: what the link machine, the key manager and the data plane exchange with the
store. Pure data with validation; no I/O, so the sans-IO machines can import them."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from qlinkmed.qlinkd.errors import StoreError


def check_positive(value: int, field: str, *, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise StoreError(f"{field} must be an integer >= {minimum}, got {value!r}", field=field)


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkState:
    """What one end tells the other on reconnect, so both settle the same committed round set."""

    next_round: int
    last_committed: int
    pending_round: int
    auth_position: int

    def __post_init__(self) -> None:
        check_positive(self.next_round, "next_round")
        for name in ("last_committed", "pending_round", "auth_position"):
            check_positive(getattr(self, name), name, minimum=0)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReconcileResult:
    committed: tuple[int, ...]
    discarded: tuple[int, ...]
    next_round: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Segment:
    round_id: int
    start: int
    length: int

    def __post_init__(self) -> None:
        check_positive(self.round_id, "round_id")
        check_positive(self.start, "start", minimum=0)
        check_positive(self.length, "length")


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyNotice:
    """Master side to slave side: this key (these bytes of the pool) was handed to master for slave."""

    key_id: str
    master_sae: str
    slave_sae: str
    segments: tuple[Segment, ...]

    def __post_init__(self) -> None:
        try:
            canonical = str(uuid.UUID(self.key_id))
        except (ValueError, TypeError, AttributeError):
            canonical = None
        if canonical != self.key_id:
            raise StoreError(f"key_id {self.key_id!r} is not a canonical UUID", field="key_id")
        if not self.segments:
            raise StoreError("a key notice needs at least one segment", field="segments")


@dataclass(frozen=True, slots=True)
class DeliveredKey:
    key_id: str
    material: bytes

    def __repr__(self) -> str:
        return f"DeliveredKey(key_id={self.key_id!r}, material=(hidden))"


@dataclass(frozen=True, slots=True, kw_only=True)
class ExpiredKeys:
    """Keys held here for one slave SAE that were deleted unfetched by one expiry sweep: identifiers and a
    size, never material (what the audit record and the metrics need)."""

    peer: str
    master_sae: str
    slave_sae: str
    key_ids: tuple[str, ...]
    bits: int
