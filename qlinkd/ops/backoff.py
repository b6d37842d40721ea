"""The one reconnect policy: exponential backoff between a first and a largest delay, reset by a
connection that worked, and a stop that is never mistaken for a lost connection. The loops that dial
(the peer link, the quantum channel, the data-plane sender) only sleep for what it says."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from qlinkmed.qcore.errors import UsageError
from qlinkmed.qlinkd.ops import entropy

RECONNECT_JITTER = 0.5
"""The dialling loops' jitter: each reconnect pause is 50-100 % of the backoff's delay."""


@dataclass(slots=True, kw_only=True)
class Backoff:
    first_s: float
    """The delay after a connection that worked, and before the first retry."""
    longest_s: float
    """No delay grows past this."""
    factor: float = 2.0
    """Each failure multiplies the delay by this."""
    jitter: float = 0.0
    """Each delay is shortened by a uniform share of up to this fraction (0 <= jitter < 1): after a
    partition heals, the links and senders that lost it do not all redial in the same instant."""
    _next_s: float = field(init=False)

    def __post_init__(self) -> None:
        if not 0.0 < self.first_s <= self.longest_s or self.factor < 1.0 or not 0.0 <= self.jitter < 1.0:
            raise UsageError("backoff needs 0 < first_s <= longest_s, factor >= 1 and 0 <= jitter < 1")
        self._next_s = self.first_s

    def delay(self) -> float:
        """How long to wait before the next attempt; each call lengthens the one after it."""
        current = self._next_s
        self._next_s = min(self.longest_s, current * self.factor)
        if self.jitter:
            share = int.from_bytes(entropy.random_bytes(4), "big") / 2**32
            current *= 1.0 - self.jitter * share
        return current

    def reset(self) -> None:
        """A connection worked: the next wait is short again."""
        self._next_s = self.first_s


def raise_if_cancelling() -> None:
    """Raise CancelledError if the current task is being cancelled. A reconnect loop calls it before each
    attempt: a library (or a task group) that turns a cancellation into one of the connection errors the
    loop retries on would otherwise keep a stopping daemon alive; the task's own record is authoritative."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
