"""An in-memory pair of link machines for the sans-IO tests: two ``LinkConnection``s, their real durable
stores, and the real channel broker between them. Frames cross as bytes through the wire codec; a tap
can drop, alter, duplicate or hold back any of them. The adapter duties (act on events before sending)
are done here the way ``peer_link.py`` does them, without sockets or clocks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qlinkmed.qcore.backends import get_backend
from qlinkmed.qcore.channel import Eavesdropper
from qlinkmed.qcore.channel_model import ChannelModel
from qlinkmed.qcore.params import DecoySource, DistillConfig, SourceKind
from qlinkmed.qcore.randomness import PartyRandomness
from qlinkmed.qlinkd.channel.broker import ChannelBroker, Job, LinkKey, run
from qlinkmed.qlinkd.errors import FrameError
from qlinkmed.qlinkd.link import messages as lm
from qlinkmed.qlinkd.link.events import Event, LinkConfig, RoundEnded
from qlinkmed.qlinkd.link.machine import LinkConnection
from qlinkmed.qlinkd.link.persistence import persist
from qlinkmed.qlinkd.link.states import Role
from qlinkmed.qlinkd.link.wire import decode_frame, encode_frame
from qlinkmed.qlinkd.pool.keystore import KeyStore

PSK = bytes(range(256)) * 16
PULSES = 700_000
MODEL = ChannelModel(distance_km=10.0)

Tap = Callable[[str, int, object, bytes], list[bytes]]
"""(sender, round, message, frame bytes) -> the frames that actually arrive (none, one, several)."""


def passthrough(sender: str, round_id: int, message: object, data: bytes) -> list[bytes]:
    return [data]


@dataclass
class End:
    name: str
    peer: str
    store: KeyStore
    link: LinkConnection
    events: list[Event] = field(default_factory=list)
    inbox: list[bytes] = field(default_factory=list)


class LinkPair:
    def __init__(
        self,
        root: Path,
        *,
        seed: int = 7,
        pulses: int = PULSES,
        stores: tuple[KeyStore, KeyStore] | None = None,
        eve: Eavesdropper | None = None,
        randomness: tuple[PartyRandomness, PartyRandomness] | None = None,
        decoy: DecoySource | None = None,
        model: ChannelModel = MODEL,
        window: int = 1,
    ) -> None:
        """`randomness`: each end's sources (facility A's, then B's); by default seeded ones from `seed`.
        `decoy`: both ends run BB84 with this weak-coherent-pulse decoy source (single photons without)."""
        self.root = root
        self.pulses = pulses
        self.decoy = decoy
        self.model = model
        self.window = window
        self.rng = np.random.default_rng(seed)
        self.broker = ChannelBroker(model=model, backend=get_backend("numpy"), eve=eve or Eavesdropper())
        self.now = 0.0
        self.tap: Tap = passthrough
        self.submissions: list[tuple[str, lm.ChannelSubmission]] = []
        """What each end submitted to the quantum channel, (role, message), in order."""
        a, b = "hospital-a", "hospital-b"
        if stores is None:
            stores = (KeyStore.open(root / f"{a}.sqlite3"), KeyStore.open(root / f"{b}.sqlite3"))
            for store, peer in zip(stores, (b, a), strict=True):
                store.init_auth(peer, PSK)
        if randomness is None:
            randomness = (self._seeded(), self._seeded())
        self.a = self._end(a, b, stores[0], randomness[0])
        self.b = self._end(b, a, stores[1], randomness[1])

    def _seeded(self) -> PartyRandomness:
        return PartyRandomness.seeded(np.random.SeedSequence(int(self.rng.integers(2**63))))

    def _end(self, name: str, peer: str, store: KeyStore, randomness: PartyRandomness) -> End:
        config = LinkConfig(
            facility=name,
            peer=peer,
            pulses_per_round=self.pulses,
            round_timeout_s=5.0,
            rounds_in_flight=self.window,
            source=SourceKind.SINGLE_PHOTON if self.decoy is None else SourceKind.WCP,
            distill=DistillConfig(decoy=self.decoy),
        )
        link = LinkConnection(
            config,
            local=store.link_state(peer),
            auth=store.auth_store(peer),
            randomness=randomness,
        )
        return End(name=name, peer=peer, store=store, link=link)

    def ends(self) -> tuple[End, End]:
        return self.a, self.b

    def other(self, end: End) -> End:
        return self.b if end is self.a else self.a

    # ---- the adapter's duties ------------------------------------------------------------------------
    def _events(self, end: End) -> None:
        link, store, peer = end.link, end.store, end.peer
        while (event := link.next_event()) is not None:
            end.events.append(event)
            persist(store, link, peer, event, self.now)

    def _outgoing(self, end: End) -> bool:
        moved = False
        self._events(end)
        target = self.other(end)
        for round_id, message in end.link.frames_to_send():
            data = encode_frame(message, round_id)
            target.inbox.extend(self.tap(end.name, round_id, message, data))
            moved = True
        for request in end.link.channel_requests():
            role = "alice" if end.link.role is Role.ALICE else "bob"
            self.submissions.append((role, request.message))
            outcome = self.broker.submit(
                LinkKey(alice="hospital-a", bob="hospital-b"), "bb84", role, request.round_id, request.message
            )
            if isinstance(outcome, Job):
                result = run(outcome, model=self.model, backend=self.broker.backend, rng=self.rng)
                self.a.link.channel_result(outcome.round_id, result.alice, self.now)
                self.b.link.channel_result(outcome.round_id, result.bob, self.now)
            elif outcome is not None:
                end.link.channel_result(request.round_id, outcome, self.now)
            moved = True
        return moved

    def deliver_one(self, end: End) -> bool:
        if not end.inbox:
            return False
        try:
            round_id, message = decode_frame(end.inbox.pop(0))
        except FrameError as exc:
            end.link.close(f"malformed frame: {exc}")  # what the daemon does with an undecodable frame
            return True
        end.link.receive(round_id, message, self.now)
        return True

    def settle(self, limit: int = 10_000) -> None:
        """Exchange until nothing moves."""
        for _ in range(limit):
            moved = self._outgoing(self.a) | self._outgoing(self.b)
            moved |= self.deliver_one(self.a) | self.deliver_one(self.b)
            if not moved:
                self._events(self.a)
                self._events(self.b)
                return
        raise AssertionError("the pair never settled")

    def connect(self) -> None:
        for end in self.ends():
            end.link.start(self.now)
        self.settle()

    def run_round(self) -> int:
        round_id = self.a.link.begin_round(self.now)
        self.settle()
        return round_id

    def step(self) -> bool:
        """One exchange: both ends act on their events and send, then each reads one frame."""
        moved = self._outgoing(self.a) | self._outgoing(self.b)
        return moved | self.deliver_one(self.a) | self.deliver_one(self.b)

    def run_window(self, limit: int = 10_000) -> list[int]:
        """Alice opens a window's worth of rounds, each as soon as the machine lets her (it holds back a
        round while two wait for the channel), and the pair exchanges until nothing moves."""
        round_ids: list[int] = []
        for _ in range(limit):
            while self.a.link.window_open and len(round_ids) < self.window:
                round_ids.append(self.a.link.begin_round(self.now))
            if not self.step() and len(round_ids) == self.window:
                break
        self.settle()
        return round_ids

    def expire(self, seconds: float = 60.0) -> None:
        self.now += seconds
        for end in self.ends():
            end.link.handle_timer(self.now)
        self.settle()

    def ended(self, end: End) -> list[RoundEnded]:
        return [e for e in end.events if isinstance(e, RoundEnded)]
