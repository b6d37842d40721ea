"""Randomness that keeps a record: a party's two sources, each on a seeded byte supplier that remembers
every draw in order, so a test can tell which source each secret choice and each published seed came from."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qlinkmed.qcore.randomness import PartyRandomness, RandomSource


class RecordingSupplier:
    """Seeded bytes (not for production: PCG64), each draw kept in ``draws``."""

    def __init__(self, seed: int) -> None:
        self._rng = np.random.default_rng(seed)
        self.draws: list[bytes] = []

    def __call__(self, n: int) -> bytes:
        data = self._rng.bytes(n)
        self.draws.append(data)
        return data

    def bits(self, index: int, count: int | None = None) -> np.ndarray:
        """Draw `index` unpacked as bits (its first `count` of them)."""
        return np.unpackbits(np.frombuffer(self.draws[index], dtype=np.uint8), count=count)


@dataclass(frozen=True, slots=True)
class RecordedParty:
    secret: RecordingSupplier
    public: RecordingSupplier

    @property
    def randomness(self) -> PartyRandomness:
        return PartyRandomness(secret=RandomSource(self.secret), public=RandomSource(self.public))


def recorded_party(secret_seed: int, public_seed: int) -> RecordedParty:
    return RecordedParty(secret=RecordingSupplier(secret_seed), public=RecordingSupplier(public_seed))
