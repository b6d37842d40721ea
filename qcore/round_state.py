"""The distillation round's rules: the two parties' states, their transition tables, and what both share.

Every rule about which message may arrive in which state lives in the two tables here (h11 keeps its
rules in one file the same way). :class:`BaseSession` is the machinery both parties share: it records the
transcript the authentication tags cover, dispatches each message through its party's table to the
party's handler, and ends the round with an Abort carrying a reason code when a message is not in the
table or breaks a rule. The parties themselves, and their handlers, are in :mod:`qlinkmed.qcore.session`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum, auto
from typing import Any

import numpy as np

from . import messages as m
from .auth import ROUND_AUTH_BITS, AuthKeyStore, RoundAuthKeys
from .codec import Message, decode
from .errors import (
    AbortReason,
    AuthKeyExhausted,
    DecodeError,
    IntegrityError,
    LocalProtocolError,
    RemoteProtocolError,
    RoundAborted,
)
from .estimation import Statistics, final_key_length
from .params import DistillConfig
from .randomness import PartyRandomness
from .sifting import SiftPlan, SiftSummary


@dataclass(frozen=True, slots=True)
class RoundOutcome:
    """What a party knows at the end of a round. ``key`` is the net key (after the authentication
    key store took its share); empty when aborted."""

    established: bool
    abort_reason: AbortReason
    abort_detail: str
    statistics: Statistics | None
    sifted_bits: int
    raw_key_bits: int
    leaked_ec_bits: int
    corrected_bits: int
    round_trips: int
    pa_output_bits: int
    auth_cost_bits: int
    key: np.ndarray = field(repr=False)
    auth_refill: np.ndarray = field(repr=False)
    """Key bits that replace the authentication key this round spent; the caller adds them to its
    store once the round is confirmed at both ends."""
    measured: float | None = None
    threshold: float | None = None

    @property
    def final_key_bits(self) -> int:
        return int(self.key.size)


class AliceState(Enum):
    EXPECT_DETECTIONS = auto()
    EXPECT_ESTIMATE = auto()
    RECONCILING = auto()
    EXPECT_BOB_TAG = auto()
    ESTABLISHED = auto()
    ABORTED = auto()


class BobState(Enum):
    IDLE = auto()
    EXPECT_SIFTING = auto()
    EXPECT_PARITY_REPLY = auto()
    EXPECT_AMPLIFY = auto()
    EXPECT_ALICE_TAG = auto()
    ESTABLISHED = auto()
    ABORTED = auto()


# (state, message received) -> the states the handler may move to. Anything else aborts the round.
ALICE_TRANSITIONS: dict[tuple[AliceState, type[Message]], frozenset[AliceState]] = {
    (AliceState.EXPECT_DETECTIONS, m.Detections): frozenset({AliceState.EXPECT_ESTIMATE}),
    (AliceState.EXPECT_ESTIMATE, m.Estimate): frozenset({AliceState.RECONCILING}),
    (AliceState.RECONCILING, m.ParityRequest): frozenset({AliceState.RECONCILING}),
    (AliceState.RECONCILING, m.Verify): frozenset({AliceState.EXPECT_BOB_TAG}),
    (AliceState.EXPECT_BOB_TAG, m.AuthTag): frozenset({AliceState.ESTABLISHED}),
}
BOB_TRANSITIONS: dict[tuple[BobState, type[Message]], frozenset[BobState]] = {
    (BobState.EXPECT_SIFTING, m.Sifting): frozenset({BobState.EXPECT_PARITY_REPLY}),
    (BobState.EXPECT_PARITY_REPLY, m.ParityReply): frozenset(
        {BobState.EXPECT_PARITY_REPLY, BobState.EXPECT_AMPLIFY}
    ),
    (BobState.EXPECT_AMPLIFY, m.Amplify): frozenset({BobState.EXPECT_ALICE_TAG}),
    (BobState.EXPECT_ALICE_TAG, m.AuthTag): frozenset({BobState.ESTABLISHED}),
}
# An Abort from the peer ends any round that is still running, and a finished round takes nothing more.
TERMINAL = frozenset({AliceState.ESTABLISHED, AliceState.ABORTED, BobState.ESTABLISHED, BobState.ABORTED})

# Direction markers in the transcript: a message to Bob (from Alice), a message to Alice (from Bob).
MARKER_TO_BOB = b"\x00"
MARKER_TO_ALICE = b"\x01"


class BaseSession:
    """What both parties share: the transcript, the abort path, the dispatch through the table."""

    # Keyed by (the subclass's own state enum, message class): Any, as a mapping's key type is invariant.
    _transitions: Mapping[tuple[Any, type[Message]], frozenset[Enum]]
    _aborted_state: Enum
    _established_state: Enum
    _sent_marker: bytes
    _received_marker: bytes

    def __init__(self, config: DistillConfig, auth: AuthKeyStore, randomness: PartyRandomness) -> None:
        self.config = config
        self._auth = auth
        # Secret choices and published seeds come from separate sources (see qcore.randomness).
        self._secret = randomness.secret
        self._public = randomness.public
        self._transcript: list[bytes] = []
        self.state: Enum
        self.outcome: RoundOutcome | None = None
        # Of the sifting, only the summary is kept (the plan's masks cost bytes per detection).
        self._sifted: SiftSummary | None = None
        self._sifted_bits = 0
        self._stats: Statistics | None = None
        self._leak = 0
        self._corrected = 0
        self._round_trips = 0
        self._raw_key: np.ndarray = np.zeros(0, dtype=np.uint8)
        self._pa_length = 0
        self._round_keys: RoundAuthKeys | None = None
        self._key: np.ndarray | None = None
        self._refill: np.ndarray = np.zeros(0, dtype=np.uint8)
        self._ahead_of_abort: list[Message] = []

    def _keep_summary(self, plan: SiftPlan) -> SiftSummary:
        self._sifted = summary = plan.summary()
        self._sifted_bits = summary.sifted_bits
        return summary

    @property
    def auth_store(self) -> AuthKeyStore:
        return self._auth

    # -- transcript -------------------------------------------------------------------------------------
    @staticmethod
    def _frame(marker: bytes, msg: Message, body: bytes | None = None) -> bytes:
        if body is None:
            body = msg.encode()
        return marker + len(body).to_bytes(8, "little") + body

    def _record(self, marker: bytes, msg: Message, body: bytes | None = None) -> None:
        self._transcript.append(self._frame(marker, msg, body))

    def _transcript_bytes(self) -> bytes:
        return b"".join(self._transcript)

    def _send(self, msgs: list[Message]) -> list[Message]:
        for msg in msgs:
            self._record(self._sent_marker, msg)
        return msgs

    # -- input ------------------------------------------------------------------------------------------
    def receive_bytes(self, data: bytes) -> list[Message]:
        """Decode and receive one message; undecodable input aborts the round."""
        if self.state is self._aborted_state:
            return []
        try:
            msg = decode(data)
        except DecodeError as exc:
            if self.state in TERMINAL:
                return []
            return self._abort(AbortReason.PROTOCOL_VIOLATION, f"undecodable message: {exc}")
        # The codec is canonical (decode accepts only what encode gives), so `data` is the message's
        # encoding: recorded as is, not encoded a second time (a large round's Sifting is tens of MB).
        return self.receive(msg, encoded=data)

    def receive(self, msg: Message, *, encoded: bytes | None = None) -> list[Message]:
        """Receive one message. `encoded`: its encoding, when the caller has it at hand."""
        if self.state is self._established_state and isinstance(msg, m.Abort):
            # The peer refused our last tag after we confirmed: withdraw the key, it was never agreed.
            return self._abort(AbortReason.PEER_ABORTED, msg.describe(), notify=False)
        if self.state in TERMINAL:
            return []
        self._record(self._received_marker, msg, encoded)
        if isinstance(msg, m.Abort):
            return self._abort(AbortReason.PEER_ABORTED, msg.describe(), notify=False)
        allowed = self._transitions.get((self.state, type(msg)))
        if allowed is None:
            return self._abort(
                AbortReason.PROTOCOL_VIOLATION, f"{type(msg).__name__} not expected in {self.state.name}"
            )
        handler: Callable[[Message], tuple[Enum, list[Message]]] = getattr(self, _handler_name(type(msg)))
        try:
            next_state, out = handler(msg)
        except RoundAborted as exc:
            return self._abort(exc.reason, exc.detail, measured=exc.measured, threshold=exc.threshold)
        except RemoteProtocolError as exc:
            return self._abort(AbortReason.PROTOCOL_VIOLATION, str(exc))
        except IntegrityError as exc:
            return self._abort(AbortReason.AUTHENTICATION_FAILED, str(exc))
        except AuthKeyExhausted as exc:
            return self._abort(AbortReason.AUTH_KEY_EXHAUSTED, str(exc))
        if next_state not in allowed:
            raise LocalProtocolError(
                f"handler moved {self.state.name} -> {next_state.name}, not in the table"
            )
        self.state = next_state
        return self._send(out)

    def expire(self) -> list[Message]:
        """The caller's timer ran out waiting for the peer: end the round (no key)."""
        if self.state in TERMINAL:
            return []
        return self._abort(AbortReason.TIMEOUT, f"no answer from the peer in {self.state.name}")

    # -- endings ----------------------------------------------------------------------------------------
    def _abort(
        self,
        reason: AbortReason,
        detail: str,
        *,
        notify: bool = True,
        measured: float | None = None,
        threshold: float | None = None,
    ) -> list[Message]:
        self.state = self._aborted_state
        self.outcome = self._make_outcome(
            established=False, reason=reason, detail=detail, measured=measured, threshold=threshold
        )
        ahead, self._ahead_of_abort = self._ahead_of_abort, []
        if not notify:
            return []
        return self._send([*ahead, m.Abort(reason=int(reason), detail=detail.encode()[:512])])

    def _make_outcome(
        self,
        *,
        established: bool,
        reason: AbortReason = AbortReason.NONE,
        detail: str = "",
        measured: float | None = None,
        threshold: float | None = None,
    ) -> RoundOutcome:
        empty = np.zeros(0, dtype=np.uint8)
        key = self._key if (established and self._key is not None) else empty
        stats = self._stats
        if measured is None and stats is not None and reason in (AbortReason.QBER_ABOVE_THRESHOLD,):
            measured = stats.qber
        return RoundOutcome(
            established=established,
            abort_reason=reason,
            abort_detail=detail,
            statistics=stats,
            sifted_bits=self._sifted_bits,
            raw_key_bits=int(self._raw_key.size),
            leaked_ec_bits=self._leak,
            corrected_bits=self._corrected,
            round_trips=self._round_trips,
            pa_output_bits=self._pa_length if established else 0,
            auth_cost_bits=ROUND_AUTH_BITS if self._round_keys is not None else 0,
            key=key,
            auth_refill=self._refill if established else empty,
            measured=measured,
            threshold=threshold,
        )

    def _establish(self, pa_key: np.ndarray) -> None:
        # The first ROUND_AUTH_BITS of the output refill the authentication store (the caller does that
        # once the round is confirmed at both ends); the rest is the new secret key.
        self._refill = pa_key[:ROUND_AUTH_BITS]
        self._key = pa_key[ROUND_AUTH_BITS:]
        self.state = self._established_state
        self.outcome = self._make_outcome(established=True)

    def _statistics_and_length(self) -> int:
        """The PA output length for the round as it stands, or RoundAborted."""
        if self._stats is None:
            raise LocalProtocolError("no statistics yet")
        length = final_key_length(self.config, self._stats, self._leak)
        if length <= ROUND_AUTH_BITS:
            raise RoundAborted(
                AbortReason.FINITE_KEY_EMPTY,
                f"finite-key length {length} bits does not exceed the authentication cost {ROUND_AUTH_BITS}",
                measured=float(length),
                threshold=float(ROUND_AUTH_BITS),
            )
        return length


def _handler_name(cls: type[Message]) -> str:
    return "_on_" + re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__).lower()
