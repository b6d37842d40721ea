"""Anti-replay sliding window (RFC 6479), as wireguard-go ``replay/``: a ring of 64-bit words holding one
bit per counter. Only counters whose frame has already passed its tag check may be offered: a forged
frame must never move the window."""

from __future__ import annotations

from qlinkmed.qlinkd.seal.constants import REPLAY_WINDOW

_BLOCK_BITS_LOG = 6
_BLOCK_BITS = 1 << _BLOCK_BITS_LOG
_RING_BLOCKS = 128
_BLOCK_MASK = _RING_BLOCKS - 1
_BIT_MASK = _BLOCK_BITS - 1

# The window spans the ring minus one word, which is cleared as the window slides (RFC 6479 s4).
if (_RING_BLOCKS - 1) * _BLOCK_BITS != REPLAY_WINDOW:
    raise RuntimeError("replay ring does not match REPLAY_WINDOW")


class ReplayWindow:
    """Accepts each counter at most once, and none more than REPLAY_WINDOW behind the highest accepted."""

    __slots__ = ("_last", "_ring", "_seen_any")

    def __init__(self) -> None:
        self._ring = [0] * _RING_BLOCKS
        self._last = 0
        self._seen_any = False

    def __repr__(self) -> str:
        return f"ReplayWindow(highest={self._last if self._seen_any else None})"

    @property
    def highest(self) -> int | None:
        """The highest counter accepted so far (None before the first)."""
        return self._last if self._seen_any else None

    def is_too_old(self, counter: int) -> bool:
        """True if `counter` is behind the window (it can never be accepted)."""
        return self._seen_any and counter < self._last and self._last - counter > REPLAY_WINDOW

    def check_and_mark(self, counter: int) -> bool:
        """Accept `counter` (True) if it is in or ahead of the window and not seen before, marking it seen;
        otherwise False and nothing changes."""
        block = counter >> _BLOCK_BITS_LOG
        if not self._seen_any or counter > self._last:
            current = self._last >> _BLOCK_BITS_LOG
            if not self._seen_any:
                # Counter 0 and a fresh ring are told apart by _seen_any: wireguard-go starts at last=0.
                self._ring = [0] * _RING_BLOCKS
            else:
                for i in range(current + 1, current + min(block - current, _RING_BLOCKS) + 1):
                    self._ring[i & _BLOCK_MASK] = 0
            self._last = counter
            self._seen_any = True
        elif self._last - counter > REPLAY_WINDOW:
            return False
        index = block & _BLOCK_MASK
        bit = 1 << (counter & _BIT_MASK)
        old = self._ring[index]
        if old & bit:
            return False
        self._ring[index] = old | bit
        return True
