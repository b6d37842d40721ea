"""An in-memory pair harness: Alice and Bob joined by a perfect wire (or a tampering one, for tests).

Every message crosses as bytes (``encode`` on one side, ``decode`` on the other), exactly as the daemons
will carry it, and the harness records each crossing so a run can be replayed byte for byte.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from .errors import LocalProtocolError
from .session import AliceSession, BobSession


class Hop(StrEnum):
    """Which way a message crosses the in-memory harness."""

    TO_ALICE = "bob->alice"
    TO_BOB = "alice->bob"


Tap = Callable[[Hop, bytes], list[bytes]]
"""Sees every crossing; returns what is delivered instead (empty list: dropped; several: injected)."""


@dataclass(slots=True)
class Transcript:
    crossings: list[tuple[Hop, bytes]] = field(default_factory=list)
    """Every delivery, in order (empty when the run was told not to keep them)."""
    messages: int = 0
    bytes_exchanged: int = 0

    def add(self, hop: Hop, data: bytes, *, keep: bool) -> None:
        self.messages += 1
        self.bytes_exchanged += len(data)
        if keep:
            self.crossings.append((hop, data))


def run_pair(
    alice: AliceSession,
    bob: BobSession,
    *,
    tap: Tap | None = None,
    max_messages: int = 100_000,
    keep_crossings: bool = True,
) -> Transcript:
    """Run one round to its end. Returns the transcript of what was delivered.

    `keep_crossings=False` keeps only the counts: each end already holds its own copy of the transcript
    for the authentication tag, and a third copy of a large round's messages is a few bytes per detection
    that nothing reads.
    """
    transcript = Transcript()
    queue: deque[tuple[Hop, bytes]] = deque((Hop.TO_ALICE, msg.encode()) for msg in bob.start())
    while queue:
        if transcript.messages >= max_messages:
            raise LocalProtocolError(f"round did not finish within {max_messages} messages")
        direction, data = queue.popleft()
        delivered = tap(direction, data) if tap is not None else [data]
        for item in delivered:
            transcript.add(direction, item, keep=keep_crossings)
            receiver = alice if direction is Hop.TO_ALICE else bob
            back = Hop.TO_BOB if direction is Hop.TO_ALICE else Hop.TO_ALICE
            # No name holds the replies once encoded: a large round's messages are tens of MB each.
            queue.extend((back, msg.encode()) for msg in receiver.receive_bytes(item))
        if not queue:
            # Silence: a message was dropped. The daemons' timers would fire now; so do ours.
            for session in (alice, bob):
                session.expire()
    return transcript
