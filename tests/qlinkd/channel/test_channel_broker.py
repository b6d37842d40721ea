"""The channel broker's pairing of submissions, without sockets: what it accepts as each party's part."""

from __future__ import annotations

import numpy as np
import pytest

from qlinkmed.qcore.backends import get_backend
from qlinkmed.qcore.channel_model import ChannelModel
from qlinkmed.qlinkd.channel.broker import ChannelBroker, Job, LinkKey, run
from qlinkmed.qlinkd.link import messages as lm

LINK = LinkKey(alice="north", bob="south")


def _broker() -> ChannelBroker:
    return ChannelBroker(model=ChannelModel(distance_km=10.0), backend=get_backend("numpy"))


def _settings(n: int = 8) -> lm.AnalyserSettings:
    return lm.AnalyserSettings(settings=np.arange(n, dtype=np.uint8) % 2)


def _train(n: int = 8) -> lm.PulseTrain:
    bits = np.arange(n, dtype=np.uint8) % 2
    return lm.PulseTrain(bits=bits, bases=bits[::-1].copy(), intensities=None)


def test_e91_pairs_both_settings_into_a_job() -> None:
    broker = _broker()
    assert broker.submit(LINK, "e91", "alice", 1, _settings()) is None
    job = broker.submit(LINK, "e91", "bob", 1, _settings())
    assert isinstance(job, Job)
    assert isinstance(job.alice, lm.AnalyserSettings)


@pytest.mark.parametrize(
    ("protocol", "wrong"),
    [
        ("bb84", _settings()),
        ("e91", _train()),
        # Neither pulses nor settings: refused at once (it used to be held as Alice's E91 part).
        ("e91", lm.DetectionRecord(detected=np.ones(2, dtype=np.uint8), bits=np.zeros(2, dtype=np.uint8))),
        ("e91", lm.PulsesSent(count=3)),
    ],
)
def test_alice_submission_of_the_wrong_kind_is_refused_and_not_held(protocol: str, wrong: object) -> None:
    broker = _broker()
    refused = broker.submit(LINK, protocol, "alice", 1, wrong)
    assert isinstance(refused, lm.ChannelError)
    assert f"is not Alice's {protocol} submission" in refused.reason
    # Nothing was held for her: Bob's part alone does not make a job.
    assert broker.submit(LINK, protocol, "bob", 1, _settings()) is None


def test_e91_bob_measures_four_settings_and_alice_two() -> None:
    # Regression (issue 15): Bob's fourth E91 setting (V) was refused by the frame check (0..2), so no
    # E91 round could start over the daemons. Alice has two settings; a third is refused by the emulator.
    n = 20_000
    bob = lm.AnalyserSettings(settings=np.arange(n, dtype=np.uint8) % 4)
    broker = _broker()
    assert (
        broker.submit(LINK, "e91", "alice", 1, lm.AnalyserSettings(settings=np.arange(n, dtype=np.uint8) % 2))
        is None
    )
    job = broker.submit(LINK, "e91", "bob", 1, bob)
    assert isinstance(job, Job)
    result = run(
        job, model=ChannelModel(distance_km=0.0), backend=get_backend("numpy"), rng=np.random.default_rng(1)
    )
    assert isinstance(result.bob, lm.DetectionRecord) and isinstance(result.alice, lm.DetectionRecord)
    assert result.bob.detected.size == n and result.bob.bits.size > 0
    bad = _broker()
    assert (
        bad.submit(LINK, "e91", "alice", 1, lm.AnalyserSettings(settings=np.full(n, 3, dtype=np.uint8)))
        is None
    )
    job = bad.submit(LINK, "e91", "bob", 1, bob)
    assert isinstance(job, Job)
    refused = run(
        job, model=ChannelModel(distance_km=0.0), backend=get_backend("numpy"), rng=np.random.default_rng(2)
    )
    assert isinstance(refused.alice, lm.ChannelError) and "alice_settings" in refused.alice.reason
