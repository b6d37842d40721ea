"""The distillation round as two sans-IO state machines, one per party.

Feed a session the peer's messages (``receive``) or their bytes (``receive_bytes``); it returns the
messages to send. Nothing here waits, sleeps or touches a socket: the in-memory harness and the daemon
drive the very same objects. Every rule about which message may arrive in which state lives in the two
transition tables below; a message that is not in the table, or that breaks a rule, ends the round with
an Abort carrying a reason code. No key leaves a session unless the whole transcript authenticated.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum, auto
from typing import Any

import numpy as np

from . import messages as m
from .auth import (
    ROUND_AUTH_BITS,
    AuthKeyStore,
    RoundAuthKeys,
    verify_wegman_carter_tag,
    wegman_carter_tag,
)
from .cascade import CascadeAlice, CascadeBob
from .cascade_schedule import low_latency_schedule
from .codec import Message, decode
from .errors import (
    AbortReason,
    AuthKeyExhausted,
    DecodeError,
    IntegrityError,
    IntegrityFailure,
    LocalProtocolError,
    RemoteProtocolError,
    RoundAborted,
)
from .estimation import Statistics, final_key_length, judge_statistics, measure_statistics
from .params import DistillConfig
from .rng import random_bits
from .sifting import SiftPlan, choose_sample, key_candidate_mask, plan_sifting
from .toeplitz import toeplitz_hash


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

_TO_BOB = b"\x00"
_TO_ALICE = b"\x01"


class _Session:
    """What both parties share: the transcript, the abort path, the dispatch through the table."""

    # Keyed by (the subclass's own state enum, message class): Any, as a mapping's key type is invariant.
    _transitions: Mapping[tuple[Any, type[Message]], frozenset[Enum]]
    _aborted_state: Enum
    _established_state: Enum
    _sent_marker: bytes
    _received_marker: bytes

    def __init__(self, config: DistillConfig, auth: AuthKeyStore, rng: np.random.Generator) -> None:
        self.config = config
        self._auth = auth
        self._rng = rng
        self._transcript: list[bytes] = []
        self.state: Enum
        self.outcome: RoundOutcome | None = None
        self._plan: SiftPlan | None = None
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

    @property
    def auth_store(self) -> AuthKeyStore:
        return self._auth

    # -- transcript -------------------------------------------------------------------------------------
    @staticmethod
    def _frame(marker: bytes, msg: Message) -> bytes:
        body = msg.encode()
        return marker + len(body).to_bytes(8, "little") + body

    def _record(self, marker: bytes, msg: Message) -> None:
        self._transcript.append(self._frame(marker, msg))

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
        return self.receive(msg)

    def receive(self, msg: Message) -> list[Message]:
        if self.state is self._established_state and isinstance(msg, m.Abort):
            # The peer refused our last tag after we confirmed: withdraw the key, it was never agreed.
            return self._abort(AbortReason.PEER_ABORTED, msg.describe(), notify=False)
        if self.state in TERMINAL:
            return []
        self._record(self._received_marker, msg)
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
            measured = stats.qber_upper
        return RoundOutcome(
            established=established,
            abort_reason=reason,
            abort_detail=detail,
            statistics=stats,
            sifted_bits=self._plan.sifted_bits if self._plan is not None else 0,
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
        if self._plan is None or self._stats is None:
            raise LocalProtocolError("no statistics yet")
        length = final_key_length(self.config, self._plan, self._stats, self._leak)
        if length <= ROUND_AUTH_BITS:
            raise RoundAborted(
                AbortReason.FINITE_KEY_EMPTY,
                f"finite-key length {length} bits does not exceed the authentication cost {ROUND_AUTH_BITS}",
                measured=float(length),
                threshold=float(ROUND_AUTH_BITS),
            )
        return length


class AliceSession(_Session):
    """Alice: she holds the reference key, answers parity queries and performs privacy amplification.

    ``settings`` are her bases (BB84) or setting indices (E91) per pulse; ``detected`` is all-true for a
    BB84 sender; ``intensities`` her decoy classes per pulse (None without decoys).
    """

    _transitions = ALICE_TRANSITIONS
    _aborted_state = AliceState.ABORTED
    _established_state = AliceState.ESTABLISHED
    _sent_marker = _TO_BOB
    _received_marker = _TO_ALICE

    def __init__(
        self,
        config: DistillConfig,
        *,
        bits: np.ndarray,
        settings: np.ndarray,
        detected: np.ndarray,
        intensities: np.ndarray | None,
        auth: AuthKeyStore,
        rng: np.random.Generator,
    ) -> None:
        super().__init__(config, auth, rng)
        if (intensities is not None) != (config.decoy is not None):
            raise LocalProtocolError("decoy classes must be given exactly when the config has decoys")
        self._bits = bits
        self._settings = settings
        self._detected = detected.astype(bool)
        self._intensities = intensities
        self._cascade: CascadeAlice | None = None
        self._coincident_bits: np.ndarray = np.zeros(0, dtype=np.uint8)
        self._pending_key: np.ndarray = np.zeros(0, dtype=np.uint8)
        self._cascade_seed = int(rng.integers(0, 2**63))
        self.state = AliceState.EXPECT_DETECTIONS

    def _on_detections(self, msg: m.Detections) -> tuple[AliceState, list[Message]]:
        if msg.detected.size != self._bits.size:
            raise RemoteProtocolError(
                f"detection map covers {msg.detected.size} pulses, not {self._bits.size}"
            )
        detections = np.flatnonzero(msg.detected)
        coincident = self._detected[detections].astype(np.uint8)
        pulses = detections[coincident.astype(bool)]
        settings = self._settings[pulses].astype(np.uint8)
        intensities = (
            self._intensities[pulses].astype(np.uint8)
            if self._intensities is not None
            else np.zeros(0, dtype=np.uint8)
        )
        decoy = self.config.decoy is not None
        cand, _ = key_candidate_mask(
            self.config.protocol, decoy, settings, msg.bases[coincident.astype(bool)]
        )
        n_cand = int(np.count_nonzero(cand))
        sample = (
            np.zeros(n_cand, dtype=np.uint8)
            if decoy
            else choose_sample(self._rng, n_cand, self.config.sample_fraction)
        )
        self._plan = plan_sifting(
            protocol=self.config.protocol,
            decoy=decoy,
            bob_detected=msg.detected,
            bob_settings_at_detections=msg.bases,
            coincident=coincident,
            alice_settings=settings,
            intensities=intensities,
            sample=sample,
        )
        mine = self._bits[self._plan.pulses]
        self._coincident_bits = mine
        reply = m.Sifting(
            coincident=coincident,
            bases=settings,
            intensities=intensities,
            sample=sample,
            test_bits=mine[self._plan.test],
            cascade_seed=self._cascade_seed,
        )
        return AliceState.EXPECT_ESTIMATE, [reply]

    def _on_estimate(self, msg: m.Estimate) -> tuple[AliceState, list[Message]]:
        plan = self._plan
        if plan is None:
            raise LocalProtocolError("estimate before sifting")
        if msg.test_bits.size != plan.test.size:
            raise RemoteProtocolError(f"{msg.test_bits.size} test bits for {plan.test.size} positions")
        self._stats = measure_statistics(self.config, plan, self._coincident_bits[plan.test], msg.test_bits)
        judge_statistics(self.config, plan, self._stats)
        self._raw_key = self._coincident_bits[plan.key]
        schedule = low_latency_schedule(self._raw_key.size, self._stats.qber)
        self._cascade = CascadeAlice(self._raw_key, schedule, self._cascade_seed)
        return AliceState.RECONCILING, []

    def _on_parity_request(self, msg: m.ParityRequest) -> tuple[AliceState, list[Message]]:
        if self._cascade is None:
            raise LocalProtocolError("parity request before estimation")
        reply = self._cascade.answer(msg)
        # The disclosed-parity count is settled once, at verification (merging it per request is costly).
        self._round_trips += 1
        return AliceState.RECONCILING, [reply]

    def _on_verify(self, msg: m.Verify) -> tuple[AliceState, list[Message]]:
        t = self.config.verification_bits
        n = self._raw_key.size
        if msg.seed.size != n + t - 1 or msg.digest.size != t:
            raise RemoteProtocolError("verification hash of the wrong shape")
        if self._cascade is not None:
            self._leak = self._cascade.leaked_bits
        if not np.array_equal(toeplitz_hash(msg.seed, self._raw_key, t), msg.digest):
            raise RoundAborted(AbortReason.VERIFICATION_FAILED, "keys differ after reconciliation")
        length = self._statistics_and_length()
        self._pa_length = length
        seed = random_bits(self._rng, n + length - 1)
        self._pending_key = toeplitz_hash(seed, self._raw_key, length)
        self._round_keys = self._auth.take_round_keys()
        amplify = m.Amplify(seed=seed, length=length)
        # Alice's tag covers everything up to and including the Amplify it travels with.
        tagged = self._transcript_bytes() + self._frame(self._sent_marker, amplify)
        tag = wegman_carter_tag(self._round_keys.hash_key, self._round_keys.alice_pad, tagged)
        return AliceState.EXPECT_BOB_TAG, [amplify, m.AuthTag(key_offset=self._round_keys.offset, tag=tag)]

    def _on_auth_tag(self, msg: m.AuthTag) -> tuple[AliceState, list[Message]]:
        keys = self._round_keys
        if keys is None or msg.key_offset != keys.offset:
            raise IntegrityError(IntegrityFailure.KEY_MISMATCH, "Bob's tag names another authentication key")
        # The transcript already holds Bob's tag message; he tagged everything before it.
        verify_wegman_carter_tag(keys.hash_key, keys.bob_pad, b"".join(self._transcript[:-1]), msg.tag)
        self._establish(self._pending_key)
        return AliceState.ESTABLISHED, []


class BobSession(_Session):
    """Bob: he drives Cascade, corrects his key and confirms last."""

    _transitions = BOB_TRANSITIONS
    _aborted_state = BobState.ABORTED
    _established_state = BobState.ESTABLISHED
    _sent_marker = _TO_ALICE
    _received_marker = _TO_BOB

    def __init__(
        self,
        config: DistillConfig,
        *,
        round_id: int,
        bits: np.ndarray,
        settings: np.ndarray,
        detected: np.ndarray,
        auth: AuthKeyStore,
        rng: np.random.Generator,
    ) -> None:
        super().__init__(config, auth, rng)
        self._round_id = round_id
        self._bits = bits
        self._settings = settings
        self._detected = detected.astype(bool)
        self._cascade: CascadeBob | None = None
        self._corrected_key: np.ndarray = np.zeros(0, dtype=np.uint8)
        self._pending_key: np.ndarray = np.zeros(0, dtype=np.uint8)
        self.state = BobState.IDLE

    def start(self) -> list[Message]:
        if self.state is not BobState.IDLE:
            raise LocalProtocolError("round already started")
        self.state = BobState.EXPECT_SIFTING
        detections = np.flatnonzero(self._detected)
        return self._send(
            [
                m.Detections(
                    round_id=self._round_id,
                    detected=self._detected.astype(np.uint8),
                    bases=self._settings[detections].astype(np.uint8),
                )
            ]
        )

    def _on_sifting(self, msg: m.Sifting) -> tuple[BobState, list[Message]]:
        detections = np.flatnonzero(self._detected)
        self._plan = plan = plan_sifting(
            protocol=self.config.protocol,
            decoy=self.config.decoy is not None,
            bob_detected=self._detected,
            bob_settings_at_detections=self._settings[detections],
            coincident=msg.coincident,
            alice_settings=msg.bases,
            intensities=msg.intensities,
            sample=msg.sample,
        )
        if msg.test_bits.size != plan.test.size:
            raise RemoteProtocolError(f"{msg.test_bits.size} test bits for {plan.test.size} positions")
        mine = self._bits[plan.pulses]
        estimate = m.Estimate(test_bits=mine[plan.test])
        self._stats = measure_statistics(self.config, plan, msg.test_bits, estimate.test_bits)
        try:
            judge_statistics(self.config, plan, self._stats)
        except RoundAborted:
            # The Estimate still goes out ahead of the Abort: the test bits are public anyway, and with
            # them Alice measures the same statistics and reaches the same verdict on her own evidence.
            self._ahead_of_abort = [estimate]
            raise
        self._raw_key = mine[plan.key]
        schedule = low_latency_schedule(self._raw_key.size, self._stats.qber)
        self._cascade = CascadeBob(self._raw_key.copy(), schedule, msg.cascade_seed)
        request = self._cascade.next_request()
        if request is None:
            return BobState.EXPECT_PARITY_REPLY, [estimate, *self._finish_reconciliation()]
        return BobState.EXPECT_PARITY_REPLY, [estimate, request]

    def _on_parity_reply(self, msg: m.ParityReply) -> tuple[BobState, list[Message]]:
        cascade = self._cascade
        if cascade is None:
            raise LocalProtocolError("parity reply before estimation")
        cascade.receive(msg)
        self._round_trips = cascade.round_trips
        request = cascade.next_request()
        if request is not None:
            return BobState.EXPECT_PARITY_REPLY, [request]
        return BobState.EXPECT_AMPLIFY, self._finish_reconciliation()

    def _finish_reconciliation(self) -> list[Message]:
        cascade = self._cascade
        if cascade is None:
            raise LocalProtocolError("no reconciliation to finish")
        self._corrected_key = cascade.key
        self._leak = cascade.leaked_bits
        self._corrected = cascade.corrected_bits
        self._round_trips = cascade.round_trips
        t = self.config.verification_bits
        seed = random_bits(self._rng, self._corrected_key.size + t - 1)
        return [m.Verify(seed=seed, digest=toeplitz_hash(seed, self._corrected_key, t))]

    def _on_amplify(self, msg: m.Amplify) -> tuple[BobState, list[Message]]:
        length = self._statistics_and_length()
        if msg.length != length:
            raise RemoteProtocolError(f"Alice amplifies to {msg.length} bits, the bound here gives {length}")
        if msg.seed.size != self._corrected_key.size + length - 1:
            raise RemoteProtocolError("privacy-amplification seed of the wrong length")
        self._pa_length = length
        self._pending_key = toeplitz_hash(msg.seed, self._corrected_key, length)
        return BobState.EXPECT_ALICE_TAG, []

    def _on_auth_tag(self, msg: m.AuthTag) -> tuple[BobState, list[Message]]:
        self._round_keys = keys = self._auth.take_round_keys(msg.key_offset)
        verify_wegman_carter_tag(keys.hash_key, keys.alice_pad, b"".join(self._transcript[:-1]), msg.tag)
        tag = wegman_carter_tag(keys.hash_key, keys.bob_pad, self._transcript_bytes())
        self._establish(self._pending_key)
        return BobState.ESTABLISHED, [m.AuthTag(key_offset=keys.offset, tag=tag)]


def _handler_name(cls: type[Message]) -> str:
    return "_on_" + re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__).lower()
