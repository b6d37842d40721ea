"""The distillation round as two sans-IO state machines, one per party.

Feed a session the peer's messages (``receive``) or their bytes (``receive_bytes``); it returns the
messages to send. Nothing here waits, sleeps or touches a socket: the in-memory harness and the daemon
drive the very same objects. Every rule about which message may arrive in which state lives in the two
transition tables of :mod:`qlinkmed.qcore.round_state`, with the machinery both parties share; a message
that is not in the table, or that breaks a rule, ends the round with an Abort carrying a reason code. No
key leaves a session unless the whole transcript authenticated.
"""

from __future__ import annotations

import numpy as np

from . import messages as m
from .auth import AuthKeyStore, verify_wegman_carter_tag, wegman_carter_tag
from .cascade import CascadeAlice, CascadeBob
from .cascade_schedule import schedule_for
from .codec import Message
from .errors import (
    AbortReason,
    IntegrityError,
    IntegrityFailure,
    LocalProtocolError,
    RemoteProtocolError,
    RoundAborted,
)
from .estimation import judge_statistics, measure_statistics
from .params import DistillConfig
from .randomness import PartyRandomness
from .round_state import (
    ALICE_TRANSITIONS,
    BOB_TRANSITIONS,
    MARKER_TO_ALICE,
    MARKER_TO_BOB,
    AliceState,
    BaseSession,
    BobState,
)
from .sifting import choose_sample, key_candidate_mask, plan_sifting, take
from .toeplitz import toeplitz_hash

_EMPTY = np.zeros(0, dtype=np.uint8)


class AliceSession(BaseSession):
    """Alice: she holds the reference key, answers parity queries and performs privacy amplification.

    ``settings`` are her bases (BB84) or setting indices (E91) per pulse; ``detected`` is all-true for a
    BB84 sender; ``intensities`` her decoy classes per pulse (None without decoys). ``randomness.secret``
    draws her sample positions; ``randomness.public`` the Cascade and privacy-amplification seeds.
    """

    _transitions = ALICE_TRANSITIONS
    _aborted_state = AliceState.ABORTED
    _established_state = AliceState.ESTABLISHED
    _sent_marker = MARKER_TO_BOB
    _received_marker = MARKER_TO_ALICE

    def __init__(
        self,
        config: DistillConfig,
        *,
        bits: np.ndarray,
        settings: np.ndarray,
        detected: np.ndarray,
        intensities: np.ndarray | None,
        auth: AuthKeyStore,
        randomness: PartyRandomness,
    ) -> None:
        super().__init__(config, auth, randomness)
        if (intensities is not None) != (config.decoy is not None):
            raise LocalProtocolError("decoy classes must be given exactly when the config has decoys")
        self._bits = bits
        self._settings = settings
        self._detected = detected.astype(bool, copy=False)
        self._intensities = intensities
        self._cascade: CascadeAlice | None = None
        self._test_bits: np.ndarray = _EMPTY
        self._sifted_key: np.ndarray = _EMPTY  # the raw key, once the estimate lets the round go on
        self._pending_key: np.ndarray = np.zeros(0, dtype=np.uint8)
        # Published in Sifting: a public draw.
        self._cascade_seed = self._public.uint63()
        self.state = AliceState.EXPECT_DETECTIONS

    def _on_detections(self, msg: m.Detections) -> tuple[AliceState, list[Message]]:
        if msg.detected.size != self._bits.size:
            raise RemoteProtocolError(
                f"detection map covers {msg.detected.size} pulses, not {self._bits.size}"
            )
        detected = msg.detected.astype(bool, copy=False)
        # One pass over the pulses to find Bob's detections; every later selection indexes those places
        # (a boolean mask over 1e7 pulses costs as much as finding its places, each time it is used).
        at_detections = np.flatnonzero(detected)
        coincident = self._detected[at_detections]
        at_pulses = at_detections if bool(coincident.all()) else at_detections[coincident]
        settings = self._settings[at_pulses].astype(np.uint8, copy=False)
        intensities = (
            self._intensities[at_pulses].astype(np.uint8, copy=False)
            if self._intensities is not None
            else np.zeros(0, dtype=np.uint8)
        )
        decoy = self.config.decoy is not None
        cand, _ = key_candidate_mask(self.config.protocol, decoy, settings, take(msg.bases, coincident))
        n_cand = int(np.count_nonzero(cand))
        del cand
        sample = (
            np.zeros(n_cand, dtype=np.uint8)
            if decoy
            else choose_sample(self._secret, n_cand, self.config.sample_fraction)
        )
        coincident_bytes = coincident.astype(np.uint8)
        plan = plan_sifting(
            protocol=self.config.protocol,
            decoy=decoy,
            bob_detected=detected,
            bob_settings_at_detections=msg.bases,
            coincident=coincident_bytes,
            alice_settings=settings,
            intensities=intensities,
            sample=sample,
        )
        self._keep_summary(plan)
        mine = self._bits[at_pulses]  # plan.pulses, by place
        self._test_bits = mine[plan.test]
        self._sifted_key = mine[plan.key]
        # Alice's records and the plan are spent: the round reads only the summary and these bits on.
        self._bits = self._settings = self._detected = _EMPTY
        self._intensities = _EMPTY if self._intensities is not None else None
        del plan, mine
        reply = m.Sifting(
            coincident=coincident_bytes,
            bases=settings,
            intensities=intensities,
            sample=sample,
            test_bits=self._test_bits,
            cascade_seed=self._cascade_seed,
        )
        return AliceState.EXPECT_ESTIMATE, [reply]

    def _on_estimate(self, msg: m.Estimate) -> tuple[AliceState, list[Message]]:
        sifted = self._sifted
        if sifted is None:
            raise LocalProtocolError("estimate before sifting")
        if msg.test_bits.size != sifted.test_bits:
            raise RemoteProtocolError(f"{msg.test_bits.size} test bits for {sifted.test_bits} positions")
        self._stats = measure_statistics(self.config, sifted, self._test_bits, msg.test_bits)
        judge_statistics(self.config, sifted, self._stats)
        self._raw_key, self._sifted_key = self._sifted_key, _EMPTY
        schedule = schedule_for(self.config.cascade, self._raw_key.size, self._stats.qber)
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
            self._cascade = None  # its per-pass tables are the largest thing the round holds
        if not np.array_equal(toeplitz_hash(msg.seed, self._raw_key, t), msg.digest):
            raise RoundAborted(AbortReason.VERIFICATION_FAILED, "keys differ after reconciliation")
        length = self._statistics_and_length()
        self._pa_length = length
        seed = self._public.bits(n + length - 1)  # published in Amplify
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


