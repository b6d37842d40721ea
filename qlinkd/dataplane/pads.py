"""Session pad keys: QKD key the sender takes ahead of need, so that sealing an EHR message by one-time pad
costs no pool transaction and no key notice on the message's own path.

The sender takes a pad key from the pool (the usual carving and notice) and announces it in a sealed
``PadKey`` message; the receiver fetches it in the background. Each one-time-pad range frame then names
(pad key, offset) and consumes the next bytes of that key. The receiver accepts a pad key's offsets only
where the previous frame ended, and a later pad key retires the earlier ones, so a replayed, reordered or
dropped frame is refused and no pad byte ever serves twice. What is left of a pad key when the session ends
(or when a message does not fit the rest of it) is discarded, never reused: a session wastes at most about
one pad key.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from qlinkmed.qcore.errors import IntegrityFailure
from qlinkmed.qlinkd.errors import IntegrityError
from qlinkmed.qlinkd.pool.values import DeliveredKey

PAD_KEY_BYTES = 16 * 1024
"""One pad key: about ten FHIR bundles of a few KiB; also the most key one session can leave unused."""
PAD_REFILL_BELOW = 4 * 1024
"""The sender takes the next pad key when less than this is left, after a message is answered."""


@dataclass(frozen=True, slots=True)
class PadCut:
    key_id: str
    offset: int
    material: bytes


@dataclass(slots=True)
class _SenderPad:
    key: DeliveredKey
    used: int = 0

    @property
    def left(self) -> int:
        return len(self.key.material) - self.used


class SenderPads:
    """The sender's pad keys, used in the order they were announced."""

    def __init__(self) -> None:
        self._pads: deque[_SenderPad] = deque()
        self.discarded_bytes = 0

    def add(self, key: DeliveredKey) -> None:
        self._pads.append(_SenderPad(key))

    def left(self) -> int:
        return sum(p.left for p in self._pads)

    def cut(self, size: int) -> PadCut | None:
        """The next `size` bytes of pad, or None (nothing consumed) when no pad key holds that many. A key
        whose rest is too short for this message is retired first, its rest discarded."""
        if not any(p.left >= size for p in self._pads):
            return None
        while self._pads[0].left < size:
            self.discarded_bytes += self._pads.popleft().left
        pad = self._pads[0]
        cut = PadCut(pad.key.key_id, pad.used, pad.key.material[pad.used : pad.used + size])
        pad.used += size
        return cut

    def close(self) -> int:
        """The session ends: discard every pad left. Returns the bytes discarded over the session."""
        self.discarded_bytes += self.left()
        self._pads.clear()
        return self.discarded_bytes


Spawn = Callable[[Coroutine[Any, Any, None]], "asyncio.Future[None]"]
"""Starts a task: the session's task group's ``create_task``."""


class _ReceiverPad:
    def __init__(self, fetching: asyncio.Future[None], key: asyncio.Future[DeliveredKey]) -> None:
        self.fetching = fetching
        self.key = key
        self.next = 0

    def cancel(self) -> None:
        self.fetching.cancel()
        self.key.cancel()


async def _settle(fetch: Coroutine[Any, Any, DeliveredKey], into: asyncio.Future[DeliveredKey]) -> None:
    # The fetch's error goes into the key, never out of the task: a fetch that fails matters only if a
    # frame uses its key (it is re-raised there), and must not end the task group it runs in.
    try:
        key = await fetch
    except Exception as exc:
        if not into.done():
            into.set_exception(exc)
    else:
        if not into.done():
            into.set_result(key)


def _retrieve(key: asyncio.Future[DeliveredKey]) -> None:
    # Marks a failed fetch's error as seen, for a key no frame ever used.
    if not key.cancelled():
        key.exception()


class ReceiverPads:
    """The receiver's view of the session's pad keys: announced in order, fetched in the background (in
    tasks `spawn` starts: the session's task group), and cut strictly in sequence."""

    def __init__(self, spawn: Spawn = asyncio.ensure_future) -> None:
        self._spawn = spawn
        self._pads: dict[str, _ReceiverPad] = {}

    def announce(self, key_id: str, fetch: Coroutine[Any, Any, DeliveredKey]) -> None:
        if key_id in self._pads:
            fetch.close()
            raise IntegrityError(IntegrityFailure.REPLAY, f"pad key {key_id} announced twice")
        key: asyncio.Future[DeliveredKey] = asyncio.get_running_loop().create_future()
        key.add_done_callback(_retrieve)
        self._pads[key_id] = _ReceiverPad(self._spawn(_settle(fetch, key)), key)

    async def cut(self, key_id: str, offset: int, size: int) -> bytes:
        """The pad of a frame at (`key_id`, `offset`) consuming `size` bytes. IntegrityError if the key was
        never announced or is retired, or if the offset is not where the previous frame ended; whatever
        the fetch raised if the key never arrived."""
        pad = self._pads.get(key_id)
        if pad is None:
            raise IntegrityError(
                IntegrityFailure.KEY_MISMATCH, f"pad key {key_id} is not announced or retired"
            )
        if offset != pad.next:
            failure = IntegrityFailure.REPLAY if offset < pad.next else IntegrityFailure.REORDERED
            raise IntegrityError(failure, f"pad offset {offset} of key {key_id}, expected {pad.next}")
        # Every pad key announced before this one is finished: the sender never goes back to it.
        for earlier in list(self._pads):
            if earlier == key_id:
                break
            self._pads.pop(earlier).cancel()
        material = (await pad.key).material
        if offset + size > len(material):
            raise IntegrityError(
                IntegrityFailure.TOO_LARGE,
                f"frame needs pad up to byte {offset + size} of a {len(material)}-byte key",
            )
        pad.next = offset + size
        return material[offset : offset + size]

    def close(self) -> None:
        for pad in self._pads.values():
            pad.cancel()
        self._pads.clear()
