"""Every message Alice and Bob exchange while distilling a key.

The daemons carry exactly these messages over the classical channel (the wire schema in ``proto/``
mirrors them field for field). Bits travel packed; positions are implied by earlier messages wherever
both ends can derive them, so nothing is sent twice.

Flow of one round (BB84 and E91 alike; ``>`` Bob to Alice, ``<`` Alice to Bob):

    > Detections      which pulses Bob detected and his bases (E91: settings) there
    < Sifting         coincidences, Alice's bases, decoy classes, the test sample, her test bits
    > Estimate        Bob's test bits (both ends now judge the statistics identically)
    > ParityRequest   Cascade: every parity query of one step, batched    (repeats)
    < ParityReply     Alice's parities for them                            (repeats)
    > Verify          a Toeplitz hash of Bob's corrected key and its seed
    < Amplify         Alice's verdict is implied (she aborts on mismatch); Toeplitz seed, output length
    < AuthTag         Wegman-Carter tag over the whole transcript (Alice)
    > AuthTag         the same from Bob
    either way: Abort with a reason code
"""

from __future__ import annotations

import numpy as np

from .codec import Bits, Message, U8s, U32s, message
from .errors import AbortReason, UsageError


@message(1)
class Detections(Message):
    """Bob to Alice: the detection bitmap over all pulses of the round and his bases where he clicked."""

    round_id: int
    detected: Bits
    bases: U8s

    def __post_init__(self) -> None:
        if int(np.count_nonzero(self.detected)) != self.bases.size:
            raise UsageError("bases must have one entry per detection")


@message(2)
class Sifting(Message):
    """Alice to Bob.

    ``coincident`` marks, among Bob's detections, those Alice also registered (BB84: all of them).
    ``bases`` are Alice's bases or settings at the coincidences, ``intensities`` her decoy classes
    there (empty without decoys). ``sample`` marks, among the sifted key candidates, those disclosed for
    estimation; ``test_bits`` are Alice's bits at every disclosed position, in the order both ends derive;
    ``cascade_seed`` fixes the public Cascade permutations.
    """

    coincident: Bits
    bases: U8s
    intensities: U8s
    sample: Bits
    test_bits: Bits
    cascade_seed: int


@message(3)
class Estimate(Message):
    """Bob to Alice: Bob's bits at the disclosed positions."""

    test_bits: Bits


@message(4)
class ParityRequest(Message):
    """Bob to Alice: parities wanted, one per (pass, [start, end)) range in that pass's permuted order."""

    passes: U8s
    starts: U32s
    ends: U32s

    def __post_init__(self) -> None:
        if not self.passes.size == self.starts.size == self.ends.size:
            raise UsageError("passes, starts and ends must have equal length")


@message(5)
class ParityReply(Message):
    """Alice to Bob: the parities asked for, in request order."""

    parities: Bits


@message(6)
class Verify(Message):
    """Bob to Alice: seed of a Toeplitz hash and the hash of Bob's corrected key."""

    seed: Bits
    digest: Bits


@message(7)
class Amplify(Message):
    """Alice to Bob: the Toeplitz seed for privacy amplification and the output length she computed."""

    seed: Bits
    length: int


@message(8)
class AuthTag(Message):
    """Wegman-Carter tag over the round's transcript up to this message, and the authentication-store
    offset whose keys it used."""

    key_offset: int
    tag: bytes


@message(9)
class Abort(Message):
    """Either way: the round is over. ``reason`` is an AbortReason code."""

    reason: int
    detail: bytes

    def peer_reason(self) -> AbortReason:
        """The reason as we record a peer's abort: its code, or PEER_ABORTED for none or an unknown one."""
        try:
            reason = AbortReason(self.reason)
        except ValueError:
            return AbortReason.PEER_ABORTED
        return AbortReason.PEER_ABORTED if reason is AbortReason.NONE else reason

    def describe(self, limit: int = 200) -> str:
        """One line for logs and audit records: the peer's reason and the start of its detail."""
        try:
            reason = AbortReason(self.reason).name.lower()
        except ValueError:
            reason = f"code {self.reason}"
        return f"peer aborted ({reason}): {self.detail[:limit].decode('utf-8', 'replace')}"