class BobSession(BaseSession):
    """Bob: he drives Cascade, corrects his key and confirms last. ``randomness.public`` draws the
    verification seed; his secret choices (his bases or settings) were made before the round, by whoever
    drove his analyser."""

    _transitions = BOB_TRANSITIONS
    _aborted_state = BobState.ABORTED
    _established_state = BobState.ESTABLISHED
    _sent_marker = MARKER_TO_ALICE
    _received_marker = MARKER_TO_BOB

    def __init__(
        self,
        config: DistillConfig,
        *,
        round_id: int,
        bits: np.ndarray,
        settings: np.ndarray,
        detected: np.ndarray,
        auth: AuthKeyStore,
        randomness: PartyRandomness,
    ) -> None:
        super().__init__(config, auth, randomness)
        self._round_id = round_id
        self._bits = bits
        self._settings = settings
        self._detected = detected.astype(bool, copy=False)
        self._cascade: CascadeBob | None = None
        self._corrected_key: np.ndarray = np.zeros(0, dtype=np.uint8)
        self._pending_key: np.ndarray = np.zeros(0, dtype=np.uint8)
        self._detection_places: np.ndarray | None = None
        self.state = BobState.IDLE

    def _at_detections(self) -> np.ndarray:
        """The places of Bob's detections among the pulses, found once (start and sifting both need them)."""
        if self._detection_places is None:
            self._detection_places = np.flatnonzero(self._detected)
        return self._detection_places

    def start(self) -> list[Message]:
        if self.state is not BobState.IDLE:
            raise LocalProtocolError("round already started")
        self.state = BobState.EXPECT_SIFTING
        return self._send(
            [
                m.Detections(
                    round_id=self._round_id,
                    detected=self._detected.astype(np.uint8),
                    bases=self._settings[self._at_detections()].astype(np.uint8, copy=False),
                )
            ]
        )

    def _on_sifting(self, msg: m.Sifting) -> tuple[BobState, list[Message]]:
        at_detections = self._at_detections()
        plan = plan_sifting(
            protocol=self.config.protocol,
            decoy=self.config.decoy is not None,
            bob_detected=self._detected,
            bob_settings_at_detections=self._settings[at_detections],
            coincident=msg.coincident,
            alice_settings=msg.bases,
            intensities=msg.intensities,
            sample=msg.sample,
        )
        sifted = self._keep_summary(plan)
        if msg.test_bits.size != sifted.test_bits:
            raise RemoteProtocolError(f"{msg.test_bits.size} test bits for {sifted.test_bits} positions")
        coincident = msg.coincident.astype(bool, copy=False)  # plan_sifting checked its size
        mine = self._bits[at_detections if bool(coincident.all()) else at_detections[coincident]]
        estimate = m.Estimate(test_bits=mine[plan.test])
        raw_key = mine[plan.key]
        # Bob's records and the plan are spent: the round reads only the summary and these bits on.
        self._bits = self._settings = self._detected = _EMPTY
        self._detection_places = None
        del plan, mine
        self._stats = measure_statistics(self.config, sifted, msg.test_bits, estimate.test_bits)
        try:
            judge_statistics(self.config, sifted, self._stats)
        except RoundAborted:
            # The Estimate still goes out ahead of the Abort: the test bits are public anyway, and with
            # them Alice measures the same statistics and reaches the same verdict on her own evidence.
            self._ahead_of_abort = [estimate]
            raise
        self._raw_key = raw_key
        schedule = schedule_for(self.config.cascade, self._raw_key.size, self._stats.qber)
        self._cascade = CascadeBob(self._raw_key, schedule, msg.cascade_seed)
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
        self._cascade = None  # its per-pass tables are the largest thing the round holds
        t = self.config.verification_bits
        seed = self._public.bits(self._corrected_key.size + t - 1)  # published in Verify
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
