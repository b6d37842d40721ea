"""A decoy-state BB84 link in memory (two link machines, the real broker between them): both ends run the
link's agreed source, Bob's bases follow its key-basis bias, the channel emulates the intensities Alice's
submission names, the hello refuses a peer with another source, and intercept-resend aborts the round."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qlinkmed.proto import qlinkmed_wire_pb2 as pb
from qlinkmed.qcore.backends import get_backend
from qlinkmed.qcore.channel import Eavesdropper, EveKind
from qlinkmed.qcore.channel_model import ChannelModel, predict_bb84
from qlinkmed.qcore.errors import AbortReason
from qlinkmed.qcore.params import DecoySource
from qlinkmed.qlinkd.channel import broker
from qlinkmed.qlinkd.channel.broker import ChannelBroker, Job, LinkKey, run
from qlinkmed.qlinkd.errors import FrameError
from qlinkmed.qlinkd.link import messages as lm
from qlinkmed.qlinkd.link.events import LinkClosed
from qlinkmed.qlinkd.link.states import State
from qlinkmed.qlinkd.link.wire import MAX_FRAME_BYTES, decode_frame, encode_frame
from tests.link_pair import LinkPair

# The optimiser's source for 1 km at 1e7 pulses (qcore.decoy_optimiser.optimise): ~15 kbit a round.
SOURCE = DecoySource(
    intensities=(0.588, 0.2306136, 0.0002), probabilities=(0.1297, 0.50703678, 0.36326322), p_x=0.6939
)
NEAR = ChannelModel(distance_km=1.0)
PULSES = 10_000_000
LINK = LinkKey(alice="hospital-a", bob="hospital-b")


def _pair(root: Path, eve: Eavesdropper | None = None) -> LinkPair:
    pair = LinkPair(root, pulses=PULSES, decoy=SOURCE, model=NEAR, eve=eve)
    pair.connect()
    return pair


def test_a_decoy_round_keys_with_the_agreed_source_and_biased_bases(tmp_path: Path) -> None:
    pair = _pair(tmp_path)
    pair.run_round()
    (a_end,), (b_end,) = pair.ended(pair.a), pair.ended(pair.b)
    assert a_end.established and b_end.established and a_end.key_bits == b_end.key_bits > 0
    submitted = dict(pair.submissions)
    train, bases = submitted["alice"], submitted["bob"]
    assert isinstance(train, lm.PulseTrain) and isinstance(bases, lm.AnalyserSettings)
    assert train.mu == SOURCE.intensities
    # Bob picks the key basis X (0) with the link's p_X, not one time in two (regression: he was unbiased).
    for share in (np.mean(bases.settings == 0), np.mean(train.bases == 0)):
        assert abs(share - SOURCE.p_x) < 0.002


def test_intercept_resend_on_a_decoy_link_aborts_at_both_ends(tmp_path: Path) -> None:
    pair = _pair(tmp_path, eve=Eavesdropper(kind=EveKind.INTERCEPT_RESEND, fraction=1.0))
    pair.run_round()
    for end in pair.ends():
        (ended,) = pair.ended(end)
        assert not ended.established and ended.key_bits == 0
        assert ended.reason in (AbortReason.QBER_ABOVE_THRESHOLD, AbortReason.DECOY_BOUND_EMPTY)
    assert pair.a.store.pool_bits("hospital-b") == pair.b.store.pool_bits("hospital-a") == 0


def _hello(**change: object) -> lm.Hello:
    fields: dict[str, object] = {
        "facility": "hospital-b",
        "peer": "hospital-a",
        "protocol": "bb84",
        "source": "wcp",
        "pulses_per_round": PULSES,
        "next_round": 1,
        "last_committed": 0,
        "pending_round": 0,
        "auth_position": 0,
        "decoy_intensities": SOURCE.intensities,
        "decoy_probabilities": SOURCE.probabilities,
        "decoy_p_x": SOURCE.p_x,
        "rounds_in_flight": 1,
        "cascade": "low-latency",
    }
    return lm.Hello(**{**fields, **change})  # type: ignore[arg-type]


def test_the_hello_carries_the_source_and_an_equal_one_is_accepted(tmp_path: Path) -> None:
    pair = LinkPair(tmp_path, pulses=PULSES, decoy=SOURCE, model=NEAR)
    pair.a.link.start(0.0)
    (_, ours), *_ = pair.a.link.frames_to_send()
    assert isinstance(ours, lm.Hello)
    assert (ours.decoy_intensities, ours.decoy_probabilities, ours.decoy_p_x) == (
        SOURCE.intensities,
        SOURCE.probabilities,
        SOURCE.p_x,
    )
    assert decode_frame(encode_frame(ours, 0))[1] == ours  # exact through the wire (doubles)
    pair.a.link.receive(0, decode_frame(encode_frame(_hello(), 0))[1], 0.0)
    assert pair.a.link.state is State.UP


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"decoy_p_x": 0.5}, "decoy_p_x 0.5 differs from ours 0.6939"),
        ({"decoy_intensities": (0.5, 0.1, 0.0002)}, "decoy_intensities (0.5, 0.1, 0.0002) differs"),
        ({"decoy_probabilities": (0.7, 0.2, 0.1)}, "decoy_probabilities (0.7, 0.2, 0.1) differs"),
        # A single-photon peer, or one that predates the fields: no source at all.
        (
            {"source": "single-photon", "decoy_intensities": (), "decoy_probabilities": (), "decoy_p_x": 0.0},
            "source 'single-photon' differs from ours 'wcp'",
        ),
    ],
)
def test_a_hello_with_another_source_closes_the_link_naming_it(
    tmp_path: Path, change: dict[str, object], named: str
) -> None:
    pair = LinkPair(tmp_path, pulses=PULSES, decoy=SOURCE, model=NEAR)
    pair.a.link.start(0.0)
    pair.a.link.receive(0, decode_frame(encode_frame(_hello(**change), 0))[1], 0.0)
    assert pair.a.link.state is State.CLOSED
    closed = [e for e in iter(pair.a.link.next_event, None) if isinstance(e, LinkClosed)]
    assert closed and named in closed[0].reason, closed


def test_pulse_train_intensities_cross_the_wire_and_go_with_classes_only() -> None:
    classes = np.array([0, 1, 2, 0], dtype=np.uint8)
    train = lm.PulseTrain(
        bits=np.ones(4, np.uint8), bases=np.zeros(4, np.uint8), intensities=classes, mu=(0.6, 0.2, 2e-4)
    )
    _, back = decode_frame(encode_frame(train, 3))
    assert isinstance(back, lm.PulseTrain) and back.mu == (0.6, 0.2, 2e-4)
    assert back.intensities is not None and np.array_equal(back.intensities, classes)
    with pytest.raises(FrameError, match=r"pulse_train\.mu"):
        lm.PulseTrain(bits=np.ones(4, np.uint8), bases=np.zeros(4, np.uint8), intensities=classes)


def _job(mu: tuple[float, ...], n: int = 400_000) -> Job:
    rng = np.random.default_rng(5)
    train = lm.PulseTrain(
        bits=rng.integers(0, 2, n).astype(np.uint8),
        bases=rng.integers(0, 2, n).astype(np.uint8),
        intensities=np.zeros(n, dtype=np.uint8),  # every pulse a signal pulse
        mu=mu,
    )
    bob = lm.AnalyserSettings(settings=rng.integers(0, 2, n).astype(np.uint8))
    broker = ChannelBroker(model=NEAR, backend=get_backend("numpy"))
    assert broker.submit(LINK, "bb84", "alice", 1, train) is None
    job = broker.submit(LINK, "bb84", "bob", 1, bob)
    assert isinstance(job, Job)
    return job


@pytest.mark.parametrize("mu1", [0.1, 1.0])
@pytest.mark.parametrize("slice_pulses", [broker.EMULATION_SLICE, 65_536])
def test_the_channel_emulates_the_intensities_alice_names(
    mu1: float, slice_pulses: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Regression: the broker emulated the fixed default source (signal 0.5) whatever Alice's source was.
    # In slices (a large round's) the record is the same in law: one entry a gate, one bit a click.
    monkeypatch.setattr(broker, "EMULATION_SLICE", slice_pulses)
    job = _job((mu1, 0.05, 2e-4))
    result = run(job, model=NEAR, backend=get_backend("numpy"), rng=np.random.default_rng(1))
    assert isinstance(result.bob, lm.DetectionRecord) and result.bob.detected.size == job.bob.settings.size
    gain = float(np.mean(result.bob.detected))
    expected = float(predict_bb84(NEAR, "wcp", mu1).detection_probability)
    assert abs(gain - expected) < 0.1 * expected
    # Bob's bits at the clicks: wrong (against Alice's, in matching bases) about as often as the model says.
    detected = result.bob.detected.astype(bool)
    alice = job.alice
    assert isinstance(alice, lm.PulseTrain)
    match = (alice.bases == job.bob.settings)[detected]
    errors = float(np.mean(alice.bits[detected][match] != result.bob.bits[match]))
    assert errors < 0.05


@pytest.mark.parametrize(
    ("mu", "words"),
    [
        ((0.5, 0.1), "needs 3 decoy intensities"),
        ((0.5, float("nan"), 2e-4), "finite"),
        ((0.1, 0.5, 2e-4), "mu1 > mu2 + mu3"),
        ((50.0, 0.1, 2e-4), "not a weak pulse"),
    ],
)
def test_bad_intensities_answer_a_channel_error_naming_them(mu: tuple[float, ...], words: str) -> None:
    result = run(_job(mu, n=1000), model=NEAR, backend=get_backend("numpy"), rng=np.random.default_rng(1))
    for answer in (result.alice, result.bob):
        assert isinstance(answer, lm.ChannelError)
        assert answer.reason.startswith("pulse_train.mu:") and words in answer.reason


def test_the_largest_round_fits_one_frame() -> None:
    # Regression: decoy classes and analyser settings went one byte a pulse, so a 1e8-pulse round's train
    # (125 MB) and Bob's settings (100 MB) exceeded the frame limit and every round timed out unheard.
    n = 1_000_000
    rng = np.random.default_rng(3)
    train = lm.PulseTrain(
        bits=rng.integers(0, 2, n).astype(np.uint8),
        bases=rng.integers(0, 2, n).astype(np.uint8),
        intensities=rng.integers(0, 3, n).astype(np.uint8),
        mu=SOURCE.intensities,
    )
    settings = lm.AnalyserSettings(settings=rng.integers(0, 4, n).astype(np.uint8))
    largest = 200_000_000  # PeerConfig.pulses_per_round's bound
    for message in (train, settings):
        frame = encode_frame(message, 1)
        assert len(frame) / n * largest < MAX_FRAME_BYTES
        back = decode_frame(frame)[1]
        for name in ("bits", "bases", "intensities", "settings"):
            if hasattr(message, name):
                assert np.array_equal(getattr(back, name), getattr(message, name))


@pytest.mark.parametrize("n", [1, 3, 4, 5, 1001])
def test_packed_settings_refuse_wrong_lengths_and_set_padding(n: int) -> None:
    settings = lm.AnalyserSettings(settings=np.full(n, 3, dtype=np.uint8))
    frame = pb.Frame.FromString(encode_frame(settings, 1))
    assert len(frame.analyser_settings.settings) == (n + 3) // 4
    assert np.array_equal(decode_frame(frame.SerializeToString())[1].settings, settings.settings)  # type: ignore[union-attr]
    if n % 4:  # the last byte's lowest crumb is padding: set it
        packed = frame.analyser_settings.settings
        frame.analyser_settings.settings = packed[:-1] + bytes([packed[-1] | 1])
        with pytest.raises(FrameError, match="padding"):
            decode_frame(frame.SerializeToString())
    frame.analyser_settings.count = n + 4
    with pytest.raises(FrameError, match="cannot hold exactly"):
        decode_frame(frame.SerializeToString())
