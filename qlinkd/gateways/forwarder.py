"""The loop that serves one destination from the forwarding ledger: the oldest pending transfer first
(order is kept: a later one never overtakes one still being retried), retried with backoff while the
destination is unreachable or answers with a transient failure, parked when it refuses for good.

The gateway supplies `deliver`, which makes one attempt and says how it went; it never touches the ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from qlinkmed.qlinkd.gateways.forwards import Forward, ForwardLedger
from qlinkmed.qlinkd.ops.backoff import RECONNECT_JITTER, Backoff, raise_if_cancelling

log = logging.getLogger("qlink.gateway")

RETRY_S = (1.0, 300.0)
"""First and longest pause between attempts at one destination."""


class Verdict(enum.Enum):
    DELIVERED = "delivered"
    RETRY = "retry"
    PARK = "park"


AUDIT_EVENT = {
    Verdict.DELIVERED: "forward_delivered",
    Verdict.RETRY: "forward_failed",
    Verdict.PARK: "forward_parked",
}
"""The audit record each gateway writes for an attempt's outcome."""


@dataclass(frozen=True, slots=True)
class Attempt:
    verdict: Verdict
    detail: str = ""
    """What the destination said (status, ACK code, HTTP status and text): kept as the row's last error."""


Deliver = Callable[[Forward], Awaitable[Attempt]]
Outcome = Callable[[Forward, Attempt], None]


class Forwarder:
    def __init__(
        self,
        ledger: ForwardLedger,
        gateway: str,
        destination: str,
        deliver: Deliver,
        *,
        on_outcome: Outcome | None = None,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._ledger = ledger
        self.gateway = gateway
        self.destination = destination
        self._deliver = deliver
        self._on_outcome = on_outcome
        self._backoff = backoff or Backoff(first_s=RETRY_S[0], longest_s=RETRY_S[1], jitter=RECONNECT_JITTER)
        self._clock = clock
        self._wake = asyncio.Event()
        ledger.watch(gateway, destination, self.wake)

    def wake(self) -> None:
        """Something new is owed to this destination (or an operator released parked rows)."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            raise_if_cancelling()
            # Cleared before the ledger is read: a wake() after this read is never lost.
            self._wake.clear()
            head = self._ledger.head(self.gateway, self.destination)
            if head is None:
                await self._sleep(None)
                continue
            wait_s = head.next_attempt - self._clock()
            if wait_s > 0:
                await self._sleep(wait_s)
                continue
            attempt = await self._attempt(head)
            if attempt.verdict is Verdict.DELIVERED:
                self._ledger.delivered(head)
                self._backoff.reset()
            elif attempt.verdict is Verdict.PARK:
                log.warning(
                    "%s: %s refused transfer %s for good: %s",
                    self.gateway,
                    self.destination,
                    head.transfer_id,
                    attempt.detail,
                )
                self._ledger.parked(head, attempt.detail)
            else:
                delay = self._backoff.delay()
                log.info(
                    "%s: %s did not take transfer %s (%s); next attempt in %.1f s",
                    self.gateway,
                    self.destination,
                    head.transfer_id,
                    attempt.detail,
                    delay,
                )
                self._ledger.failed(head, attempt.detail, delay)
            if self._on_outcome is not None:
                self._on_outcome(head, attempt)

    async def _attempt(self, forward: Forward) -> Attempt:
        try:
            return await self._deliver(forward)
        except asyncio.CancelledError:
            raise
        except (OSError, TimeoutError) as exc:
            return Attempt(Verdict.RETRY, f"{type(exc).__name__}: {exc}")

    async def _sleep(self, seconds: float | None) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)
