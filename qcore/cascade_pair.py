"""Cascade's two ends run against each other in memory, every message through the wire codec.

For tests and benchmarks: the daemon drives :class:`~qlinkmed.qcore.cascade.CascadeAlice` and
:class:`~qlinkmed.qcore.cascade.CascadeBob` through the distillation session instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import codec
from .cascade import CascadeAlice, CascadeBob
from .cascade_schedule import CascadeSchedule
from .errors import RemoteProtocolError
from .messages import ParityReply, ParityRequest


@dataclass(frozen=True, slots=True, kw_only=True)
class CascadeResult:
    """What an in-memory reconciliation produced."""

    bob_key: np.ndarray
    """Bob's corrected key (uint8 0/1)."""
    leaked_bits: int
    """Distinct parities Alice disclosed."""
    round_trips: int
    """Request/reply exchanges."""
    corrected_bits: int
    """Bits Bob flipped."""
    messages: int
    """Messages sent, both directions."""
    bytes_exchanged: int
    """Encoded size of all messages, both directions."""


def reconcile(
    alice_key: np.ndarray, bob_key: np.ndarray, schedule: CascadeSchedule, seed: int
) -> CascadeResult:
    """Run Alice and Bob against each other in memory, every message through encode() and decode()."""
    alice = CascadeAlice(alice_key, schedule, seed)
    bob = CascadeBob(bob_key, schedule, seed)
    messages = 0
    size = 0
    while (request := bob.next_request()) is not None:
        wire = request.encode()
        decoded = codec.decode(wire)
        if not isinstance(decoded, ParityRequest):
            raise RemoteProtocolError(f"expected a ParityRequest, decoded {type(decoded).__name__}")
        answer = alice.answer(decoded).encode()
        reply = codec.decode(answer)
        if not isinstance(reply, ParityReply):
            raise RemoteProtocolError(f"expected a ParityReply, decoded {type(reply).__name__}")
        bob.receive(reply)
        messages += 2
        size += len(wire) + len(answer)
    return CascadeResult(
        bob_key=bob.key.copy(),
        leaked_bits=bob.leaked_bits,
        round_trips=bob.round_trips,
        corrected_bits=bob.corrected_bits,
        messages=messages,
        bytes_exchanged=size,
    )
